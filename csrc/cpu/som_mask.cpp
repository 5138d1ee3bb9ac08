// CPU kernels of the SOM-masked layers (schemas in csrc/genkernels.cpp, spec and gradients in
// genkernels/som/mask_reference.py): only the outputs the mask keeps are computed, from the
// gathered rows of the weight, and every other output is written 0.
//
//   som_mask_linear           rows in parallel; a row reads its winner's kept channels and
//                             takes their dot products with its x (four channels at a time,
//                             vectorised over the features).
//   som_mask_conv2d           images in parallel, each unfolded into a thread's buffer (no
//                             (B, Dp, L) tensor; Dp = Cin kh kw, L = Ho Wo positions):
//                             winners (B, 1): one kept set for the image -- its patches as
//                             columns (Dp, L); for each block of positions (its columns stay
//                             in L1) and each kept channel, act(m (b + w . cols)) vectorised
//                             over the positions, written straight into the channel's row;
//                             winners (B, L): a kept set per position -- its patches as rows
//                             (L, Dp padded to whole lane vectors); the (position, mask)
//                             pairs grouped by channel (a counting sort, position order), and
//                             channel by channel a dot product per position, so the (B, C,
//                             Ho, Wo) tensors are read and written one channel row at a time.
//   *_backward                g = grad m [out > 0] on the kept outputs only; grad_x = g W
//                             over the kept rows (conv: the patches' gradients, folded back
//                             onto the image in the thread's buffer); grad_W and grad_bias =
//                             sums over the rows (positions) that keep a channel.
//
// Sums over rows without atomics and independent of the thread count: the rows (images)
// are cut into at most kMaxChunks chunks whose size depends on the batch alone; a chunk sums
// into its own rows of per-chunk partials (a channel's row zeroed when the chunk first
// touches it), and the partials are added in chunk order after the region. Memory: the
// outputs, a thread's buffers of one image's patches (and their gradients) and chunks x C x
// Dp partials; no (B, C) dense mask. Every output is written (0 where not kept), so a
// 100-channel output costs its memory traffic whatever the mask keeps.
//
// Arithmetic in the inputs' dtype (float or double; the Python side converts half and
// bfloat16 to float). The autograd of both ops is in C++, at the end.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/som_cpu.h"

namespace genkernels::som::cpu {
namespace {

template <typename T>
using V = lanes_t<T>;

template <typename T>
inline V<T> splat(T v) {
  return V<T>{} + v;
}

// Threads the work (multiply-adds) pays for, as the other cpu kernels.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;
int64_t threads_for(int64_t work) { return std::max<int64_t>(1, work / kMinWorkPerThread); }

// Reduction chunks: at most kMaxChunks, of at least kMinChunkRows rows (linear) or one image
// (conv); both fixed by the batch size alone.
constexpr int64_t kMaxChunks = 16;
constexpr int64_t kMinChunkRows = 64;
// Positions per block of the conv kernels: 4 lane vectors.
constexpr int64_t kBlockVectors = 4;
constexpr int64_t kBlock = kBlockVectors * kLanes;

int64_t chunk_size(int64_t items, int64_t min_size) {
  return std::max(min_size, (items + kMaxChunks - 1) / kMaxChunks);
}

// n rounded up to a whole number of lane vectors
int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// ------------------------------------------------------------------------------- tables
// The winners' kept channels and mask values, the -1 padding dropped: row w holds count[w]
// channels (in table order) in channels[w * width ...].
template <typename T>
struct KeptTable {
  int64_t width = 0;
  std::vector<int64_t> channels, count;
  std::vector<T> masks;
  const int64_t* chans(int64_t w) const { return channels.data() + w * width; }
  const T* mask(int64_t w) const { return masks.data() + w * width; }
};

void check_tables(const char* op, const at::Tensor& kept, const at::Tensor& values) {
  TORCH_CHECK(kept.dim() == 2 && kept.scalar_type() == at::kLong, op, ": kept must be a (K, S) int64 tensor; got ",
              kept.sizes(), " ", kept.scalar_type());
  TORCH_CHECK(values.sizes() == kept.sizes(), op, ": values must have kept's shape ", kept.sizes(), "; got ",
              values.sizes());
}

template <typename T>
KeptTable<T> kept_table(const char* op, const at::Tensor& kept, const at::Tensor& values, int64_t c_count) {
  KeptTable<T> t;
  const int64_t k_nodes = kept.size(0);
  t.width = kept.size(1);
  t.channels.assign(k_nodes * t.width, 0);
  t.masks.assign(k_nodes * t.width, T(0));
  t.count.assign(k_nodes, 0);
  const at::Tensor kept_c = kept.contiguous();
  const at::Tensor values_c = values.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const int64_t* kp = kept_c.const_data_ptr<int64_t>();
  const T* vp = values_c.const_data_ptr<T>();
  // the checks of genkernels/som/mask_ops.check_tables, here in the copy's pass (ValueError)
  for (int64_t w = 0; w < k_nodes; ++w) {
    int64_t n = 0;
    for (int64_t s = 0; s < t.width; ++s) {
      const int64_t c = kp[w * t.width + s];
      const T v = vp[w * t.width + s];
      TORCH_CHECK_VALUE(c >= -1 && c < c_count, op, ": kept must hold output indices in [0, ", c_count,
                        ") or -1 (padding); got ", c);
      TORCH_CHECK_VALUE(v - v == T(0) && v >= T(0), op, ": values must be finite and >= 0 (mask values); got ", v);
      if (c < 0) continue;
      TORCH_CHECK_VALUE(n == s && (n == 0 || c > t.channels[w * t.width + n - 1]), op,
                        ": every row of kept must list its outputs in ascending order, then the -1 padding");
      t.channels[w * t.width + n] = c;
      t.masks[w * t.width + n] = v;
      ++n;
    }
    t.count[w] = n;
  }
  return t;
}

void check_winners(const char* op, const at::Tensor& winners, int64_t k_nodes) {
  const at::Tensor w = winners.contiguous();
  const int64_t* p = w.const_data_ptr<int64_t>();
  for (int64_t i = 0, n = w.numel(); i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < k_nodes, op, ": winners must lie in [0, ", k_nodes, ") (rows of kept); got ",
                      p[i]);
  }
}

template <typename T>
inline T activate(T z, bool relu) {
  return relu && !(z > T(0)) ? T(0) : z;
}

template <typename T>
inline V<T> activate_lanes(V<T> z, bool relu) {
  return relu ? (z > T(0) ? z : V<T>{}) : z;
}

// The masked gradient of one output: grad m, 0 where the ReLU is off (out <= 0).
template <typename T>
inline T masked_grad(T grad, T m, T out, bool relu) {
  return relu && !(out > T(0)) ? T(0) : grad * m;
}

// ------------------------------------------------------------------- per-chunk partials
// grad_W (C, width) and grad_bias (C,) as sums over chunks of rows: chunk i sums into its
// own rows (zeroed on first touch), reduce() adds the touched rows in chunk order. One chunk
// sums into the outputs directly.
template <typename T>
struct ChannelPartials {
  int64_t chunks, c_count, width;
  T* grad_w;  // (C, width) output
  T* grad_b;  // (C,) output
  // chunks x C rows of the partial sums, left uninitialised: a row is zeroed when its chunk
  // first touches it, and only touched rows are read
  std::unique_ptr<T[]> w_store, b_store;
  std::vector<uint8_t> touched;
  // the output not asked for, when the other one is: the sums run over both
  std::vector<T> w_unused, b_unused;

  // grad_w_ / grad_b_: the outputs, either null when not wanted (both null: no sums)
  ChannelPartials(int64_t chunks_, int64_t c_count_, int64_t width_, T* grad_w_, T* grad_b_)
      : chunks(chunks_), c_count(c_count_), width(width_), grad_w(grad_w_), grad_b(grad_b_),
        touched(chunks_ * c_count_, 0) {
    if (grad_w != nullptr || grad_b != nullptr) {
      if (grad_w == nullptr) {
        w_unused.resize(c_count * width);
        grad_w = w_unused.data();
      }
      if (grad_b == nullptr) {
        b_unused.resize(c_count);
        grad_b = b_unused.data();
      }
    }
    if (chunks > 1) {
      w_store.reset(new T[chunks * c_count * width]);
      b_store.reset(new T[chunks * c_count]);
    }
  }

  // chunk's row of channel c (and its bias sum through `bias`), zeroed on first touch
  T* row(int64_t chunk, int64_t c, T*& bias) {
    const int64_t idx = chunk * c_count + c;
    T* r = chunks > 1 ? w_store.get() + idx * width : grad_w + c * width;
    bias = chunks > 1 ? b_store.get() + idx : grad_b + c;
    if (!touched[idx]) {
      std::fill(r, r + width, T(0));
      *bias = T(0);
      touched[idx] = 1;
    }
    return r;
  }

  void reduce(int team) {
    if (chunks == 1) {
      for (int64_t c = 0; c < c_count; ++c) {
        if (touched[c]) continue;
        std::fill(grad_w + c * width, grad_w + (c + 1) * width, T(0));
        grad_b[c] = T(0);
      }
      return;
    }
    genkernels::cpu::parallel_chunks(c_count, std::min<int64_t>(team, c_count), [&](int64_t c, int) {
      T* out = grad_w + c * width;
      std::fill(out, out + width, T(0));
      T bias = 0;
      for (int64_t i = 0; i < chunks; ++i) {
        const int64_t idx = i * c_count + c;
        if (!touched[idx]) continue;
        const T* r = w_store.get() + idx * width;
        for (int64_t j = 0; j < width; ++j) out[j] += r[j];
        bias += b_store[idx];
      }
      grad_b[c] = bias;
    });
  }
};

// ---------------------------------------------------------------------------- linear
// y[0, n) += a x[0, n)
template <typename T>
inline void axpy(T a, const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store_lanes(y + j, load_lanes(y + j) + a * load_lanes(x + j));
  for (; j < n; ++j) y[j] += a * x[j];
}

// Dot products of x (d) with N weight rows, vectorised over the features.
template <typename T, int N>
inline void dots(const T* __restrict__ x, const T* const* rows, int64_t d, T* result) {
  V<T> acc[N] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    const V<T> xv = load_lanes(x + j);
    for (int i = 0; i < N; ++i) acc[i] += xv * load_lanes(rows[i] + j);
  }
  if (j < d) {
    const V<T> xv = load_lanes_partial(x + j, d - j);
    for (int i = 0; i < N; ++i) acc[i] += xv * load_lanes_partial(rows[i] + j, d - j);
  }
  for (int i = 0; i < N; ++i) result[i] = combine_lanes<T>(acc[i]);
}

template <typename T>
inline void dots_n(int n, const T* x, const T* const* rows, int64_t d, T* result) {
  switch (n) {
    case 4: dots<T, 4>(x, rows, d, result); break;
    case 3: dots<T, 3>(x, rows, d, result); break;
    case 2: dots<T, 2>(x, rows, d, result); break;
    default: dots<T, 1>(x, rows, d, result); break;
  }
}

template <typename T>
struct LinearArgs {
  const T* x;       // (B, D) contiguous
  const T* weight;  // (C, D) contiguous
  const T* bias;    // (C,) or null
  const int64_t* winners;
  int64_t b_count, d, c_count;
  bool relu;
};

template <typename T>
void linear_forward_rows(const LinearArgs<T>& a, const KeptTable<T>& tab, int64_t r0, int64_t r1, T* out) {
  for (int64_t r = r0; r < r1; ++r) {
    T* o = out + r * a.c_count;
    std::fill(o, o + a.c_count, T(0));
    const int64_t w = a.winners[r];
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    const int64_t n = tab.count[w];
    for (int64_t s0 = 0; s0 < n; s0 += 4) {
      const int m = static_cast<int>(std::min<int64_t>(4, n - s0));
      const T* rows[4];
      T z[4];
      for (int i = 0; i < m; ++i) rows[i] = a.weight + ch[s0 + i] * a.d;
      dots_n(m, a.x + r * a.d, rows, a.d, z);
      for (int i = 0; i < m; ++i) {
        const int64_t c = ch[s0 + i];
        o[c] = activate(ms[s0 + i] * (z[i] + (a.bias ? a.bias[c] : T(0))), a.relu);
      }
    }
  }
}

at::Tensor som_mask_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& winners, const at::Tensor& kept, const at::Tensor& values,
                               bool relu) {
  const char* op = "som_mask_linear";
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), op,
              ": x must be (B, D) and weight (C, D); got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
  TORCH_CHECK(winners.dim() == 1 && winners.size(0) == x.size(0) && winners.scalar_type() == at::kLong, op,
              ": winners must be a (", x.size(0), ",) int64 tensor; got ", winners.sizes());
  const int64_t b_count = x.size(0), d = x.size(1), c_count = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_count && bias->scalar_type() == x.scalar_type(), op,
                ": bias must be (", c_count, ",) in x's dtype; got ", bias->sizes());
  }
  at::Tensor out = at::empty({b_count, c_count}, x.options());
  if (b_count == 0) return out;
  check_tables(op, kept, values);
  check_winners(op, winners, kept.size(0));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_mask_linear", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team = genkernels::cpu::team_size(threads_for(b_count * tab.width * d));
    genkernels::cpu::SoloScope solo(team <= 1);
    const at::Tensor x_c = x.contiguous(), w_c = weight.contiguous(), winners_c = winners.contiguous();
    const at::Tensor b_c = has_bias ? bias->contiguous() : at::Tensor();
    const LinearArgs<T> a{x_c.const_data_ptr<T>(), w_c.const_data_ptr<T>(), has_bias ? b_c.const_data_ptr<T>() : nullptr,
                          winners_c.const_data_ptr<int64_t>(), b_count, d, c_count, relu};
    T* o = out.mutable_data_ptr<T>();
    const int64_t rows = kMinChunkRows;
    genkernels::cpu::parallel_chunks((b_count + rows - 1) / rows, team, [&](int64_t i, int) {
      linear_forward_rows(a, tab, i * rows, std::min(b_count, (i + 1) * rows), o);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_mask_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& winners,
    const at::Tensor& kept, const at::Tensor& values, const at::Tensor& out, bool relu,
    std::array<bool, 3> output_mask) {
  const char* op = "som_mask_linear_backward";
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), op,
              ": x must be (B, D) and weight (C, D); got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
  const int64_t b_count = x.size(0), d = x.size(1), c_count = weight.size(0);
  TORCH_CHECK(winners.dim() == 1 && winners.size(0) == b_count && winners.scalar_type() == at::kLong, op,
              ": winners must be a (", b_count, ",) int64 tensor; got ", winners.sizes());
  TORCH_CHECK(grad.sizes() == out.sizes() && out.dim() == 2 && out.size(0) == b_count && out.size(1) == c_count, op,
              ": grad and out must be (", b_count, ", ", c_count, "); got ", grad.sizes(), " and ", out.sizes());
  const bool want_x = output_mask[0], want_w = output_mask[1], want_b = output_mask[2];
  at::Tensor grad_x = want_x ? at::empty({b_count, d}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = want_w ? at::empty({c_count, d}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_b = want_b ? at::empty({c_count}, x.options()) : at::empty({0}, x.options());
  if (b_count == 0) {
    grad_w.zero_();
    grad_b.zero_();
    return {grad_x, grad_w, grad_b};
  }
  check_tables(op, kept, values);
  check_winners(op, winners, kept.size(0));
  const at::ScalarType dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES(dtype, "som_mask_linear_backward", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team = genkernels::cpu::team_size(threads_for(2 * b_count * tab.width * d));
    genkernels::cpu::SoloScope solo(team <= 1);
    const at::Tensor x_c = x.contiguous(), w_c = weight.contiguous(), winners_c = winners.contiguous();
    const at::Tensor grad_c = grad.to(dtype).contiguous(), out_c = out.to(dtype).contiguous();
    const T* xp = x_c.const_data_ptr<T>();
    const T* wp = w_c.const_data_ptr<T>();
    const int64_t* wn = winners_c.const_data_ptr<int64_t>();
    const T* gp = grad_c.const_data_ptr<T>();
    const T* op_ = out_c.const_data_ptr<T>();
    T* gx = want_x ? grad_x.mutable_data_ptr<T>() : nullptr;
    const bool sums = want_w || want_b;
    T* gw = want_w ? grad_w.mutable_data_ptr<T>() : nullptr;
    T* gb = want_b ? grad_b.mutable_data_ptr<T>() : nullptr;
    // rows in parallel: each row's masked gradients g (B x S) and its grad_x
    std::vector<T> g(b_count * std::max<int64_t>(tab.width, 1));
    const int64_t rows = kMinChunkRows;
    genkernels::cpu::parallel_chunks((b_count + rows - 1) / rows, team, [&](int64_t i, int) {
      for (int64_t r = i * rows, r1 = std::min(b_count, (i + 1) * rows); r < r1; ++r) {
        const int64_t w = wn[r];
        const int64_t n = tab.count[w];
        const int64_t* ch = tab.chans(w);
        const T* ms = tab.mask(w);
        T* gr = g.data() + r * tab.width;
        for (int64_t s = 0; s < n; ++s) {
          const int64_t c = ch[s];
          gr[s] = masked_grad(gp[r * c_count + c], ms[s], op_[r * c_count + c], relu);
        }
        if (!gx) continue;
        T* gxr = gx + r * d;
        int64_t j = 0;
        for (; j + kLanes <= d; j += kLanes) {
          V<T> acc = {};
          for (int64_t s = 0; s < n; ++s) acc += gr[s] * load_lanes(wp + ch[s] * d + j);
          store_lanes(gxr + j, acc);
        }
        for (; j < d; ++j) {
          T acc = 0;
          for (int64_t s = 0; s < n; ++s) acc += gr[s] * wp[ch[s] * d + j];
          gxr[j] = acc;
        }
      }
    });
    if (!sums) return;
    // grad_W and grad_b channel by channel: each channel's (row, slot) pairs, in row order
    // (a counting sort), summed into its own row -- no partial sums, no atomics, the same
    // order on any number of threads
    std::vector<int64_t> start(c_count + 1, 0), pair(b_count * tab.width);
    for (int64_t r = 0; r < b_count; ++r) {
      const int64_t w = wn[r];
      for (int64_t s = 0; s < tab.count[w]; ++s) ++start[tab.chans(w)[s] + 1];
    }
    for (int64_t c = 0; c < c_count; ++c) start[c + 1] += start[c];
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < b_count; ++r) {
      const int64_t w = wn[r];
      for (int64_t s = 0; s < tab.count[w]; ++s) pair[next[tab.chans(w)[s]]++] = r * tab.width + s;
    }
    const int64_t per_item = 4;  // channels per work item
    genkernels::cpu::parallel_chunks((c_count + per_item - 1) / per_item, team, [&](int64_t i, int) {
      for (int64_t c = i * per_item, c1 = std::min(c_count, (i + 1) * per_item); c < c1; ++c) {
        T bias = 0;
        if (gw != nullptr) {
          T* row = gw + c * d;
          std::fill(row, row + d, T(0));
          for (int64_t e = start[c]; e < start[c + 1]; ++e) {
            const T gv = g[pair[e]];
            bias += gv;
            axpy(gv, xp + (pair[e] / tab.width) * d, row, d);
          }
        } else {
          for (int64_t e = start[c]; e < start[c + 1]; ++e) bias += g[pair[e]];
        }
        if (gb != nullptr) gb[c] = bias;
      }
    });
  });
  return {grad_x, grad_w, grad_b};
}

// ------------------------------------------------------------------------------ conv2d
struct ConvGeometry {
  int64_t cin, h, w, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w;
  int64_t dp() const { return cin * kh * kw; }
  int64_t l() const { return out_h * out_w; }
  // the output columns [lo, hi) whose input column ow * sw + off lies in [0, w)
  void columns(int64_t off, int64_t& lo, int64_t& hi) const {
    lo = off >= 0 ? 0 : std::min(out_w, (-off + sw - 1) / sw);
    hi = w - 1 - off < 0 ? lo : std::clamp<int64_t>((w - 1 - off) / sw + 1, lo, out_w);
  }
};

// The patches of one image (cin, h, w contiguous) as columns: cols[d * ld + p], d = (ci, ky,
// kx) row-major (the weight's (C, Dp) layout), p = (oh, ow) row-major; zero padding, and
// zeros past L up to ld (a whole number of lane vectors: the kernels read whole vectors).
template <typename T>
void image_columns(const T* __restrict__ xb, const ConvGeometry& g, int64_t ld, T* __restrict__ cols) {
  const int64_t l_count = g.l();
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        T* row = cols + ((ci * g.kh + ky) * g.kw + kx) * ld;
        std::fill(row + l_count, row + ld, T(0));
        const int64_t off = kx * g.dw - g.pw;
        int64_t lo, hi;
        g.columns(off, lo, hi);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          T* dst = row + oh * g.out_w;
          const int64_t ih = oh * g.sh - g.ph + ky * g.dh;
          if (ih < 0 || ih >= g.h) {
            std::fill(dst, dst + g.out_w, T(0));
            continue;
          }
          const T* src = xb + (ci * g.h + ih) * g.w + off;
          std::fill(dst, dst + lo, T(0));
          if (g.sw == 1) {
            std::copy(src + lo, src + hi, dst + lo);
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * g.sw];
          }
          std::fill(dst + hi, dst + g.out_w, T(0));
        }
      }
    }
  }
}

// grad_xb += the columns' gradients (row stride ld) folded back onto the image
// (image_columns' transpose).
template <typename T>
void fold_columns(const T* __restrict__ cols, const ConvGeometry& g, int64_t ld, T* __restrict__ gxb) {
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const T* row = cols + ((ci * g.kh + ky) * g.kw + kx) * ld;
        const int64_t off = kx * g.dw - g.pw;
        int64_t lo, hi;
        g.columns(off, lo, hi);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + ky * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          const T* __restrict__ src = row + oh * g.out_w;
          T* __restrict__ dst = gxb + (ci * g.h + ih) * g.w + off;
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.sw] += src[ow];
          }
        }
      }
    }
  }
}

// The patches of one image as rows: rows[p * ld + d], zero past Dp up to ld (a whole
// number of lane vectors).
template <typename T>
void image_rows(const T* __restrict__ xb, const ConvGeometry& g, int64_t ld, T* __restrict__ rows) {
  const int64_t dp = g.dp();
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t ih0 = oh * g.sh - g.ph;
    const bool rows_in = ih0 >= 0 && ih0 + (g.kh - 1) * g.dh < g.h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      T* dst = rows + (oh * g.out_w + ow) * ld;
      const int64_t iw0 = ow * g.sw - g.pw;
      if (rows_in && iw0 >= 0 && iw0 + (g.kw - 1) * g.dw < g.w) {
        // the patch lies inside the image: no bounds to check
        for (int64_t ci = 0; ci < g.cin; ++ci) {
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            const T* src = xb + (ci * g.h + ih0 + ky * g.dh) * g.w + iw0;
            for (int64_t kx = 0; kx < g.kw; ++kx) *dst++ = src[kx * g.dw];
          }
        }
        std::fill(dst, dst + (ld - dp), T(0));
        continue;
      }
      for (int64_t ci = 0; ci < g.cin; ++ci) {
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t ih = oh * g.sh - g.ph + ky * g.dh;
          const bool row_in = ih >= 0 && ih < g.h;
          const T* src = xb + (ci * g.h + ih) * g.w;
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t iw = ow * g.sw - g.pw + kx * g.dw;
            *dst++ = row_in && iw >= 0 && iw < g.w ? src[iw] : T(0);
          }
        }
      }
      std::fill(dst, dst + (ld - dp), T(0));
    }
  }
}

// grad_xb += the rows' gradients folded back (image_rows' transpose).
template <typename T>
void fold_rows(const T* __restrict__ rows, const ConvGeometry& g, int64_t ld, T* __restrict__ gxb) {
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t ih0 = oh * g.sh - g.ph;
    const bool rows_in = ih0 >= 0 && ih0 + (g.kh - 1) * g.dh < g.h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const T* src = rows + (oh * g.out_w + ow) * ld;
      const int64_t iw0 = ow * g.sw - g.pw;
      if (rows_in && iw0 >= 0 && iw0 + (g.kw - 1) * g.dw < g.w) {
        for (int64_t ci = 0; ci < g.cin; ++ci) {
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            T* dst = gxb + (ci * g.h + ih0 + ky * g.dh) * g.w + iw0;
            for (int64_t kx = 0; kx < g.kw; ++kx) dst[kx * g.dw] += *src++;
          }
        }
        continue;
      }
      for (int64_t ci = 0; ci < g.cin; ++ci) {
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t ih = oh * g.sh - g.ph + ky * g.dh;
          if (ih < 0 || ih >= g.h) {
            src += g.kw;
            continue;
          }
          T* dst = gxb + (ci * g.h + ih) * g.w;
          for (int64_t kx = 0; kx < g.kw; ++kx, ++src) {
            const int64_t iw = ow * g.sw - g.pw + kx * g.dw;
            if (iw >= 0 && iw < g.w) dst[iw] += *src;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------- direct convolution
// Stride 1, a winner per image: no unfolding. The image is copied zero-padded into a
// thread's buffer, (cin, hp, ws) with hp = h + 2 ph and ws = w + 2 pw + kLanes (the slack:
// a whole vector read from a window's last column stays inside its row), and each kept
// channel's output row is sum over (ci, ky, kx) of w * a shifted padded row -- vectorised
// along the output columns, up to kBlockVectors vectors at a time.
struct PaddedShape {
  int64_t hp, ws;
  explicit PaddedShape(const ConvGeometry& g) : hp(g.h + 2 * g.ph), ws(g.w + 2 * g.pw + kLanes) {}
  int64_t size(int64_t cin) const { return cin * hp * ws; }
};

template <typename T>
void pad_image(const T* __restrict__ xb, const ConvGeometry& g, const PaddedShape& ps, T* __restrict__ xpad) {
  std::fill(xpad, xpad + ps.size(g.cin), T(0));
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ih = 0; ih < g.h; ++ih) {
      const T* src = xb + (ci * g.h + ih) * g.w;
      std::copy(src, src + g.w, xpad + (ci * ps.hp + ih + g.ph) * ps.ws + g.pw);
    }
  }
}

// out[ow0, ow0 + n) of output row oh (n <= NV lane vectors): act(m (bias + sum w * xpad)).
template <typename T, int NV>
inline void direct_row(const T* __restrict__ xpad, const ConvGeometry& g, const PaddedShape& ps, int64_t oh,
                       int64_t ow0, int64_t n, const T* __restrict__ w, T bias, T m, bool relu, T* __restrict__ out) {
  V<T> acc[NV] = {};
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const T* row = xpad + (ci * ps.hp + oh + ky * g.dh) * ps.ws + ow0;
      const T* wk = w + (ci * g.kh + ky) * g.kw;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const V<T> wv = splat(wk[kx]);
        const T* r = row + kx * g.dw;
        for (int v = 0; v < NV; ++v) acc[v] += wv * load_lanes(r + v * kLanes);
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    const V<T> y = activate_lanes<T>((acc[v] + bias) * m, relu);
    const int64_t p = v * kLanes;
    if (p + kLanes <= n) {
      store_lanes(out + p, y);
    } else {
      for (int64_t l = 0; l < n - p; ++l) out[p + l] = y[l];
    }
  }
}

template <typename T>
void direct_channel(const T* xpad, const ConvGeometry& g, const PaddedShape& ps, const T* w, T bias, T m, bool relu,
                    T* out) {
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kBlock) {
      const int64_t n = std::min<int64_t>(kBlock, g.out_w - ow0);
      T* o = out + oh * g.out_w + ow0;
      switch ((n + kLanes - 1) / kLanes) {
        case 1: direct_row<T, 1>(xpad, g, ps, oh, ow0, n, w, bias, m, relu, o); break;
        case 2: direct_row<T, 2>(xpad, g, ps, oh, ow0, n, w, bias, m, relu, o); break;
        case 3: direct_row<T, 3>(xpad, g, ps, oh, ow0, n, w, bias, m, relu, o); break;
        default: direct_row<T, kBlockVectors>(xpad, g, ps, oh, ow0, n, w, bias, m, relu, o); break;
      }
    }
  }
}

// grad_xpad += the transposed convolution of M kept channels' masked gradients g (rows of
// wo_p numbers, zero past Wo): for each (ci, ky, kx) and output row, sum_i w_i g_i added
// into the shifted padded row.
template <typename T, int M>
void direct_grad_x(const ConvGeometry& g, const PaddedShape& ps, const T* const* w_rows, const T* const* gr,
                   int64_t wo_p, T* __restrict__ grad_xpad) {
  const int64_t nv = wo_p / kLanes;
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t d = (ci * g.kh + ky) * g.kw + kx;
        V<T> wv[M];
        for (int i = 0; i < M; ++i) wv[i] = splat(w_rows[i][d]);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          T* dst = grad_xpad + (ci * ps.hp + oh + ky * g.dh) * ps.ws + kx * g.dw;
          const int64_t off = oh * wo_p;
          for (int64_t v = 0; v < nv; ++v) {
            V<T> acc = load_lanes(dst + v * kLanes);
            for (int i = 0; i < M; ++i) acc += wv[i] * load_lanes(gr[i] + off + v * kLanes);
            store_lanes(dst + v * kLanes, acc);
          }
        }
      }
    }
  }
}

// The chunk's sums grad_W[c_i, d] += sum over the output of g_i * the shifted padded image
// (the padded rows' lanes past Wo dropped: g is 0 there, and 0 * inf would be NaN).
template <typename T, int M>
void direct_weight_sums(const T* __restrict__ xpad, const ConvGeometry& g, const PaddedShape& ps,
                        const T* const* gr, int64_t wo_p, T* const* w_sums) {
  const int64_t nv = wo_p / kLanes;
  V<T> lane = {};
  for (int l = 0; l < kLanes; ++l) lane[l] = T(l);
  const auto keep = lane < T(g.out_w - (nv - 1) * kLanes);
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t d = (ci * g.kh + ky) * g.kw + kx;
        V<T> acc[M] = {};
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const T* xr = xpad + (ci * ps.hp + oh + ky * g.dh) * ps.ws + kx * g.dw;
          const int64_t off = oh * wo_p;
          int64_t v = 0;
          for (; v + 1 < nv; ++v) {
            const V<T> xv = load_lanes(xr + v * kLanes);
            for (int i = 0; i < M; ++i) acc[i] += load_lanes(gr[i] + off + v * kLanes) * xv;
          }
          const V<T> xv = keep ? load_lanes(xr + v * kLanes) : V<T>{};
          for (int i = 0; i < M; ++i) acc[i] += load_lanes(gr[i] + off + v * kLanes) * xv;
        }
        for (int i = 0; i < M; ++i) w_sums[i][d] += combine_lanes<T>(acc[i]);
      }
    }
  }
}

// The backward of one image's kept channels from their masked gradients gs (n_kept, Ho,
// wo_p): grad_xpad (when not null; the caller crops it) and the chunk's sums of grad_W and
// grad_b (when partials is not null), four channels at a time.
template <typename T>
void direct_backward(const T* __restrict__ xpad, const ConvGeometry& g, const PaddedShape& ps, const T* weight,
                     int64_t ld_w, const int64_t* ch, int64_t n_kept, const T* gs, int64_t wo_p, T* grad_xpad,
                     ChannelPartials<T>* partials, int64_t chunk) {
  const int64_t plane = g.out_h * wo_p;
  for (int64_t s0 = 0; s0 < n_kept; s0 += 4) {
    const int m = static_cast<int>(std::min<int64_t>(4, n_kept - s0));
    const T* gr[4];
    const T* w_rows[4];
    T* w_sums[4];
    for (int i = 0; i < m; ++i) {
      gr[i] = gs + (s0 + i) * plane;
      w_rows[i] = weight + ch[s0 + i] * ld_w;
    }
    if (grad_xpad) {
      switch (m) {
        case 4: direct_grad_x<T, 4>(g, ps, w_rows, gr, wo_p, grad_xpad); break;
        case 3: direct_grad_x<T, 3>(g, ps, w_rows, gr, wo_p, grad_xpad); break;
        case 2: direct_grad_x<T, 2>(g, ps, w_rows, gr, wo_p, grad_xpad); break;
        default: direct_grad_x<T, 1>(g, ps, w_rows, gr, wo_p, grad_xpad); break;
      }
    }
    if (!partials) continue;
    for (int i = 0; i < m; ++i) {
      T* bias_sum;
      w_sums[i] = partials->row(chunk, ch[s0 + i], bias_sum);
      V<T> acc = {};
      for (int64_t e = 0; e < plane; e += kLanes) acc += load_lanes(gr[i] + e);
      *bias_sum += combine_lanes<T>(acc);
    }
    switch (m) {
      case 4: direct_weight_sums<T, 4>(xpad, g, ps, gr, wo_p, w_sums); break;
      case 3: direct_weight_sums<T, 3>(xpad, g, ps, gr, wo_p, w_sums); break;
      case 2: direct_weight_sums<T, 2>(xpad, g, ps, gr, wo_p, w_sums); break;
      default: direct_weight_sums<T, 1>(xpad, g, ps, gr, wo_p, w_sums); break;
    }
  }
}

template <typename T>
struct ConvArgs {
  const T* x;       // (B, Cin, H, W) contiguous
  const T* weight;  // (C, ld) contiguous: the weight's rows zero-padded to ld >= Dp
  const T* bias;    // (C,) or null
  const int64_t* winners;  // (B, P), P = 1 or L
  int64_t b_count, c_count, p_count, ld;
  ConvGeometry g;
  bool relu;
};

// out[p] = act(m (bias + sum_d w[d] cols[d * ld + p])) for the n positions, blocks of kBlock
// positions, then single vectors (whole-vector loads: the columns are zero-padded past L;
// the last vector's store stops at n), vectorised over the positions.
template <typename T>
void channel_row(const T* __restrict__ cols, int64_t ld, int64_t n, int64_t dp, const T* __restrict__ w, T bias,
                 T m, bool relu, T* __restrict__ out) {
  int64_t p = 0;
  for (; p + kBlock <= n; p += kBlock) {
    V<T> acc[kBlockVectors] = {};
    for (int64_t j = 0; j < dp; ++j) {
      const V<T> wj = splat(w[j]);
      const T* col = cols + j * ld + p;
      for (int v = 0; v < kBlockVectors; ++v) acc[v] += wj * load_lanes(col + v * kLanes);
    }
    for (int v = 0; v < kBlockVectors; ++v) {
      store_lanes(out + p + v * kLanes, activate_lanes<T>((acc[v] + bias) * m, relu));
    }
  }
  for (; p < n; p += kLanes) {
    V<T> acc = {};
    for (int64_t j = 0; j < dp; ++j) acc += w[j] * load_lanes(cols + j * ld + p);
    const V<T> r = activate_lanes<T>((acc + bias) * m, relu);
    if (p + kLanes <= n) {
      store_lanes(out + p, r);
    } else {
      for (int64_t l = 0; l < n - p; ++l) out[p + l] = r[l];
    }
  }
}

// The masked gradients g (n_kept x ld, ld a whole number of lane vectors, zeros past the
// positions) -> grad_cols[j * ld + p] = sum_s W[c_s, j] g[s, p], blocks of kBlockVectors
// vectors.
template <typename T>
void grad_columns(const T* __restrict__ weight, int64_t ld_w, int64_t dp, const int64_t* ch, int64_t n_kept,
                  const T* g, int64_t ld, T* __restrict__ grad_cols) {
  for (int64_t p = 0; p < ld; p += kBlock) {
    const int nv = static_cast<int>(std::min<int64_t>(kBlock, ld - p) / kLanes);
    for (int64_t j = 0; j < dp; ++j) {
      V<T> acc[kBlockVectors] = {};
      for (int64_t s = 0; s < n_kept; ++s) {
        const V<T> wj = splat(weight[ch[s] * ld_w + j]);
        const T* gs = g + s * ld + p;
        for (int v = 0; v < nv; ++v) acc[v] += wj * load_lanes(gs + v * kLanes);
      }
      T* dst = grad_cols + j * ld + p;
      for (int v = 0; v < nv; ++v) store_lanes(dst + v * kLanes, acc[v]);
    }
  }
}

// The chunk's sums grad_W[c_s, j] += sum_p g[s, p] cols[j, p] and grad_b[c_s] += sum_p
// g[s, p] over the positions (rows of n numbers, zeros past the positions): four kept
// channels at a time, each column row read once per four channels.
template <typename T>
void column_weight_sums(const T* __restrict__ cols, int64_t n, int64_t dp, const int64_t* ch, int64_t n_kept,
                        const T* g, ChannelPartials<T>& partials, int64_t chunk) {
  for (int64_t s0 = 0; s0 < n_kept; s0 += 4) {
    const int m = static_cast<int>(std::min<int64_t>(4, n_kept - s0));
    T* rows[4];
    const T* gr[4];
    for (int i = 0; i < m; ++i) {
      T* bias_sum;
      rows[i] = partials.row(chunk, ch[s0 + i], bias_sum);
      gr[i] = g + (s0 + i) * n;
      V<T> acc = {};
      int64_t p = 0;
      for (; p + kLanes <= n; p += kLanes) acc += load_lanes(gr[i] + p);
      if (p < n) acc += load_lanes_partial(gr[i] + p, n - p);
      *bias_sum += combine_lanes<T>(acc);
    }
    for (int64_t j = 0; j < dp; ++j) {
      T sum[4];
      dots_n(m, cols + j * n, gr, n, sum);
      for (int i = 0; i < m; ++i) rows[i][j] += sum[i];
    }
  }
}

// A winner per position: an image's (position, mask) pairs of every channel, grouped by
// channel in position order -- the per-position kernels walk one channel's output row at a
// time (reading and writing the (B, C, Ho, Wo) tensors row by row, not scattered over the
// channels).
template <typename T>
struct ChannelLists {
  std::vector<int64_t> start, position, next;
  std::vector<T> mask;
  const ChannelLists& build(const KeptTable<T>& tab, const int64_t* winners, int64_t l_count, int64_t c_count) {
    start.assign(c_count + 1, 0);
    for (int64_t p = 0; p < l_count; ++p) {
      const int64_t w = winners[p];
      const int64_t* ch = tab.chans(w);
      for (int64_t s = 0; s < tab.count[w]; ++s) ++start[ch[s] + 1];
    }
    for (int64_t c = 0; c < c_count; ++c) start[c + 1] += start[c];
    position.resize(start[c_count]);
    mask.resize(start[c_count]);
    next.assign(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < l_count; ++p) {
      const int64_t w = winners[p];
      const int64_t* ch = tab.chans(w);
      const T* ms = tab.mask(w);
      for (int64_t s = 0; s < tab.count[w]; ++s) {
        const int64_t e = next[ch[s]]++;
        position[e] = p;
        mask[e] = ms[s];
      }
    }
    return *this;
  }
};

// One thread's buffers: an image's patches (columns or rows), its kept outputs' masked
// gradients, its patches' gradients and (a winner per position) its channel lists.
template <typename T>
struct ConvScratch {
  std::vector<T> patches, grads, grad_patches;
  ChannelLists<T> lists;
};

template <typename T>
void conv_forward_image(const ConvArgs<T>& a, const KeptTable<T>& tab, int64_t b, ConvScratch<T>& scratch, T* out) {
  const ConvGeometry& g = a.g;
  const int64_t l_count = g.l(), dp = g.dp();
  T* ob = out + b * a.c_count * l_count;
  std::fill(ob, ob + a.c_count * l_count, T(0));
  const T* xb = a.x + b * g.cin * g.h * g.w;
  const int64_t* wn = a.winners + b * a.p_count;
  T* patches = scratch.patches.data();
  if (a.p_count == 1 && g.sh == 1 && g.sw == 1) {
    const PaddedShape ps(g);
    pad_image(xb, g, ps, patches);
    const int64_t w = wn[0];
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    for (int64_t s = 0; s < tab.count[w]; ++s) {
      const int64_t c = ch[s];
      direct_channel(patches, g, ps, a.weight + c * a.ld, a.bias ? a.bias[c] : T(0), ms[s], a.relu,
                     ob + c * l_count);
    }
    return;
  }
  if (a.p_count == 1) {
    const int64_t ldc = padded(l_count);
    image_columns(xb, g, ldc, patches);
    const int64_t w = wn[0];
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    // blocks of positions outermost: a block's columns (about 16 KiB) stay in L1 for every
    // kept channel
    const int64_t span = std::clamp<int64_t>(16384 / (dp * int64_t(sizeof(T))) / kBlock, 1, 8) * kBlock;
    for (int64_t p0 = 0; p0 < l_count; p0 += span) {
      const int64_t n = std::min<int64_t>(span, l_count - p0);
      for (int64_t s = 0; s < tab.count[w]; ++s) {
        const int64_t c = ch[s];
        channel_row(patches + p0, ldc, n, dp, a.weight + c * a.ld, a.bias ? a.bias[c] : T(0), ms[s], a.relu,
                    ob + c * l_count + p0);
      }
    }
    return;
  }
  // a winner per position: channel by channel over the positions that keep it (in
  // position order), each a dot product with the position's patch row
  image_rows(xb, g, a.ld, patches);
  const ChannelLists<T>& lists = scratch.lists.build(tab, wn, l_count, a.c_count);
  for (int64_t c = 0; c < a.c_count; ++c) {
    const T* wrow = a.weight + c * a.ld;
    const T bias = a.bias ? a.bias[c] : T(0);
    T* oc = ob + c * l_count;
    for (int64_t e = lists.start[c]; e < lists.start[c + 1]; ++e) {
      const int64_t p = lists.position[e];
      T z;
      const T* rows[1] = {wrow};
      dots<T, 1>(patches + p * a.ld, rows, a.ld, &z);
      oc[p] = activate(lists.mask[e] * (z + bias), a.relu);
    }
  }
}

ConvGeometry conv_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1), op,
              ": x must be (B, Cin, H, W) and weight (C, Cin, kh, kw); got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must hold two numbers each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              op, ": stride and dilation must be >= 1 and padding >= 0");
  ConvGeometry g{x.size(1), x.size(2), x.size(3), weight.size(2), weight.size(3), stride[0], stride[1], padding[0],
                 padding[1], dilation[0], dilation[1], 0, 0};
  g.out_h = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.out_w = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1 >= 0 && g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1 >= 0, op,
              ": the kernel does not fit the padded input");
  return g;
}

void check_conv_winners(const char* op, const at::Tensor& winners, int64_t b_count, int64_t l_count) {
  TORCH_CHECK(winners.dim() == 2 && winners.size(0) == b_count &&
                  (winners.size(1) == 1 || winners.size(1) == l_count) && winners.scalar_type() == at::kLong,
              op, ": winners must be a (", b_count, ", 1) or (", b_count, ", ", l_count, ") int64 tensor; got ",
              winners.sizes(), " ", winners.scalar_type());
}

// The weight as (C, ld) rows: Dp numbers zero-padded to ld, a whole number of lane vectors
// for the per-position dot products (ld = Dp for per-image winners).
at::Tensor weight_rows(const at::Tensor& weight, int64_t ld) {
  const int64_t c_count = weight.size(0), dp = weight.size(1) * weight.size(2) * weight.size(3);
  at::Tensor w2 = weight.reshape({c_count, dp});
  if (ld == dp) return w2.contiguous();
  return at::constant_pad_nd(w2, {0, ld - dp}, 0).contiguous();
}

at::Tensor som_mask_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& winners, const at::Tensor& kept, const at::Tensor& values,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool relu) {
  const char* op = "som_mask_conv2d";
  const ConvGeometry geo = conv_geometry(op, x, weight, stride, padding, dilation);
  const int64_t b_count = x.size(0), c_count = weight.size(0), l_count = geo.l(), dp = geo.dp();
  check_conv_winners(op, winners, b_count, l_count);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_count && bias->scalar_type() == x.scalar_type(), op,
                ": bias must be (", c_count, ",) in x's dtype; got ", bias->sizes());
  }
  at::Tensor out = at::empty({b_count, c_count, geo.out_h, geo.out_w}, x.options());
  if (b_count == 0) return out;
  check_tables(op, kept, values);
  check_winners(op, winners, kept.size(0));
  const bool per_position = winners.size(1) > 1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_mask_conv2d", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team =
        genkernels::cpu::team_size(std::min(b_count, threads_for(b_count * l_count * (tab.width * dp + c_count))));
    genkernels::cpu::SoloScope solo(team <= 1);
    const int64_t ld = per_position ? padded(dp) : dp;
    const at::Tensor x_c = x.contiguous(), w_c = weight_rows(weight, ld), winners_c = winners.contiguous();
    const at::Tensor b_c = has_bias ? bias->contiguous() : at::Tensor();
    const ConvArgs<T> a{x_c.const_data_ptr<T>(), w_c.const_data_ptr<T>(), has_bias ? b_c.const_data_ptr<T>() : nullptr,
                        winners_c.const_data_ptr<int64_t>(), b_count, c_count, winners.size(1), ld, geo, relu};
    std::vector<ConvScratch<T>> scratch(team);
    const int64_t patch_size = std::max(ld * padded(l_count), PaddedShape(geo).size(geo.cin));
    for (auto& s : scratch) s.patches.resize(patch_size);
    T* o = out.mutable_data_ptr<T>();
    genkernels::cpu::parallel_chunks(b_count, team, [&](int64_t b, int slot) {
      conv_forward_image(a, tab, b, scratch[slot], o);
    });
  });
  return out;
}

// One image's backward: the masked gradients of its kept outputs, its input gradient (when
// grad_x is not null) and its chunk's sums of grad_W and grad_b (when sums).
template <typename T>
void conv_backward_image(const ConvArgs<T>& a, const KeptTable<T>& tab, int64_t b, const T* grad, const T* out,
                         T* grad_x, bool sums, ChannelPartials<T>& partials, int64_t chunk, ConvScratch<T>& scratch) {
  const ConvGeometry& g = a.g;
  const int64_t l_count = g.l(), dp = g.dp();
  const T* xb = a.x + b * g.cin * g.h * g.w;
  const int64_t* wn = a.winners + b * a.p_count;
  const T* gb = grad + b * a.c_count * l_count;
  const T* ob = out + b * a.c_count * l_count;
  T* gxb = grad_x ? grad_x + b * g.cin * g.h * g.w : nullptr;
  if (gxb) std::fill(gxb, gxb + g.cin * g.h * g.w, T(0));
  T* patches = scratch.patches.data();
  T* gp = scratch.grad_patches.data();
  if (a.p_count == 1 && g.sh == 1 && g.sw == 1) {
    const int64_t w = wn[0], n_kept = tab.count[w];
    if (n_kept == 0) return;
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    const int64_t wo_p = padded(g.out_w);
    T* gs = scratch.grads.data();  // (n_kept, Ho, wo_p), zeros past Wo
    for (int64_t s = 0; s < n_kept; ++s) {
      const T* gr = gb + ch[s] * l_count;
      const T* orow = ob + ch[s] * l_count;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        T* dst = gs + (s * g.out_h + oh) * wo_p;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t p = oh * g.out_w + ow;
          dst[ow] = masked_grad(gr[p], ms[s], orow[p], a.relu);
        }
        std::fill(dst + g.out_w, dst + wo_p, T(0));
      }
    }
    const PaddedShape ps(g);
    if (sums) pad_image(xb, g, ps, patches);
    if (gxb) std::fill(gp, gp + ps.size(g.cin), T(0));
    direct_backward(patches, g, ps, a.weight, a.ld, ch, n_kept, gs, wo_p, gxb ? gp : nullptr,
                    sums ? &partials : nullptr, chunk);
    if (gxb) {
      for (int64_t ci = 0; ci < g.cin; ++ci) {
        for (int64_t ih = 0; ih < g.h; ++ih) {
          const T* src = gp + (ci * ps.hp + ih + g.ph) * ps.ws + g.pw;
          std::copy(src, src + g.w, gxb + (ci * g.h + ih) * g.w);
        }
      }
    }
    return;
  }
  if (a.p_count == 1) {
    const int64_t w = wn[0], n_kept = tab.count[w];
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    const int64_t ldc = padded(l_count);
    T* gs = scratch.grads.data();  // (n_kept, ldc), zeros past L
    for (int64_t s = 0; s < n_kept; ++s) {
      const T* gr = gb + ch[s] * l_count;
      const T* orow = ob + ch[s] * l_count;
      T* gsr = gs + s * ldc;
      for (int64_t p = 0; p < l_count; ++p) gsr[p] = masked_grad(gr[p], ms[s], orow[p], a.relu);
      std::fill(gsr + l_count, gsr + ldc, T(0));
    }
    if (gxb && n_kept) {
      grad_columns(a.weight, a.ld, dp, ch, n_kept, gs, ldc, gp);
      fold_columns(gp, g, ldc, gxb);
    }
    if (sums && n_kept) {
      image_columns(xb, g, ldc, patches);
      column_weight_sums(patches, ldc, dp, ch, n_kept, gs, partials, chunk);
    }
    return;
  }
  // a winner per position: channel by channel (see conv_forward_image); the channel's
  // weight-row sum accumulates in scratch.grads and goes to the chunk's partials once
  if (sums) image_rows(xb, g, a.ld, patches);
  const ChannelLists<T>& lists = scratch.lists.build(tab, wn, l_count, a.c_count);
  if (gxb) std::fill(gp, gp + l_count * a.ld, T(0));
  T* acc = scratch.grads.data();  // (ld,)
  for (int64_t c = 0; c < a.c_count; ++c) {
    if (lists.start[c] == lists.start[c + 1]) continue;
    const T* wrow = a.weight + c * a.ld;
    const T* gc = gb + c * l_count;
    const T* oc = ob + c * l_count;
    T bias_acc = 0;
    if (sums) std::fill(acc, acc + a.ld, T(0));
    for (int64_t e = lists.start[c]; e < lists.start[c + 1]; ++e) {
      const int64_t p = lists.position[e];
      const T gv = masked_grad(gc[p], lists.mask[e], oc[p], a.relu);
      if (gxb) axpy(gv, wrow, gp + p * a.ld, a.ld);
      if (sums) {
        axpy(gv, patches + p * a.ld, acc, a.ld);
        bias_acc += gv;
      }
    }
    if (sums) {
      T* bias_sum;
      T* row = partials.row(chunk, c, bias_sum);
      *bias_sum += bias_acc;
      for (int64_t j = 0; j < dp; ++j) row[j] += acc[j];
    }
  }
  if (gxb) fold_rows(gp, g, a.ld, gxb);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_mask_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& winners,
    const at::Tensor& kept, const at::Tensor& values, const at::Tensor& out, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, std::array<bool, 3> output_mask) {
  const char* op = "som_mask_conv2d_backward";
  const ConvGeometry geo = conv_geometry(op, x, weight, stride, padding, dilation);
  const int64_t b_count = x.size(0), c_count = weight.size(0), l_count = geo.l(), dp = geo.dp();
  check_conv_winners(op, winners, b_count, l_count);
  const std::vector<int64_t> out_shape{b_count, c_count, geo.out_h, geo.out_w};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape) && out.sizes() == at::IntArrayRef(out_shape), op,
              ": grad and out must be ", at::IntArrayRef(out_shape), "; got ", grad.sizes(), " and ", out.sizes());
  const bool want_x = output_mask[0], want_w = output_mask[1], want_b = output_mask[2];
  at::Tensor grad_x = want_x ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = want_w ? at::empty(weight.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_b = want_b ? at::empty({c_count}, x.options()) : at::empty({0}, x.options());
  if (b_count == 0) {
    grad_x.zero_();
    grad_w.zero_();
    grad_b.zero_();
    return {grad_x, grad_w, grad_b};
  }
  check_tables(op, kept, values);
  check_winners(op, winners, kept.size(0));
  const bool per_position = winners.size(1) > 1;
  const at::ScalarType dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES(dtype, "som_mask_conv2d_backward", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team = genkernels::cpu::team_size(
        std::min(b_count, threads_for(2 * b_count * l_count * std::max<int64_t>(tab.width, 1) * dp)));
    genkernels::cpu::SoloScope solo(team <= 1);
    const int64_t ld = per_position ? padded(dp) : dp;
    const at::Tensor x_c = x.contiguous(), w_c = weight_rows(weight, ld), winners_c = winners.contiguous();
    const at::Tensor grad_c = grad.to(dtype).contiguous(), out_c = out.to(dtype).contiguous();
    const ConvArgs<T> a{x_c.const_data_ptr<T>(), w_c.const_data_ptr<T>(), nullptr, winners_c.const_data_ptr<int64_t>(),
                        b_count, c_count, winners.size(1), ld, geo, relu};
    const bool sums = want_w || want_b;
    T* gw = want_w ? grad_w.mutable_data_ptr<T>() : nullptr;
    T* gbias = want_b ? grad_b.mutable_data_ptr<T>() : nullptr;
    const int64_t images = chunk_size(b_count, 1);
    const int64_t chunks = (b_count + images - 1) / images;
    ChannelPartials<T> partials(sums ? chunks : 1, c_count, dp, gw, gbias);
    std::vector<ConvScratch<T>> scratch(team);
    for (auto& s : scratch) {
      const int64_t patch_size = std::max(ld * padded(l_count), PaddedShape(geo).size(geo.cin));
      s.patches.resize(patch_size);
      s.grad_patches.resize(want_x ? patch_size : 0);
      s.grads.resize(per_position ? ld
                                  : std::max<int64_t>(tab.width, 1) *
                                        std::max(padded(l_count), geo.out_h * padded(geo.out_w)));
    }
    T* gx = want_x ? grad_x.mutable_data_ptr<T>() : nullptr;
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t i, int slot) {
      for (int64_t b = i * images, b1 = std::min(b_count, (i + 1) * images); b < b1; ++b) {
        conv_backward_image(a, tab, b, grad_c.const_data_ptr<T>(), out_c.const_data_ptr<T>(), gx, sums, partials, i,
                            scratch[slot]);
      }
    });
    if (sums) partials.reduce(team);
  });
  return {grad_x, grad_w, grad_b};
}

// ------------------------------------------------------------------------------ autograd
// In C++ so that a call pays no Python autograd layer (as som_soft). The mask is a constant
// (mask_reference.py): winners, kept and values get no gradient.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using LinearSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
using LinearBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, bool, std::array<bool, 3>);
using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                 at::IntArrayRef, at::IntArrayRef, bool);
using ConvBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool, std::array<bool, 3>);

// needs_input_grad counts the tensors passed (an absent bias is no input: edge 2 is then
// the winners, which need none); the list returned has one entry per forward argument.
std::array<bool, 3> wanted(AutogradContext* ctx) {
  const bool bias = ctx->saved_data["bias"].toBool();
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), bias && ctx->needs_input_grad(2)};
}

variable_list input_grads(AutogradContext* ctx, const std::tuple<at::Tensor, at::Tensor, at::Tensor>& grads,
                          const variable_list& saved, size_t n_inputs) {
  const std::array<bool, 3> want = wanted(ctx);
  variable_list result(n_inputs);
  if (want[0]) result[0] = std::get<0>(grads).to(saved[0].scalar_type());
  if (want[1]) result[1] = std::get<1>(grads).to(saved[1].scalar_type());
  if (want[2]) result[2] = std::get<2>(grads).to(saved[1].scalar_type());
  return result;
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& winners, const at::Tensor& kept,
                            const at::Tensor& values, bool relu) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::som_mask_linear", "").typed<LinearSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = op.call(x, weight, bias, winners, kept, values, relu);
    ctx->save_for_backward({x, weight, winners, kept, values, out});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::som_mask_linear_backward", "")
                               .typed<LinearBackwardSignature>();
    if (!grads[0].defined()) return variable_list(7);
    const auto saved = ctx->get_saved_variables();
    const auto result = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                                ctx->saved_data["relu"].toBool(), wanted(ctx));
    return input_grads(ctx, result, saved, 7);
  }
};

class ConvFunction : public torch::autograd::Function<ConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& winners, const at::Tensor& kept,
                            const at::Tensor& values, std::vector<int64_t> stride, std::vector<int64_t> padding,
                            std::vector<int64_t> dilation, bool relu) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::som_mask_conv2d", "").typed<ConvSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = op.call(x, weight, bias, winners, kept, values, stride, padding, dilation, relu);
    ctx->save_for_backward({x, weight, winners, kept, values, out});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::som_mask_conv2d_backward", "")
                               .typed<ConvBackwardSignature>();
    if (!grads[0].defined()) return variable_list(10);
    const auto saved = ctx->get_saved_variables();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const auto result = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], stride,
                                padding, dilation, ctx->saved_data["relu"].toBool(), wanted(ctx));
    return input_grads(ctx, result, saved, 10);
  }
};

at::Tensor som_mask_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& winners,
                                    const at::Tensor& kept, const at::Tensor& values, bool relu) {
  return LinearFunction::apply(x, weight, bias, winners, kept, values, relu);
}

at::Tensor som_mask_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& winners,
                                    const at::Tensor& kept, const at::Tensor& values, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  return ConvFunction::apply(x, weight, bias, winners, kept, values, stride.vec(),
                             padding.vec(), dilation.vec(), relu);
}

}  // namespace
}  // namespace genkernels::som::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("som_mask_linear", &genkernels::som::cpu::som_mask_linear_cpu);
  m.impl("som_mask_linear_backward", &genkernels::som::cpu::som_mask_linear_backward_cpu);
  m.impl("som_mask_conv2d", &genkernels::som::cpu::som_mask_conv2d_cpu);
  m.impl("som_mask_conv2d_backward", &genkernels::som::cpu::som_mask_conv2d_backward_cpu);
}

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) {
  m.impl("som_mask_linear", &genkernels::som::cpu::som_mask_linear_autograd);
  m.impl("som_mask_conv2d", &genkernels::som::cpu::som_mask_conv2d_autograd);
}
