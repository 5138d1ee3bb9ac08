// CPU kernels of the masked linear layer (schemas in csrc/genkernels.cpp, spec in
// genkernels/autoregressive/linear_reference.py): out = x (W * M)^T + b with M[j, i] = 1 for
// i < prefix[j]. MADE's masks are block lower-triangular once its units are sorted by degree,
// and the kernels skip the zero blocks:
//
//   forward   the rows of W in tiles (tile_size); tile t multiplies only the first p_t columns
//             (p_t: the largest prefix in the tile) of x and of the masked weight W * M
//             (zeros inside the tile's triangle);
//   grad_x    grad (W * M): the columns in tiles; tile [i0, i1) gathers only from the
//             rows from the first one whose prefix exceeds i0 (with prefixes ascending, every
//             row after it too; otherwise the masked zeros keep the sum exact);
//   grad_W    (grad^T x) * M over the rows in tiles, each the first p_t columns;
//   grad_b    grad summed over the batch.
//
// With ascending prefixes (a triangle) a product costs about half the dense one plus the
// tiles' diagonal blocks (1/ (2 x tiles) of it); with unsorted prefixes the result is the
// same, only the savings shrink. Every product is an at::mm on views (BLAS, its own
// threads), the masked weight a copy of W with each row's tail zeroed. Arithmetic in the inputs' dtype (float or
// double; the Python side converts half and bfloat16).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace genkernels::autoregressive::cpu {
namespace {

// Rows (columns) of W per tile: a sixteenth of the layer, at least kMinTile, at most
// kMaxTile (the diagonal blocks' waste is 1 / (2 x tiles) of a triangle; a tile's product
// must be large enough for BLAS's blocking: 64-row tiles of a 4096-wide layer ran slower
// than the dense product).
constexpr int64_t kMinTile = 64, kMaxTile = 512;

int64_t tile_size(int64_t n) { return std::clamp<int64_t>((n / 16 + 63) / 64 * 64, kMinTile, kMaxTile); }

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& prefix) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be (B, Din); got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be (Dout, Din); got ", weight.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
                   "; got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight has ", weight.size(1), " input features but x has ",
                    x.size(1));
  TORCH_CHECK_TYPE(prefix.scalar_type() == at::kLong, op, ": prefix must be int64; got ", prefix.scalar_type());
  TORCH_CHECK_VALUE(prefix.dim() == 1 && prefix.size(0) == weight.size(0), op, ": prefix must be (",
                    weight.size(0), ",); got ", prefix.sizes());
  TORCH_CHECK_VALUE(prefix.device().is_cpu(), op, ": prefix must be on the CPU");
  if (prefix.numel() > 0) {
    const auto [lo, hi] = at::aminmax(prefix);
    TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && hi.item<int64_t>() <= x.size(1), op,
                      ": prefix must lie in [0, ", x.size(1), "]; got [", lo.item<int64_t>(), ", ",
                      hi.item<int64_t>(), "]");
  }
}

// The prefixes as a vector, and each row tile's largest.
struct Tiles {
  int64_t size;
  std::vector<int64_t> prefix, tile_max;
  explicit Tiles(const at::Tensor& p) : size(tile_size(p.numel())) {
    const at::Tensor c = p.contiguous();
    prefix.assign(c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + c.numel());
    for (size_t r0 = 0; r0 < prefix.size(); r0 += size) {
      const size_t r1 = std::min(prefix.size(), r0 + size);
      tile_max.push_back(*std::max_element(prefix.begin() + r0, prefix.begin() + r1));
    }
  }
};

// Zero row j of the (rows, cols) matrix t from column prefix[j] on, up to `upto` (one
// memset a row: no mask tensor).
void zero_tails(at::Tensor& t, const std::vector<int64_t>& prefix, int64_t upto) {
  const int64_t ld = t.stride(0), width = t.element_size();
  auto* base = static_cast<char*>(t.data_ptr());
  for (size_t j = 0; j < prefix.size(); ++j) {
    const int64_t end = std::min(upto, t.size(1));
    if (prefix[j] < end) std::memset(base + (j * ld + prefix[j]) * width, 0, (end - prefix[j]) * width);
  }
}

// W * M: a copy of W with each row's tail zeroed.
at::Tensor masked_weight(const at::Tensor& weight, const Tiles& tiles) {
  at::Tensor wm = weight.contiguous().clone();
  zero_tails(wm, tiles.prefix, wm.size(1));
  return wm;
}

}  // namespace

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& prefix) {
  constexpr const char* op = "masked_linear";
  check_inputs(op, x, weight, prefix);
  const int64_t b = x.size(0), d_out = weight.size(0);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == d_out, op, ": bias must be (", d_out, ",); got ",
                      bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": bias must have x's dtype");
  }
  at::Tensor out = bias.has_value() ? bias->unsqueeze(0).expand({b, d_out}).contiguous()
                                    : at::zeros({b, d_out}, x.options());
  if (b == 0 || d_out == 0) return out;
  const Tiles tiles(prefix);
  const at::Tensor wm = masked_weight(weight, tiles);
  for (size_t t = 0; t < tiles.tile_max.size(); ++t) {
    const int64_t r0 = static_cast<int64_t>(t) * tiles.size, rows = std::min(tiles.size, d_out - r0);
    const int64_t p = tiles.tile_max[t];
    if (p == 0) continue;
    at::Tensor o = out.narrow(1, r0, rows);
    o.addmm_(x.narrow(1, 0, p), wm.narrow(0, r0, rows).narrow(1, 0, p).t());
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& prefix,
                                                                          std::array<bool, 3> output_mask) {
  constexpr const char* op = "masked_linear_backward";
  check_inputs(op, x, weight, prefix);
  const int64_t b = x.size(0), d_in = x.size(1), d_out = weight.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == b && grad.size(1) == d_out, op, ": grad must be (", b, ", ",
                    d_out, "); got ", grad.sizes());
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = output_mask[0] ? at::zeros({b, d_in}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = output_mask[1] ? at::zeros({d_out, d_in}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_b = output_mask[2] ? g.sum(0) : at::empty({0}, x.options());
  if (b == 0 || d_out == 0 || d_in == 0) return {grad_x, grad_w, grad_b};
  const Tiles tiles(prefix);
  if (output_mask[0]) {
    const at::Tensor wm = masked_weight(weight, tiles);
    const int64_t width = tile_size(d_in);
    for (int64_t i0 = 0; i0 < d_in; i0 += width) {
      const int64_t cols = std::min(width, d_in - i0);
      // the first row that sees column i0; with ascending prefixes every later row does too
      int64_t r = 0;
      while (r < d_out && tiles.prefix[r] <= i0) ++r;
      if (r == d_out) continue;
      at::Tensor o = grad_x.narrow(1, i0, cols);
      o.addmm_(g.narrow(1, r, d_out - r), wm.narrow(0, r, d_out - r).narrow(1, i0, cols));
    }
  }
  if (output_mask[1]) {
    for (size_t t = 0; t < tiles.tile_max.size(); ++t) {
      const int64_t r0 = static_cast<int64_t>(t) * tiles.size, rows = std::min(tiles.size, d_out - r0);
      const int64_t p = tiles.tile_max[t];
      if (p == 0) continue;
      at::Tensor o = grad_w.narrow(0, r0, rows).narrow(1, 0, p);
      at::mm_out(o, g.narrow(1, r0, rows).t(), x.narrow(1, 0, p));
    }
    zero_tails(grad_w, tiles.prefix, d_in);   // the tiles' triangles beyond each row's prefix
  }
  return {grad_x, grad_w, grad_b};
}

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}

}  // namespace genkernels::autoregressive::cpu
