// CPU kernels of the SOM-masked layers (schemas in csrc/genkernels.cpp, spec and gradients in
// genkernels/som/mask_reference.py): only the outputs the mask keeps are computed, from the
// gathered rows of the weight, and every other output is written 0.
//
//   som_mask_linear           rows in parallel; a row reads its winner's kept channels and
//                             takes their dot products with its x (four channels at a time,
//                             vectorised over the features).
//   som_mask_conv2d           the image's patches as columns (Dp = Cin kh kw rows, L = Ho Wo
//                             positions; at::im2col), then per image:
//                             winners (B, 1): one kept set for every position -- for each
//                             block of 32 positions (its Dp x 32 columns stay in L1) and each
//                             kept channel, act(m (b + w . cols)) vectorised over positions,
//                             written straight into the channel's output row;
//                             winners (B, L): the positions grouped by winner (a counting sort
//                             in position order), each group's columns gathered, computed as
//                             above for the group's kept channels and scattered back.
//   *_backward                g = grad m [out > 0] on the kept outputs only; grad_x = g W
//                             over the kept rows (conv: columns, then at::col2im); grad_W and
//                             grad_bias = sums over the rows (positions) that keep a channel.
//
// Sums over rows without atomics and independent of the thread count: the rows (images)
// are cut into at most kMaxChunks chunks whose size depends on the batch alone; a chunk sums
// into its own rows of per-chunk partials (a channel's row zeroed when the chunk first
// touches it), and the partials are added in chunk order after the region. Memory: the
// outputs, the columns (conv) and chunks x C x Dp partials; no (B, C) dense mask.
//
// Arithmetic in the inputs' dtype (float or double; the Python side converts half and
// bfloat16 to float). The autograd of both ops is in C++, at the end.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
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
constexpr int64_t kMinChunkRows = 32;
// Positions per block of the conv kernels: 4 lane vectors.
constexpr int64_t kBlockVectors = 4;
constexpr int64_t kBlock = kBlockVectors * kLanes;

int64_t chunk_size(int64_t items, int64_t min_size) {
  return std::max(min_size, (items + kMaxChunks - 1) / kMaxChunks);
}

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
  for (int64_t w = 0; w < k_nodes; ++w) {
    int64_t n = 0;
    for (int64_t s = 0; s < t.width; ++s) {
      const int64_t c = kp[w * t.width + s];
      if (c < 0) continue;
      TORCH_CHECK_INDEX(c < c_count, op, ": kept holds channel ", c, " but the layer has ", c_count, " outputs");
      t.channels[w * t.width + n] = c;
      t.masks[w * t.width + n] = vp[w * t.width + s];
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
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < k_nodes, op, ": winners must lie in [0, ", k_nodes, "); got ", p[i]);
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
  std::vector<T> w_store, b_store;
  std::vector<uint8_t> touched;

  ChannelPartials(int64_t chunks_, int64_t c_count_, int64_t width_, T* grad_w_, T* grad_b_)
      : chunks(chunks_), c_count(c_count_), width(width_), grad_w(grad_w_), grad_b(grad_b_),
        touched(chunks_ * c_count_, 0) {
    if (chunks > 1) {
      w_store.resize(chunks * c_count * width);
      b_store.resize(chunks * c_count);
    }
  }

  // chunk's row of channel c (and its bias sum through `bias`), zeroed on first touch
  T* row(int64_t chunk, int64_t c, T*& bias) {
    const int64_t idx = chunk * c_count + c;
    T* r = chunks > 1 ? w_store.data() + idx * width : grad_w + c * width;
    bias = chunks > 1 ? b_store.data() + idx : grad_b + c;
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
        const T* r = w_store.data() + idx * width;
        for (int64_t j = 0; j < width; ++j) out[j] += r[j];
        bias += b_store[idx];
      }
      grad_b[c] = bias;
    });
  }
};

// ---------------------------------------------------------------------------- linear
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
    std::vector<T> gw_scratch, gb_scratch;
    T* gw = want_w ? grad_w.mutable_data_ptr<T>() : nullptr;
    T* gb = want_b ? grad_b.mutable_data_ptr<T>() : nullptr;
    if (sums && !want_w) {
      gw_scratch.resize(c_count * d);
      gw = gw_scratch.data();
    }
    if (sums && !want_b) {
      gb_scratch.resize(c_count);
      gb = gb_scratch.data();
    }
    const int64_t rows = chunk_size(b_count, kMinChunkRows);
    const int64_t chunks = (b_count + rows - 1) / rows;
    ChannelPartials<T> partials(sums ? chunks : 1, c_count, d, gw, gb);
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t i, int) {
      std::vector<T> g(tab.width);
      for (int64_t r = i * rows, r1 = std::min(b_count, (i + 1) * rows); r < r1; ++r) {
        const int64_t w = wn[r];
        const int64_t n = tab.count[w];
        const int64_t* ch = tab.chans(w);
        const T* ms = tab.mask(w);
        for (int64_t s = 0; s < n; ++s) {
          const int64_t c = ch[s];
          g[s] = masked_grad(gp[r * c_count + c], ms[s], op_[r * c_count + c], relu);
        }
        const T* xr = xp + r * d;
        if (gx) {
          T* gxr = gx + r * d;
          int64_t j = 0;
          for (; j + kLanes <= d; j += kLanes) {
            V<T> acc = {};
            for (int64_t s = 0; s < n; ++s) acc += g[s] * load_lanes(wp + ch[s] * d + j);
            store_lanes(gxr + j, acc);
          }
          for (; j < d; ++j) {
            T acc = 0;
            for (int64_t s = 0; s < n; ++s) acc += g[s] * wp[ch[s] * d + j];
            gxr[j] = acc;
          }
        }
        if (!sums) continue;
        for (int64_t s = 0; s < n; ++s) {
          T* bias_sum;
          T* row = partials.row(i, ch[s], bias_sum);
          const T gs = g[s];
          *bias_sum += gs;
          int64_t j = 0;
          for (; j + kLanes <= d; j += kLanes) store_lanes(row + j, load_lanes(row + j) + gs * load_lanes(xr + j));
          for (; j < d; ++j) row[j] += gs * xr[j];
        }
      }
    });
    if (sums) partials.reduce(team);
  });
  return {grad_x, grad_w, grad_b};
}

// ------------------------------------------------------------------------------ conv2d
template <typename T>
struct ConvArgs {
  const T* cols;    // (B, Dp, L) contiguous: the patches as columns
  const T* weight;  // (C, Dp) contiguous
  const T* bias;    // (C,) or null
  const int64_t* winners;  // (B, P), P = 1 or L
  int64_t b_count, dp, l_count, c_count, p_count;
  bool relu;
};

// out[p] = act(m (bias + sum_d w[d] cols[d * ld + p])) for the n positions, blocks of kBlock
// positions (then single vectors, then a partial one) vectorised over the positions.
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
    for (int v = 0; v < kBlockVectors; ++v) store_lanes(out + p + v * kLanes, activate_lanes<T>((acc[v] + bias) * m, relu));
  }
  for (; p < n; p += kLanes) {
    const int64_t width = std::min<int64_t>(kLanes, n - p);
    V<T> acc = {};
    for (int64_t j = 0; j < dp; ++j) {
      const T* col = cols + j * ld + p;
      acc += w[j] * (width == kLanes ? load_lanes(col) : load_lanes_partial(col, width));
    }
    const V<T> r = activate_lanes<T>((acc + bias) * m, relu);
    for (int64_t l = 0; l < width; ++l) out[p + l] = r[l];
  }
}

// The masked gradients g (n_kept x n, row stride ld_g) -> grad_cols[j * ld_c + p] =
// sum_s W[c_s, j] g[s, p] for the n positions.
template <typename T>
void group_grad_cols(const T* __restrict__ weight, int64_t dp, const int64_t* ch, int64_t n_kept, const T* g,
                     int64_t ld_g, int64_t n, T* __restrict__ grad_cols, int64_t ld_c) {
  for (int64_t p = 0; p < n; p += kLanes) {
    const int64_t width = std::min<int64_t>(kLanes, n - p);
    for (int64_t j = 0; j < dp; ++j) {
      V<T> acc = {};
      for (int64_t s = 0; s < n_kept; ++s) {
        const T* gs = g + s * ld_g + p;
        acc += weight[ch[s] * dp + j] * (width == kLanes ? load_lanes(gs) : load_lanes_partial(gs, width));
      }
      T* dst = grad_cols + j * ld_c + p;
      if (width == kLanes) {
        store_lanes(dst, acc);
      } else {
        for (int64_t l = 0; l < width; ++l) dst[l] = acc[l];
      }
    }
  }
}

// The chunk's sums of grad_W[c_s, j] += sum_p g[s, p] cols[j, p] and grad_b[c_s] += sum_p
// g[s, p] over the n positions: four kept channels at a time, each column row read once per
// four channels.
template <typename T>
void group_weight_sums(const T* __restrict__ cols, int64_t ld, int64_t n, int64_t dp, const int64_t* ch,
                       int64_t n_kept, const T* g, int64_t ld_g, ChannelPartials<T>& partials, int64_t chunk) {
  for (int64_t s0 = 0; s0 < n_kept; s0 += 4) {
    const int m = static_cast<int>(std::min<int64_t>(4, n_kept - s0));
    T* rows[4];
    for (int i = 0; i < m; ++i) {
      T* bias_sum;
      rows[i] = partials.row(chunk, ch[s0 + i], bias_sum);
      const T* gs = g + (s0 + i) * ld_g;
      V<T> acc = {};
      int64_t p = 0;
      for (; p + kLanes <= n; p += kLanes) acc += load_lanes(gs + p);
      if (p < n) acc += load_lanes_partial(gs + p, n - p);
      *bias_sum += combine_lanes<T>(acc);
    }
    const T* gr[4];
    for (int i = 0; i < m; ++i) gr[i] = g + (s0 + i) * ld_g;
    for (int64_t j = 0; j < dp; ++j) {
      T sum[4];
      dots_n(m, cols + j * ld, gr, n, sum);
      for (int i = 0; i < m; ++i) rows[i][j] += sum[i];
    }
  }
}

// Scratch of one thread for the per-position kernels: the positions grouped by winner and
// one group's gathered columns, outputs and gradients.
template <typename T>
struct GroupScratch {
  std::vector<int64_t> order, start;
  std::vector<T> cols, vals, grad_cols;
  void size(int64_t l_count, int64_t k_nodes, int64_t dp, int64_t width) {
    order.resize(l_count);
    start.resize(k_nodes + 1);
    cols.resize(dp * l_count);
    vals.resize(std::max<int64_t>(width, 1) * l_count);
    grad_cols.resize(dp * l_count);
  }
  // order = positions sorted by winner (stable), start[w] .. start[w + 1] winner w's group
  void group(const int64_t* winners, int64_t l_count, int64_t k_nodes) {
    std::fill(start.begin(), start.end(), 0);
    for (int64_t p = 0; p < l_count; ++p) ++start[winners[p] + 1];
    for (int64_t w = 0; w < k_nodes; ++w) start[w + 1] += start[w];
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < l_count; ++p) order[next[winners[p]]++] = p;
  }
  // the group's columns, (dp, n) with row stride n
  void gather(const T* image_cols, int64_t l_count, int64_t dp, const int64_t* pos, int64_t n) {
    for (int64_t j = 0; j < dp; ++j) {
      const T* src = image_cols + j * l_count;
      T* dst = cols.data() + j * n;
      for (int64_t i = 0; i < n; ++i) dst[i] = src[pos[i]];
    }
  }
};

template <typename T>
void conv_forward_image(const ConvArgs<T>& a, const KeptTable<T>& tab, int64_t b, GroupScratch<T>& scratch,
                        T* out) {
  const int64_t l_count = a.l_count, dp = a.dp;
  T* ob = out + b * a.c_count * l_count;
  std::fill(ob, ob + a.c_count * l_count, T(0));
  const T* cols = a.cols + b * dp * l_count;
  const int64_t* wn = a.winners + b * a.p_count;
  if (a.p_count == 1) {
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
        channel_row(cols + p0, l_count, n, dp, a.weight + c * dp, a.bias ? a.bias[c] : T(0), ms[s], a.relu,
                    ob + c * l_count + p0);
      }
    }
    return;
  }
  const int64_t k_nodes = static_cast<int64_t>(tab.count.size());
  scratch.group(wn, l_count, k_nodes);
  for (int64_t w = 0; w < k_nodes; ++w) {
    const int64_t g0 = scratch.start[w], n = scratch.start[w + 1] - g0;
    if (n == 0 || tab.count[w] == 0) continue;
    const int64_t* pos = scratch.order.data() + g0;
    scratch.gather(cols, l_count, dp, pos, n);
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    for (int64_t s = 0; s < tab.count[w]; ++s) {
      const int64_t c = ch[s];
      T* vals = scratch.vals.data();
      channel_row(scratch.cols.data(), n, n, dp, a.weight + c * dp, a.bias ? a.bias[c] : T(0), ms[s], a.relu, vals);
      T* oc = ob + c * l_count;
      for (int64_t i = 0; i < n; ++i) oc[pos[i]] = vals[i];
    }
  }
}

struct ConvGeometry {
  std::array<int64_t, 2> kernel, stride, padding, dilation;
  int64_t out_h, out_w;
};

ConvGeometry conv_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1), op,
              ": x must be (B, Cin, H, W) and weight (C, Cin, kh, kw); got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must hold two numbers each");
  ConvGeometry g;
  for (int i = 0; i < 2; ++i) {
    g.kernel[i] = weight.size(2 + i);
    g.stride[i] = stride[i];
    g.padding[i] = padding[i];
    g.dilation[i] = dilation[i];
    TORCH_CHECK(stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0, op,
                ": stride and dilation must be >= 1 and padding >= 0");
  }
  g.out_h = (x.size(2) + 2 * g.padding[0] - g.dilation[0] * (g.kernel[0] - 1) - 1) / g.stride[0] + 1;
  g.out_w = (x.size(3) + 2 * g.padding[1] - g.dilation[1] * (g.kernel[1] - 1) - 1) / g.stride[1] + 1;
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, op, ": the kernel does not fit the padded input");
  return g;
}

at::Tensor im2col(const at::Tensor& x, const ConvGeometry& g) {
  return at::im2col(x, g.kernel, g.dilation, g.padding, g.stride).contiguous();
}

void check_conv_winners(const char* op, const at::Tensor& winners, int64_t b_count, int64_t l_count) {
  TORCH_CHECK(winners.dim() == 2 && winners.size(0) == b_count &&
                  (winners.size(1) == 1 || winners.size(1) == l_count) && winners.scalar_type() == at::kLong,
              op, ": winners must be a (", b_count, ", 1) or (", b_count, ", ", l_count, ") int64 tensor; got ",
              winners.sizes(), " ", winners.scalar_type());
}

at::Tensor som_mask_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& winners, const at::Tensor& kept, const at::Tensor& values,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool relu) {
  const char* op = "som_mask_conv2d";
  const ConvGeometry geo = conv_geometry(op, x, weight, stride, padding, dilation);
  const int64_t b_count = x.size(0), c_count = weight.size(0), l_count = geo.out_h * geo.out_w;
  const int64_t dp = weight.size(1) * weight.size(2) * weight.size(3);
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_mask_conv2d", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team =
        genkernels::cpu::team_size(std::min(b_count, threads_for(b_count * l_count * (tab.width * dp + c_count))));
    genkernels::cpu::SoloScope solo(team <= 1);
    const at::Tensor cols = im2col(x, geo);
    const at::Tensor w_c = weight.reshape({c_count, dp}).contiguous(), winners_c = winners.contiguous();
    const at::Tensor b_c = has_bias ? bias->contiguous() : at::Tensor();
    const ConvArgs<T> a{cols.const_data_ptr<T>(), w_c.const_data_ptr<T>(), has_bias ? b_c.const_data_ptr<T>() : nullptr,
                        winners_c.const_data_ptr<int64_t>(), b_count, dp, l_count, c_count, winners.size(1), relu};
    std::vector<GroupScratch<T>> scratch(team);
    if (a.p_count > 1) {
      for (auto& s : scratch) s.size(l_count, kept.size(0), dp, tab.width);
    }
    T* o = out.mutable_data_ptr<T>();
    genkernels::cpu::parallel_chunks(b_count, team, [&](int64_t b, int slot) {
      conv_forward_image(a, tab, b, scratch[slot], o);
    });
  });
  return out;
}

// One image's backward: the masked gradients of its kept outputs, its columns' gradients
// (when grad_cols is not null) and its chunk's sums of grad_W and grad_b (when sums).
template <typename T>
void conv_backward_image(const ConvArgs<T>& a, const KeptTable<T>& tab, int64_t b, const T* grad, const T* out,
                         T* grad_cols, bool sums, ChannelPartials<T>& partials, int64_t chunk,
                         GroupScratch<T>& scratch) {
  const int64_t l_count = a.l_count, dp = a.dp;
  const T* cols = a.cols + b * dp * l_count;
  const int64_t* wn = a.winners + b * a.p_count;
  const T* gb = grad + b * a.c_count * l_count;
  const T* ob = out + b * a.c_count * l_count;
  T* gcols = grad_cols ? grad_cols + b * dp * l_count : nullptr;
  if (a.p_count == 1) {
    const int64_t w = wn[0], n_kept = tab.count[w];
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    T* g = scratch.vals.data();  // (n_kept, L)
    for (int64_t s = 0; s < n_kept; ++s) {
      const T* gr = gb + ch[s] * l_count;
      const T* orow = ob + ch[s] * l_count;
      for (int64_t p = 0; p < l_count; ++p) g[s * l_count + p] = masked_grad(gr[p], ms[s], orow[p], a.relu);
    }
    if (gcols) group_grad_cols(a.weight, dp, ch, n_kept, g, l_count, l_count, gcols, l_count);
    if (sums) group_weight_sums(cols, l_count, l_count, dp, ch, n_kept, g, l_count, partials, chunk);
    return;
  }
  const int64_t k_nodes = static_cast<int64_t>(tab.count.size());
  scratch.group(wn, l_count, k_nodes);
  for (int64_t w = 0; w < k_nodes; ++w) {
    const int64_t g0 = scratch.start[w], n = scratch.start[w + 1] - g0;
    if (n == 0) continue;
    const int64_t* pos = scratch.order.data() + g0;
    const int64_t n_kept = tab.count[w];
    if (n_kept == 0) {
      if (gcols) {
        for (int64_t j = 0; j < dp; ++j) {
          for (int64_t i = 0; i < n; ++i) gcols[j * l_count + pos[i]] = T(0);
        }
      }
      continue;
    }
    const int64_t* ch = tab.chans(w);
    const T* ms = tab.mask(w);
    T* g = scratch.vals.data();  // (n_kept, n)
    for (int64_t s = 0; s < n_kept; ++s) {
      const T* gr = gb + ch[s] * l_count;
      const T* orow = ob + ch[s] * l_count;
      for (int64_t i = 0; i < n; ++i) g[s * n + i] = masked_grad(gr[pos[i]], ms[s], orow[pos[i]], a.relu);
    }
    if (gcols) {
      T* gc = scratch.grad_cols.data();
      group_grad_cols(a.weight, dp, ch, n_kept, g, n, n, gc, n);
      for (int64_t j = 0; j < dp; ++j) {
        for (int64_t i = 0; i < n; ++i) gcols[j * l_count + pos[i]] = gc[j * n + i];
      }
    }
    if (sums) {
      scratch.gather(cols, l_count, dp, pos, n);
      group_weight_sums(scratch.cols.data(), n, n, dp, ch, n_kept, g, n, partials, chunk);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_mask_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& winners,
    const at::Tensor& kept, const at::Tensor& values, const at::Tensor& out, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, std::array<bool, 3> output_mask) {
  const char* op = "som_mask_conv2d_backward";
  const ConvGeometry geo = conv_geometry(op, x, weight, stride, padding, dilation);
  const int64_t b_count = x.size(0), c_count = weight.size(0), l_count = geo.out_h * geo.out_w;
  const int64_t dp = weight.size(1) * weight.size(2) * weight.size(3);
  check_conv_winners(op, winners, b_count, l_count);
  const std::vector<int64_t> out_shape{b_count, c_count, geo.out_h, geo.out_w};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape) && out.sizes() == at::IntArrayRef(out_shape), op,
              ": grad and out must be ", at::IntArrayRef(out_shape), "; got ", grad.sizes(), " and ", out.sizes());
  const bool want_x = output_mask[0], want_w = output_mask[1], want_b = output_mask[2];
  at::Tensor grad_x = want_x ? at::Tensor() : at::empty({0}, x.options());
  at::Tensor grad_w = want_w ? at::empty(weight.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_b = want_b ? at::empty({c_count}, x.options()) : at::empty({0}, x.options());
  if (b_count == 0) {
    if (want_x) grad_x = at::zeros(x.sizes(), x.options());
    grad_w.zero_();
    grad_b.zero_();
    return {grad_x, grad_w, grad_b};
  }
  check_tables(op, kept, values);
  check_winners(op, winners, kept.size(0));
  const at::ScalarType dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES(dtype, "som_mask_conv2d_backward", [&] {
    using T = scalar_t;
    const KeptTable<T> tab = kept_table<T>(op, kept, values, c_count);
    const int team = genkernels::cpu::team_size(
        std::min(b_count, threads_for(2 * b_count * l_count * std::max<int64_t>(tab.width, 1) * dp)));
    genkernels::cpu::SoloScope solo(team <= 1);
    const at::Tensor cols = im2col(x, geo);
    const at::Tensor w_c = weight.reshape({c_count, dp}).contiguous(), winners_c = winners.contiguous();
    const at::Tensor grad_c = grad.to(dtype).contiguous(), out_c = out.to(dtype).contiguous();
    const ConvArgs<T> a{cols.const_data_ptr<T>(), w_c.const_data_ptr<T>(), nullptr,
                        winners_c.const_data_ptr<int64_t>(), b_count, dp, l_count, c_count, winners.size(1), relu};
    at::Tensor grad_cols = want_x ? at::empty({b_count, dp, l_count}, x.options()) : at::Tensor();
    const bool sums = want_w || want_b;
    std::vector<T> gw_scratch, gb_scratch;
    T* gw = want_w ? grad_w.mutable_data_ptr<T>() : nullptr;
    T* gbias = want_b ? grad_b.mutable_data_ptr<T>() : nullptr;
    if (sums && !want_w) {
      gw_scratch.resize(c_count * dp);
      gw = gw_scratch.data();
    }
    if (sums && !want_b) {
      gb_scratch.resize(c_count);
      gbias = gb_scratch.data();
    }
    const int64_t images = chunk_size(b_count, 1);
    const int64_t chunks = (b_count + images - 1) / images;
    ChannelPartials<T> partials(sums ? chunks : 1, c_count, dp, gw, gbias);
    std::vector<GroupScratch<T>> scratch(team);
    for (auto& s : scratch) {
      if (a.p_count > 1) {
        s.size(l_count, kept.size(0), dp, tab.width);
      } else {
        s.vals.resize(std::max<int64_t>(tab.width, 1) * l_count);
      }
    }
    T* gcols = want_x ? grad_cols.mutable_data_ptr<T>() : nullptr;
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t i, int slot) {
      for (int64_t b = i * images, b1 = std::min(b_count, (i + 1) * images); b < b1; ++b) {
        conv_backward_image(a, tab, b, grad_c.const_data_ptr<T>(), out_c.const_data_ptr<T>(), gcols, sums, partials,
                            i, scratch[slot]);
      }
    });
    if (sums) partials.reduce(team);
    if (want_x) {
      grad_x = at::col2im(grad_cols, {x.size(2), x.size(3)}, geo.kernel, geo.dilation, geo.padding, geo.stride);
    }
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
