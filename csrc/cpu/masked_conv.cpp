// CPU kernels of the masked convolution (schemas in csrc/genkernels.cpp, spec in
// genkernels/autoregressive/conv_reference.py): an implicit GEMM over the taps the mask
// keeps, forward and backward. A masked tap is never visited and a channel group a rule
// excludes never multiplied: a 7x7 type-A mask costs 24 tap products, not 49.
//
// The layout. The input is copied once into a zero-padded buffer X (Cin, L): each image's
// rows are `rows` = top + H + bottom long and `stride` = W + pad apart, where top / bottom
// are the rows the kept taps reach above / below the centre and pad the columns they reach
// either side. One pad of zeros between rows serves as the right border of a row and the
// left border of the next, so a tap (dy, dx) is one constant offset o = dy stride + dx in
// the flattened buffer, for every pixel of every image:
//
//     O[:, u] = bias + sum_t W_t X[:, lead + u + o_t]          (u: the flattened positions)
//
// with W_t the (Cout, Cin) slice of tap t: each tap is one GEMM of W_t with a contiguous
// window of X, a (Cin, n) matrix of row stride L -- BLAS reads it in place. Positions that
// are padding (the row ends, the rows above and below an image) compute values nobody
// reads: (rows x stride) / (H x W) of the work, 1.23x for a 7x7 kernel on 28 x 28 images,
// against the 49 / 24 a type-A mask saves. A rule on the channel groups (STRICT, INCLUSIVE)
// takes one GEMM per output group g over the input channels [0, hi_g) it sees.
//
// Backward, from G (Cout, positions): the gradient placed in the same layout, zero at
// the padding positions (so the padding's garbage never contributes):
//
//     grad W_t = sum_u G[:, u] X[:, lead + u + o_t]^T     (taps x fixed column chunks, in
//                                                          parallel; partials added in chunk order)
//     grad X[:, v] = sum_t W_t^T G[:, v - o_t]             (a gather: column chunks in parallel)
//     grad bias = sum of G
//
// Raster masks (PixelCNN's type A / B, any rule at the centre) take another route: the two
// dense convolutions of the cropped kernels (see "raster masks, cropped" below).
//
// Threads: the column chunks (and the taps of grad W) are shared by a team of
// parallel_region.h; each GEMM is a single-threaded at::mm on a thread's chunk (BLAS runs
// serially inside the region). The chunks depend on the shapes only, so the result does not
// depend on the number of threads. Arithmetic in the inputs' dtype (float or double; the
// Python side converts half and bfloat16 to float). Memory: the padded input and output
// ((Cin + Cout) x positions), plus the gradient's copy and (taps x chunks) Cout x Cin
// partials in the backward.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/parallel_region.h"

namespace genkernels::autoregressive::cpu {
namespace {

constexpr int64_t kOff = 0, kFull = 1, kStrict = 2, kInclusive = 3;
// A thread's share of the multiply-adds below which a second thread does not pay.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 21;
// Bytes of a chunk's stacked windows (taps x channels x n columns, a thread's scratch): about
// a core's L2, where the GEMM reads them right after the copy (forward, B=16 28x28 7x7 type A,
// 128 channels, 1 thread: 256 KiB 1.65x dense conv2d, 1 MiB 1.50x, 4 MiB 1.46x).
constexpr int64_t kChunkBytes = int64_t(256) << 10;
constexpr int64_t kMinChunk = 64, kMaxChunk = 4096;
// Partial sums of grad W (each over a fixed share of the chunks, added in order).
constexpr int64_t kWeightLanes = 8;
// Kept taps from which a raster mask's grad W runs as the cropped convolutions' (below that
// the tap products were faster: 3x3 type B, 64 channels, B = 16, 28 x 28: fw + bw 1.15x the
// dense convolution with the tap products, 0.78x with the cropped weight gradient; 5x5 type B
// and 7x7 type A: 1.41-1.47x with it, 1.13-1.45x without).
constexpr int64_t kCroppedWeightTaps = 8;

int64_t threads_for(int64_t work) { return std::max<int64_t>(1, work / kMinWorkPerThread); }

struct Tap {
  int64_t index;   // ky * kw + kx
  int64_t dy, dx;  // offset from the centre, dilation included
  int64_t rule;
};

struct Geometry {
  int64_t batch, cin, cout, h, w, kh, kw, groups;
  int64_t top = 0, bottom = 0, pad = 0;  // rows above / below, columns either side
  int64_t stride = 0, rows = 0;          // padded row length, padded rows per image
  int64_t lead = 0, tail = 0;            // zeros before and after the positions
  int64_t min_offset = 0, max_offset = 0;
  std::vector<Tap> taps;                 // the kept taps, row-major

  int64_t positions() const { return batch * rows * stride; }
  int64_t full_taps() const {
    return std::count_if(taps.begin(), taps.end(), [](const Tap& t) { return t.rule == kFull; });
  }
  int64_t offset(const Tap& t) const { return t.dy * stride + t.dx; }
  int64_t co() const { return cout / groups; }
  int64_t ci() const { return cin / groups; }
  // input channels [0, hi) that output group g sees through rule
  int64_t seen(int64_t rule, int64_t g) const {
    return rule == kFull ? cin : rule == kStrict ? g * ci() : (g + 1) * ci();
  }
};

Geometry geometry(const char* op, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef rules,
                  int64_t groups, int64_t dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be (B, Cin, H, W); got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4, op, ": weight must be (Cout, Cin, kh, kw); got ", weight.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
                   "; got ", weight.scalar_type());
  Geometry g{x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), weight.size(2), weight.size(3), groups};
  TORCH_CHECK_VALUE(weight.size(1) == g.cin, op, ": weight has ", weight.size(1), " input channels but x has ",
                    g.cin);
  TORCH_CHECK_VALUE(g.kh % 2 == 1 && g.kw % 2 == 1, op, ": the kernel's sides must be odd (a centre tap); got ",
                    g.kh, " x ", g.kw);
  TORCH_CHECK_VALUE(static_cast<int64_t>(rules.size()) == g.kh * g.kw, op, ": rules must hold one rule per tap (",
                    g.kh * g.kw, "); got ", rules.size());
  TORCH_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1; got ", dilation);
  TORCH_CHECK_VALUE(groups >= 1, op, ": channel_groups must be >= 1; got ", groups);
  bool grouped = false;
  for (int64_t t = 0; t < g.kh * g.kw; ++t) {
    const int64_t rule = rules[t];
    TORCH_CHECK_VALUE(rule >= kOff && rule <= kInclusive, op, ": rule ", rule, " of tap ", t,
                      " is not one of 0 (off), 1 (full), 2 (strict), 3 (inclusive)");
    if (rule == kOff) continue;
    grouped |= rule != kFull;
    g.taps.push_back({t, (t / g.kw - g.kh / 2) * dilation, (t % g.kw - g.kw / 2) * dilation, rule});
  }
  if (grouped) {
    TORCH_CHECK_VALUE(g.cin % groups == 0 && g.cout % groups == 0, op, ": ", groups,
                      " channel groups must divide the input and output channels; got Cin ", g.cin, ", Cout ",
                      g.cout);
  }
  for (const Tap& t : g.taps) {
    g.top = std::max(g.top, -t.dy);
    g.bottom = std::max(g.bottom, t.dy);
    g.pad = std::max(g.pad, std::abs(t.dx));
  }
  g.stride = g.w + g.pad;
  g.rows = g.top + g.h + g.bottom;
  for (const Tap& t : g.taps) {
    g.min_offset = std::min(g.min_offset, g.offset(t));
    g.max_offset = std::max(g.max_offset, g.offset(t));
  }
  g.lead = -g.min_offset;
  g.tail = g.max_offset;
  return g;
}

// Columns per chunk: the stacked windows (full taps x channels x n) in about kChunkBytes,
// a multiple of 16.
int64_t chunk_columns(const Geometry& g, int64_t channels, int64_t elem_bytes) {
  const int64_t n = kChunkBytes / (elem_bytes * std::max<int64_t>(g.full_taps() * channels, 1));
  return std::clamp<int64_t>(n / 16 * 16, kMinChunk, kMaxChunk);
}

// The T windows src[:, start_i : start_i + cols] (K rows each) stacked into the thread's
// scratch (T K, n), copied row by row: (T K, cols).
template <typename T>
at::Tensor stack_windows(const at::Tensor& src, const std::vector<int64_t>& starts, int64_t cols,
                         at::Tensor& scratch) {
  const int64_t k = src.size(0), ld = src.stride(0), n = scratch.size(1);
  const T* s = src.const_data_ptr<T>();
  T* d = scratch.mutable_data_ptr<T>();
  for (size_t i = 0; i < starts.size(); ++i) {
    for (int64_t r = 0; r < k; ++r) std::memcpy(d + (i * k + r) * n, s + r * ld + starts[i], cols * sizeof(T));
  }
  return scratch.narrow(0, 0, static_cast<int64_t>(starts.size()) * k).narrow(1, 0, cols);
}

at::Tensor stacked(const at::Tensor& src, const std::vector<int64_t>& starts, int64_t cols, at::Tensor& scratch) {
  if (starts.size() == 1) return src.narrow(1, starts[0], cols);  // one window: read in place
  return src.scalar_type() == at::kDouble ? stack_windows<double>(src, starts, cols, scratch)
                                          : stack_windows<float>(src, starts, cols, scratch);
}

// o (M, cols) += a (M, T K) @ the T windows stacked: one GEMM whose inner dimension runs
// over every tap.
void stacked_product(at::Tensor& o, const at::Tensor& a, const at::Tensor& src, const std::vector<int64_t>& starts,
                     at::Tensor& scratch) {
  if (starts.empty()) return;
  o.addmm_(a, stacked(src, starts, o.size(1), scratch));
}

// Chunks of the positions that hold pixels: each image's rows [top, top + H) of the padded
// layout (H x stride positions), cut into pieces of at most n columns; images smaller than
// a chunk go several to a chunk, which then also covers the padding rows between them
// (computed, never read; the gradient there is zero).
struct Chunks {
  int64_t n, span, image, per_image = 1, images = 1;
  Chunks(const Geometry& g, int64_t n_) : n(n_), span(g.h * g.stride), image(g.rows * g.stride) {
    if (image <= n) {
      images = std::max<int64_t>(1, n / image);
    } else {
      per_image = (span + n - 1) / n;
    }
  }
  int64_t count(const Geometry& g) const {
    return images > 1 ? (g.batch + images - 1) / images : g.batch * per_image;
  }
  // chunk c: its first position and its columns (at most n)
  std::pair<int64_t, int64_t> operator()(const Geometry& g, int64_t c) const {
    if (images > 1) {
      const int64_t b0 = c * images, b1 = std::min(g.batch, b0 + images);
      const int64_t first = b0 * image + g.top * g.stride;
      return {first, (b1 - 1 - b0) * image + span};
    }
    const int64_t b = c / per_image, first = (c % per_image) * n;
    return {b * image + g.top * g.stride + first, std::min(n, span - first)};
  }
};

// The (Cout, B, rows, stride) view of positions [0, U) of a (C, ...) buffer starting at `at`,
// narrowed to the image pixels: (C, B, H, W).
at::Tensor pixels(const at::Tensor& buffer, const Geometry& g, int64_t at) {
  return buffer.narrow(1, at, g.positions())
      .view({buffer.size(0), g.batch, g.rows, g.stride})
      .narrow(2, g.top, g.h)
      .narrow(3, 0, g.w);
}

// x (B, Cin, H, W) into the zero-padded (Cin, lead + U + tail) layout.
at::Tensor padded_input(const at::Tensor& x, const Geometry& g) {
  at::Tensor buffer = at::zeros({g.cin, g.lead + g.positions() + g.tail}, x.options());
  pixels(buffer, g, g.lead).copy_(x.permute({1, 0, 2, 3}));
  return buffer;
}

// The FULL taps' weight slices side by side: (Cout, Tf Cin) for the forward, or transposed
// per tap, (Cin, Tf Cout), for the gradient of x.
at::Tensor stacked_weights(const at::Tensor& wt, const Geometry& g, bool transposed) {
  std::vector<int64_t> index;
  for (size_t i = 0; i < g.taps.size(); ++i) {
    if (g.taps[i].rule == kFull) index.push_back(static_cast<int64_t>(i));
  }
  const at::Tensor full = wt.index_select(0, at::tensor(index, wt.options().dtype(at::kLong)));
  return transposed ? full.permute({2, 0, 1}).reshape({g.cin, -1}) : full.permute({1, 0, 2}).reshape({g.cout, -1});
}

// The kept taps' weight slices, (T, Cout, Cin) contiguous.
at::Tensor tap_weights(const at::Tensor& weight, const Geometry& g) {
  std::vector<int64_t> index;
  for (const Tap& t : g.taps) index.push_back(t.index);
  const at::Tensor rows = at::tensor(index, weight.options().dtype(at::kLong));
  return weight.permute({2, 3, 0, 1}).reshape({g.kh * g.kw, g.cout, g.cin}).index_select(0, rows).contiguous();
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t cout) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout, op, ": bias must be (", cout, ",); got ",
                    bias->sizes());
  TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": bias must have x's dtype ", x.scalar_type(),
                   "; got ", bias->scalar_type());
}

}  // namespace

namespace {

// The forward's products: O (Cout, positions) in the padded layout, bias included (the
// pixels(O, g, 0) view holds the output); g.taps non-empty, g.cin > 0.
at::Tensor conv_padded(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const Geometry& g) {
  const at::Tensor xb = padded_input(x, g);
  const at::Tensor wt = tap_weights(weight, g);
  const at::Tensor wcat = stacked_weights(wt, g, false);
  const int64_t positions = g.positions();
  at::Tensor ob = at::empty({g.cout, positions}, x.options());
  const Chunks chunking(g, chunk_columns(g, g.cin, x.element_size()));
  const int64_t chunks = chunking.count(g), n = chunking.n;
  const int64_t work = positions * g.cout * g.cin * static_cast<int64_t>(g.taps.size());
  const int team = genkernels::cpu::team_size(std::min(chunks, threads_for(work)));
  genkernels::cpu::SoloScope solo(team <= 1);
  const std::optional<at::Tensor> bias_col =
      bias.has_value() ? std::optional<at::Tensor>(bias->view({g.cout, 1})) : std::nullopt;
  std::vector<at::Tensor> scratch(team);
  genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t c, int slot) {
    const auto [u0, cols] = chunking(g, c);
    if (!scratch[slot].defined()) scratch[slot] = at::empty({g.full_taps() * g.cin, n}, x.options());
    at::Tensor o = ob.narrow(1, u0, cols);
    if (bias_col.has_value()) {
      o.copy_(bias_col->expand({g.cout, cols}));
    } else {
      o.zero_();
    }
    std::vector<int64_t> starts;
    for (const Tap& t : g.taps) {
      if (t.rule == kFull) starts.push_back(g.lead + u0 + g.offset(t));
    }
    stacked_product(o, wcat, xb, starts, scratch[slot]);
    for (size_t i = 0; i < g.taps.size(); ++i) {
      const Tap& t = g.taps[i];
      if (t.rule == kFull) continue;
      const at::Tensor window = xb.narrow(1, g.lead + u0 + g.offset(t), cols);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t hi = g.seen(t.rule, grp);
        if (hi == 0) continue;
        o.narrow(0, grp * g.co(), g.co()).addmm_(wt[i].narrow(0, grp * g.co(), g.co()).narrow(1, 0, hi),
                                                 window.narrow(0, 0, hi));
      }
    }
  });
  return ob;
}

// The gate of one image: out (Cout / 2, H, W) = tanh(a) * sigmoid(b) of pre (Cout, H, W),
// whose channels are `groups` blocks of [a | b]; `tmp` a (Cout / (2 groups), H, W) scratch.
void gate_image(at::Tensor out, const at::Tensor& pre, int64_t groups, at::Tensor& tmp) {
  const int64_t q = pre.size(0) / (2 * groups);
  for (int64_t grp = 0; grp < groups; ++grp) {
    at::Tensor o = out.narrow(0, grp * q, q);
    at::tanh_out(o, pre.narrow(0, 2 * grp * q, q));
    at::sigmoid_out(tmp, pre.narrow(0, (2 * grp + 1) * q, q));
    o.mul_(tmp);
  }
}

// 1 x 1 kernels (a Gated PixelCNN's link, its h_out and head layers): the single centre
// tap's products straight on the NCHW tensors, image by image -- out[b] (Cout, HW) =
// W (Cout, Cin) x[b] (Cin, HW) per channel group over the input channels it sees --, no
// padded copies in or out. g.taps holds the one kept tap.
bool is_pointwise(const Geometry& g) { return g.kh == 1 && g.kw == 1 && g.taps.size() == 1; }

at::Tensor pointwise_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const Geometry& g, at::Tensor out) {
  const at::Tensor w2 = weight.reshape({g.cout, g.cin}).contiguous();
  const at::Tensor x3 = x.contiguous().view({g.batch, g.cin, g.h * g.w});
  at::Tensor o3 = out.view({g.batch, g.cout, g.h * g.w});
  const int64_t rule = g.taps[0].rule;
  const int team = genkernels::cpu::team_size(std::min(g.batch, threads_for(x3.numel() * g.cout)));
  genkernels::cpu::SoloScope solo(team <= 1);
  genkernels::cpu::parallel_chunks(g.batch, team, [&](int64_t b, int) {
    at::Tensor ob = o3[b];
    if (bias.has_value()) ob.copy_(bias->view({g.cout, 1}).expand({g.cout, g.h * g.w})); else ob.zero_();
    for (int64_t grp = 0; grp < (rule == kFull ? 1 : g.groups); ++grp) {
      const int64_t rows = rule == kFull ? g.cout : g.co(), r0 = grp * rows, hi = g.seen(rule, grp);
      if (hi == 0) continue;
      ob.narrow(0, r0, rows).addmm_(w2.narrow(0, r0, rows).narrow(1, 0, hi), x3[b].narrow(0, 0, hi));
    }
  });
  return out;
}

// Its backward into grad_x / grad_w (zero-initialised, contiguous): grad_x[b] = sum over the
// groups of W^T G[b]; grad W = sum over the images of G[b] x[b]^T, in kWeightLanes lanes of
// images (lane l: images l, l + lanes, ...) added in order -- the same sums on any threads.
void pointwise_backward(const at::Tensor& g_c, const at::Tensor& x, const at::Tensor& weight, const Geometry& g,
                        at::Tensor& grad_x, at::Tensor& grad_w, bool want_x, bool want_w) {
  const int64_t hw = g.h * g.w, rule = g.taps[0].rule, parts = rule == kFull ? 1 : g.groups;
  const at::Tensor w2 = weight.reshape({g.cout, g.cin}).contiguous();
  const at::Tensor x3 = x.contiguous().view({g.batch, g.cin, hw});
  const at::Tensor g3 = g_c.contiguous().view({g.batch, g.cout, hw});
  const int64_t work = g.batch * hw * g.cout * g.cin;
  auto part = [&](int64_t grp) {   // rows [r0, r0 + rows) see the input channels [0, hi)
    const int64_t rows = rule == kFull ? g.cout : g.co();
    return std::array<int64_t, 3>{grp * rows, rows, g.seen(rule, grp)};
  };
  if (want_x) {
    at::Tensor gx3 = grad_x.view({g.batch, g.cin, hw});
    const int team = genkernels::cpu::team_size(std::min(g.batch, threads_for(work)));
    genkernels::cpu::SoloScope solo(team <= 1);
    genkernels::cpu::parallel_chunks(g.batch, team, [&](int64_t b, int) {
      for (int64_t grp = 0; grp < parts; ++grp) {
        const auto [r0, rows, hi] = part(grp);
        if (hi == 0) continue;
        gx3[b].narrow(0, 0, hi).addmm_(w2.narrow(0, r0, rows).narrow(1, 0, hi).t(), g3[b].narrow(0, r0, rows));
      }
    });
  }
  if (want_w) {
    const int64_t lanes = std::min(g.batch, kWeightLanes);
    at::Tensor sums = at::zeros({lanes, g.cout, g.cin}, x.options());
    const int team = genkernels::cpu::team_size(std::min(lanes, threads_for(work)));
    genkernels::cpu::SoloScope solo(team <= 1);
    genkernels::cpu::parallel_chunks(lanes, team, [&](int64_t lane, int) {
      at::Tensor s = sums[lane];
      for (int64_t b = lane; b < g.batch; b += lanes) {
        for (int64_t grp = 0; grp < parts; ++grp) {
          const auto [r0, rows, hi] = part(grp);
          if (hi == 0) continue;
          s.narrow(0, r0, rows).narrow(1, 0, hi).addmm_(g3[b].narrow(0, r0, rows), x3[b].narrow(0, 0, hi).t());
        }
      }
    });
    grad_w.view({g.cout, g.cin}).copy_(sums.sum(0));
  }
}

void check_gate_channels(const char* op, int64_t channels, int64_t groups) {
  TORCH_CHECK_VALUE(groups >= 1 && channels % (2 * groups) == 0, op, ": the ", channels,
                    " channels must split into channel_groups=", groups, " blocks of [a | b] (a multiple of ",
                    2 * groups, ")");
}

// ---------------------------------------------------------------- raster masks, cropped
// PixelCNN's masks (type A / B, any channel-group rule at the centre) keep the rows above the
// centre whole, the centre row's taps left of the centre, and the centre tap by its rule:
// exactly the taps of two dense convolutions of cropped kernels (PixelCNN++'s down- and
// right-shifted convolutions), which torch's convolution (oneDNN) runs faster than the
// tap-by-tap products above (forward + backward 1.07-1.34x, B = 8-16, 28 x 28, 64-256
// channels, one thread). The forward and the input's gradient are single convolutions; the
// weight's gradient (a sum over the batch, which oneDNN orders by its thread count) is taken
// per fixed group of images, each group's by one thread, and the groups' added in order: the
// same bits on any number of threads.
// The masks this route takes: the first `full` rows whole (at most up to the centre row: a
// Gated PixelCNN's vertical stack keeps the rows above the centre, or up to and including
// it), then -- when full stops at the centre row -- that row's taps left of the centre and the
// centre by its rule (`part`: type A / B, the horizontal stack), nothing after.
struct Raster {
  bool ok = false;
  int64_t full = 0;       // leading rows kept whole
  bool part = false;      // the centre row's left taps and centre (raster order) after them
  int64_t centre = kOff;  // the centre tap's rule (with part)
};

Raster raster(const Geometry& g, at::IntArrayRef rules) {
  Raster r;
  const int64_t cy = g.kh / 2, cx = g.kw / 2;
  const auto row_is = [&](int64_t y, int64_t rule) {
    for (int64_t x = 0; x < g.kw; ++x)
      if (rules[y * g.kw + x] != rule) return false;
    return true;
  };
  while (r.full < g.kh && r.full <= cy && row_is(r.full, kFull)) ++r.full;
  int64_t next = r.full;
  if (r.full == cy && !row_is(cy, kOff)) {   // the centre row in raster order
    for (int64_t x = 0; x < g.kw; ++x) {
      const int64_t rule = rules[cy * g.kw + x];
      if ((x < cx && rule != kFull) || (x > cx && rule != kOff)) return r;
    }
    r.part = true;
    r.centre = rules[cy * g.kw + cx];
    next = cy + 1;
  }
  for (int64_t y = next; y < g.kh; ++y)
    if (!row_is(y, kOff)) return r;
  r.ok = (r.full > 0 || r.part) && (g.kh > 1 || g.kw > 1);
  return r;
}

// The centre row's kernel (Cout, Cin, 1, width): the taps left of the centre, and the centre
// itself (unless its rule is off) with the channel groups its rule excludes zeroed.
at::Tensor centre_row(const at::Tensor& weight, const Geometry& g, const Raster& r) {
  const int64_t cx = g.kw / 2, width = cx + (r.centre != kOff);
  at::Tensor w = weight.narrow(2, g.kh / 2, 1).narrow(3, 0, width).contiguous();
  if (r.centre == kStrict || r.centre == kInclusive) {
    at::Tensor centre = w.select(3, cx).select(2, 0);   // (Cout, Cin)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const int64_t hi = g.seen(r.centre, grp);
      if (hi < g.cin) centre.narrow(0, grp * g.co(), g.co()).narrow(1, hi, g.cin - hi).zero_();
    }
  }
  return w;
}

at::Tensor cropped_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const Geometry& g, const Raster& r, int64_t d) {
  const int64_t cy = g.kh / 2, cx = g.kw / 2;
  const std::vector<int64_t> one{1, 1}, zero{0, 0}, dil{d, d};
  at::Tensor out;
  if (r.full > 0) {   // the whole rows: output rows [0, H) of a convolution of x padded above
    const at::Tensor xp = at::constant_pad_nd(x, {cx * d, cx * d, cy * d, 0});
    out = at::conv2d(xp, weight.narrow(2, 0, r.full), bias, one, zero, dil).narrow(2, 0, g.h);
  }
  if (r.part) {   // the centre row: output columns [0, W) of x padded on the left
    const at::Tensor xr = at::constant_pad_nd(x, {cx * d, 0, 0, 0});
    const at::Tensor row = at::conv2d(xr, centre_row(weight, g, r), r.full > 0 ? std::optional<at::Tensor>() : bias,
                                      one, zero, dil)
                               .narrow(3, 0, g.w);
    out = out.defined() ? out + row : row;
  }
  return out.contiguous();
}

// grad x of the two cropped convolutions (their gradients padded back to the convolutions'
// full outputs, the inputs' gradients cropped to x), summed into grad_x.
void cropped_grad_x(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const Geometry& g,
                    const Raster& r, int64_t d, at::Tensor& grad_x) {
  const int64_t cy = g.kh / 2, cx = g.kw / 2;
  if (r.full > 0) {
    const at::Tensor xp = at::constant_pad_nd(x, {cx * d, cx * d, cy * d, 0});
    // its output rows from H on (cy + 1 - full of them, times d): unused
    const at::Tensor go = at::constant_pad_nd(grad, {0, 0, 0, (cy + 1 - r.full) * d});
    const at::Tensor gxp = std::get<0>(at::convolution_backward(go, xp, weight.narrow(2, 0, r.full).contiguous(),
                                                                std::nullopt, {1, 1}, {0, 0}, {d, d}, false, {0, 0},
                                                                1, {true, false, false}));
    grad_x.add_(gxp.narrow(2, cy * d, g.h).narrow(3, cx * d, g.w));
  }
  if (r.part) {
    const at::Tensor wr = centre_row(weight, g, r);
    const int64_t width = wr.size(3);
    const at::Tensor xr = at::constant_pad_nd(x, {cx * d, 0, 0, 0});
    const at::Tensor go = at::constant_pad_nd(grad, {0, (cx - width + 1) * d, 0, 0});
    const at::Tensor gxr = std::get<0>(at::convolution_backward(go, xr, wr, std::nullopt, {1, 1}, {0, 0}, {d, d},
                                                                false, {0, 0}, 1, {true, false, false}));
    grad_x.add_(gxr.narrow(3, cx * d, g.w));
  }
}

// grad W of the two cropped convolutions into grad_w's kept taps (the centre's excluded
// channel groups zero), per fixed group of images (see above).
void cropped_grad_w(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const Geometry& g,
                    const Raster& r, int64_t d, at::Tensor& grad_w) {
  const int64_t cy = g.kh / 2, cx = g.kw / 2, width = r.part ? cx + (r.centre != kOff) : 0;
  const int64_t lanes = std::min<int64_t>(g.batch, kWeightLanes);
  const std::vector<int64_t> one{1, 1}, zero{0, 0}, dil{d, d};
  at::Tensor above = r.full > 0 ? at::empty({lanes, g.cout, g.cin, r.full, g.kw}, x.options()) : at::Tensor();
  at::Tensor row = width > 0 ? at::empty({lanes, g.cout, g.cin, 1, width}, x.options()) : at::Tensor();
  const at::Tensor wa = r.full > 0 ? weight.narrow(2, 0, r.full).contiguous() : at::Tensor();
  const at::Tensor wr = width > 0 ? centre_row(weight, g, r) : at::Tensor();
  const int64_t work = g.batch * g.h * g.w * g.cout * g.cin * static_cast<int64_t>(g.taps.size());
  const int team = genkernels::cpu::team_size(std::min(lanes, threads_for(work)));
  genkernels::cpu::parallel_chunks(lanes, team, [&](int64_t lane, int) {
    const genkernels::cpu::SoloThreads one_thread;   // oneDNN on this thread alone: a fixed order
    const int64_t b0 = lane * g.batch / lanes, nb = (lane + 1) * g.batch / lanes - b0;
    const at::Tensor xs = x.narrow(0, b0, nb), gs = grad.narrow(0, b0, nb);
    if (r.full > 0) {
      const at::Tensor xp = at::constant_pad_nd(xs, {cx * d, cx * d, cy * d, 0});
      const at::Tensor go = at::constant_pad_nd(gs, {0, 0, 0, (cy + 1 - r.full) * d});
      above[lane].copy_(std::get<1>(at::convolution_backward(go, xp, wa, std::nullopt, one, zero, dil, false, zero,
                                                             1, {false, true, false})));
    }
    if (width > 0) {
      const at::Tensor xr = at::constant_pad_nd(xs, {cx * d, 0, 0, 0});
      const at::Tensor go = at::constant_pad_nd(gs, {0, (cx - width + 1) * d, 0, 0});
      row[lane].copy_(std::get<1>(at::convolution_backward(go, xr, wr, std::nullopt, one, zero, dil, false, zero, 1,
                                                           {false, true, false})));
    }
  });
  if (r.full > 0) grad_w.narrow(2, 0, r.full).copy_(above.sum(0));
  if (width > 0) {
    at::Tensor w = grad_w.narrow(2, cy, 1).narrow(3, 0, width);
    w.copy_(row.sum(0));
    if (r.centre == kStrict || r.centre == kInclusive) {
      at::Tensor centre = w.select(3, cx).select(2, 0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t hi = g.seen(r.centre, grp);
        if (hi < g.cin) centre.narrow(0, grp * g.co(), g.co()).narrow(1, hi, g.cin - hi).zero_();
      }
    }
  }
}

}  // namespace

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef rules, int64_t channel_groups, int64_t dilation) {
  constexpr const char* op = "masked_conv2d";
  const Geometry g = geometry(op, x, weight, rules, channel_groups, dilation);
  check_bias(op, bias, x, g.cout);
  at::Tensor out = at::empty({g.batch, g.cout, g.h, g.w}, x.options());
  if (out.numel() == 0) return out;
  if (g.taps.empty() || g.cin == 0) {
    return bias.has_value() ? out.copy_(bias->view({1, g.cout, 1, 1}).expand_as(out)) : out.zero_();
  }
  if (is_pointwise(g)) return pointwise_forward(x, weight, bias, g, out);
  if (const Raster r = raster(g, rules); r.ok) return cropped_forward(x.contiguous(), weight, bias, g, r, dilation);
  out.permute({1, 0, 2, 3}).copy_(pixels(conv_padded(x, weight, bias, g), g, 0));
  return out;
}

// The gated convolution: pre = conv(x) + bias + addend, out = tanh(a) * sigmoid(b) of pre's
// [a | b] channel blocks. The epilogue runs image by image over the products' padded
// buffer: pre's image (read from it, plus the addend's, in one pass) and then its gate
// while the image is in cache -- no separate sum, tanh, sigmoid and product passes over
// the whole batch. Returns (out (B, Cout / 2, H, W), pre (B, Cout, H, W)); pre is what the
// backward needs.
std::tuple<at::Tensor, at::Tensor> masked_conv2d_gated_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           const std::optional<at::Tensor>& addend,
                                                           at::IntArrayRef rules, int64_t channel_groups,
                                                           int64_t dilation) {
  constexpr const char* op = "masked_conv2d_gated";
  const Geometry g = geometry(op, x, weight, rules, channel_groups, dilation);
  check_bias(op, bias, x, g.cout);
  check_gate_channels(op, g.cout, g.groups);
  if (addend.has_value()) {
    TORCH_CHECK_VALUE(addend->dim() == 4 && addend->size(0) == g.batch && addend->size(1) == g.cout &&
                          addend->size(2) == g.h && addend->size(3) == g.w,
                      op, ": addend must be (", g.batch, ", ", g.cout, ", ", g.h, ", ", g.w, "); got ",
                      addend->sizes());
    TORCH_CHECK_TYPE(addend->scalar_type() == x.scalar_type(), op, ": addend must have x's dtype ",
                     x.scalar_type(), "; got ", addend->scalar_type());
  }
  at::Tensor pre = at::empty({g.batch, g.cout, g.h, g.w}, x.options());
  at::Tensor out = at::empty({g.batch, g.cout / 2, g.h, g.w}, x.options());
  if (pre.numel() == 0) return {out, pre};
  at::Tensor ob, cropped;
  if (g.taps.empty() || g.cin == 0) {
    if (bias.has_value()) pre.copy_(bias->view({1, g.cout, 1, 1}).expand_as(pre)); else pre.zero_();
  } else if (const Raster r = raster(g, rules); r.ok) {   // the cropped kernels' convolutions
    cropped = cropped_forward(x.contiguous(), weight, bias, g, r, dilation);
  } else {
    ob = conv_padded(x, weight, bias, g);
  }
  // the products as (Cout, B, H, W)
  const at::Tensor source = ob.defined() ? pixels(ob, g, 0) : cropped.defined() ? cropped.permute({1, 0, 2, 3})
                                                                                : at::Tensor();
  const int64_t q = g.cout / (2 * g.groups);
  const int team = genkernels::cpu::team_size(std::min(g.batch, threads_for(pre.numel() * 16)));
  genkernels::cpu::SoloScope solo(team <= 1);
  std::vector<at::Tensor> scratch(team);
  genkernels::cpu::parallel_chunks(g.batch, team, [&](int64_t b, int slot) {
    if (!scratch[slot].defined()) scratch[slot] = at::empty({q, g.h, g.w}, x.options());
    at::Tensor p = pre[b];
    if (source.defined()) {
      if (addend.has_value()) at::add_out(p, source.select(1, b), (*addend)[b]); else p.copy_(source.select(1, b));
    } else if (addend.has_value()) {
      p.add_((*addend)[b]);
    }
    gate_image(out[b], p, g.groups, scratch[slot]);
  });
  return {out, pre};
}

// The gate's VJP: grad (B, C / 2, H, W) of out = tanh(a) * sigmoid(b) -> grad of pre (B, C,
// H, W): grad sigmoid(b) (1 - tanh(a)^2) on the a channels, grad tanh(a) sigmoid(b)
// (1 - sigmoid(b)) on the b channels; image by image, tanh and sigmoid recomputed in cache.
at::Tensor gate_backward_cpu(const at::Tensor& grad, const at::Tensor& pre, int64_t groups) {
  constexpr const char* op = "gate_backward";
  TORCH_CHECK_VALUE(pre.dim() == 4, op, ": pre must be (B, C, H, W); got ", pre.sizes());
  TORCH_CHECK_TYPE(pre.scalar_type() == at::kFloat || pre.scalar_type() == at::kDouble, op,
                   ": pre must be float32 or float64; got ", pre.scalar_type());
  check_gate_channels(op, pre.size(1), groups);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == pre.size(0) && grad.size(1) * 2 == pre.size(1) &&
                        grad.size(2) == pre.size(2) && grad.size(3) == pre.size(3),
                    op, ": grad must be (", pre.size(0), ", ", pre.size(1) / 2, ", ", pre.size(2), ", ", pre.size(3),
                    "); got ", grad.sizes());
  const at::Tensor gc = grad.to(pre.scalar_type());
  at::Tensor out = at::empty(pre.sizes(), pre.options());
  if (out.numel() == 0) return out;
  const int64_t batch = pre.size(0), q = pre.size(1) / (2 * groups);
  const int team = genkernels::cpu::team_size(std::min(batch, threads_for(pre.numel() * 16)));
  genkernels::cpu::SoloScope solo(team <= 1);
  genkernels::cpu::parallel_chunks(batch, team, [&](int64_t b, int) {
    for (int64_t grp = 0; grp < groups; ++grp) {
      const at::Tensor a = pre[b].narrow(0, 2 * grp * q, q), s = pre[b].narrow(0, (2 * grp + 1) * q, q);
      const at::Tensor gi = gc[b].narrow(0, grp * q, q);
      at::Tensor ga = out[b].narrow(0, 2 * grp * q, q), gs = out[b].narrow(0, (2 * grp + 1) * q, q);
      at::tanh_out(ga, a);                       // t
      at::sigmoid_out(gs, s);                    // sigma
      const at::Tensor t = ga.clone();
      // grad_a = g sigma (1 - t^2); grad_b = g t sigma (1 - sigma)
      ga.mul_(t).neg_().add_(1).mul_(gs).mul_(gi);
      gs.mul_(gs.neg().add_(1)).mul_(t).mul_(gi);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef rules,
    int64_t channel_groups, int64_t dilation, std::array<bool, 3> output_mask) {
  constexpr const char* op = "masked_conv2d_backward";
  const Geometry g = geometry(op, x, weight, rules, channel_groups, dilation);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == g.batch && grad.size(1) == g.cout && grad.size(2) == g.h &&
                        grad.size(3) == g.w,
                    op, ": grad must be (", g.batch, ", ", g.cout, ", ", g.h, ", ", g.w, "); got ", grad.sizes());
  bool want_x = output_mask[0];
  const bool want_w = output_mask[1], want_b = output_mask[2];
  at::Tensor grad_x = want_x ? at::zeros_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor grad_w = want_w ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  const at::Tensor g_c = grad.to(x.scalar_type());
  at::Tensor grad_b = want_b ? g_c.sum({0, 2, 3}) : at::empty({0}, x.options());
  if (grad.numel() == 0 || g.taps.empty() || g.cin == 0 || !(want_x || want_w)) return {grad_x, grad_w, grad_b};
  if (is_pointwise(g)) {
    pointwise_backward(g_c, x, weight, g, grad_x, grad_w, want_x, want_w);
    return {grad_x, grad_w, grad_b};
  }
  if (const Raster r = raster(g, rules); r.ok) {   // the cropped convolutions
    const at::Tensor gc = g_c.contiguous(), xc = x.contiguous();
    if (want_x) cropped_grad_x(gc, xc, weight, g, r, dilation, grad_x);
    if (!want_w) return {grad_x, grad_w, grad_b};
    if (static_cast<int64_t>(g.taps.size()) >= kCroppedWeightTaps) {
      cropped_grad_w(gc, xc, weight, g, r, dilation, grad_w);
      return {grad_x, grad_w, grad_b};
    }
    want_x = false;   // grad x is done: the tap products below make grad W only
  }
  const int64_t positions = g.positions(), taps = static_cast<int64_t>(g.taps.size());
  // G with margins for the gather of grad X: G[u] at column max_offset + u
  const int64_t margin = g.max_offset;
  at::Tensor gb = at::zeros({g.cout, margin + positions - g.min_offset}, x.options());
  pixels(gb, g, margin).copy_(g_c.permute({1, 0, 2, 3}));
  const at::Tensor wt = tap_weights(weight, g);
  const int64_t work = positions * g.cout * g.cin * taps;
  if (want_w) {
    // lanes of chunks: lane l sums chunks l, l + lanes, ... in order into its partials (the
    // full taps' (Cout, Tf Cin) through one GEMM a chunk, the grouped taps' per group); the
    // lanes are added in order: the same sums on any number of threads
    const at::Tensor xb = padded_input(x, g);
    const Chunks chunking(g, chunk_columns(g, g.cin, x.element_size()));
    const int64_t chunks = chunking.count(g), n = chunking.n, full = g.full_taps();
    const int64_t lanes = std::min(chunks, kWeightLanes);
    at::Tensor full_sums = at::zeros({lanes, g.cout, full * g.cin}, x.options());
    at::Tensor group_sums = at::zeros({lanes, taps - full, g.cout, g.cin}, x.options());
    const int team = genkernels::cpu::team_size(std::min(lanes, threads_for(work)));
    genkernels::cpu::SoloScope solo(team <= 1);
    std::vector<at::Tensor> scratch(team);
    genkernels::cpu::parallel_chunks(lanes, team, [&](int64_t lane, int slot) {
      if (!scratch[slot].defined()) scratch[slot] = at::empty({full * g.cin, n}, x.options());
      at::Tensor fs = full_sums[lane], gs = group_sums[lane];
      for (int64_t c = lane; c < chunks; c += lanes) {
        const auto [u0, cols] = chunking(g, c);
        const at::Tensor gu = gb.narrow(1, margin + u0, cols);
        std::vector<int64_t> starts;
        for (const Tap& t : g.taps) {
          if (t.rule == kFull) starts.push_back(g.lead + u0 + g.offset(t));
        }
        if (!starts.empty()) fs.addmm_(gu, stacked(xb, starts, cols, scratch[slot]).t());
        int64_t j = 0;
        for (const Tap& t : g.taps) {
          if (t.rule == kFull) continue;
          const at::Tensor window = xb.narrow(1, g.lead + u0 + g.offset(t), cols);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const int64_t hi = g.seen(t.rule, grp);
            if (hi == 0) continue;
            gs[j].narrow(0, grp * g.co(), g.co()).narrow(1, 0, hi)
                .addmm_(gu.narrow(0, grp * g.co(), g.co()), window.narrow(0, 0, hi).t());
          }
          ++j;
        }
      }
    });
    const at::Tensor fsum = full_sums.sum(0).view({g.cout, full, g.cin});
    const at::Tensor gsum = group_sums.sum(0);
    int64_t f = 0, j = 0;
    for (const Tap& t : g.taps) {
      at::Tensor slot_w = grad_w.select(3, t.index % g.kw).select(2, t.index / g.kw);
      slot_w.copy_(t.rule == kFull ? fsum.select(1, f++) : gsum[j++]);
    }
  }
  if (want_x) {
    const at::Tensor wcat_t = stacked_weights(wt, g, true);
    at::Tensor gxb = at::empty({g.cin, positions}, x.options());
    const Chunks chunking(g, chunk_columns(g, g.cout, x.element_size()));
    const int64_t chunks = chunking.count(g), n = chunking.n;
    const int team = genkernels::cpu::team_size(std::min(chunks, threads_for(work)));
    genkernels::cpu::SoloScope solo(team <= 1);
    std::vector<at::Tensor> scratch(team);
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t c, int slot) {
      const auto [v0, cols] = chunking(g, c);
      if (!scratch[slot].defined()) scratch[slot] = at::empty({g.full_taps() * g.cout, n}, x.options());
      at::Tensor o = gxb.narrow(1, v0, cols);
      o.zero_();
      std::vector<int64_t> starts;
      for (const Tap& t : g.taps) {
        if (t.rule == kFull) starts.push_back(margin + v0 - g.offset(t));
      }
      stacked_product(o, wcat_t, gb, starts, scratch[slot]);
      for (int64_t i = 0; i < taps; ++i) {
        const Tap& t = g.taps[i];
        if (t.rule == kFull) continue;
        const at::Tensor window = gb.narrow(1, margin + v0 - g.offset(t), cols);
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const int64_t hi = g.seen(t.rule, grp);
          if (hi == 0) continue;
          o.narrow(0, 0, hi).addmm_(wt[i].narrow(0, grp * g.co(), g.co()).narrow(1, 0, hi).t(),
                                    window.narrow(0, grp * g.co(), g.co()));
        }
      }
    });
    grad_x.permute({1, 0, 2, 3}).copy_(pixels(gxb, g, 0));
  }
  return {grad_x, grad_w, grad_b};
}

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
  m.impl("masked_conv2d_gated", &masked_conv2d_gated_cpu);
  m.impl("gate_backward", &gate_backward_cpu);
}

}  // namespace genkernels::autoregressive::cpu
