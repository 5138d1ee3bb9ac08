// CPU kernels of the masked linear layer (schemas in csrc/genkernels.cpp, spec in
// genkernels/autoregressive/linear_reference.py): out = x (W * M)^T + b with M[j, i] = 1 for
// i < prefix[j]. MADE's masks are block lower-triangular once its units are sorted by degree,
// and the kernels skip the zero blocks:
//
//   forward   the rows of W in tiles (tile_size); every row of tile t sees the columns
//             [0, lo_t) (its smallest prefix) and none from hi_t (its largest) on: one product
//             with W itself over [0, lo_t), one with a masked copy of the block [lo_t, hi_t)
//             (the diagonal block of a triangle);
//   grad_x    grad (W * M): the columns in tiles; tile [i0, i1) gathers only from the rows
//             that see column i0 -- the rows from the last one short of i1 on see all of it
//             (W itself), those between through a masked copy of their block;
//   grad_W    (grad^T x) * M over the rows in tiles, each the first hi_t columns, then each
//             row's tail zeroed;
//   grad_b    grad summed over the batch.
//
// With ascending prefixes (a triangle) a product costs about half the dense one plus the
// tiles' diagonal blocks (1 / (2 x tiles) of it); with any other prefixes the result is the
// same, only the savings shrink. Every product is an at::mm on views (BLAS, its own threads);
// W is never copied whole (a fresh D x D buffer's page faults cost as much as the product at
// D = 4096), only the masked blocks, into one buffer. Arithmetic in the inputs' dtype (float
// or double; the Python side converts half and bfloat16).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/parallel_region.h"

namespace genkernels::autoregressive::cpu {
namespace {

// Rows (columns) of W per tile: an eighth of the layer, 128 to 256 (one run, 1 thread, fw+bw
// at D = 1024, B = 256 against F.linear(x, w * mask): 64-row tiles 1.50x, 128 1.68x, 256
// 1.40x; BLAS runs narrower products below its peak, wider tiles waste more of the diagonal).
constexpr int64_t kMinTile = 128, kMaxTile = 256;

// Multiply-adds below which a product runs on the calling thread alone (BLAS and ATen glue:
// beside a busy process a team started for a small product waits a time slice for its second
// thread -- MADE on the digits, 50 x 64 -> 128 layers, trained 20x slower on 2 threads than
// on 1 beside one busy process). Above it, the products get BLAS's threads unless the
// machine's contention back-off (parallel_region.h) says one thread.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 21;

bool solo(int64_t work) {
  return genkernels::cpu::team_size(std::max<int64_t>(1, work / kMinWorkPerThread)) <= 1;
}

int64_t tile_size(int64_t n) { return std::clamp<int64_t>((n / 8 + 63) / 64 * 64, kMinTile, kMaxTile); }

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

// The prefixes as a vector, and each row tile's smallest and largest: rows [r0, r1) of a tile
// all see the columns [0, lo), some of [lo, hi), none from hi on.
struct Tiles {
  int64_t size;
  std::vector<int64_t> prefix, lo, hi;
  explicit Tiles(const at::Tensor& p) : size(tile_size(p.numel())) {
    const at::Tensor c = p.contiguous();
    prefix.assign(c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + c.numel());
    for (size_t r0 = 0; r0 < prefix.size(); r0 += size) {
      const auto [mn, mx] = std::minmax_element(prefix.begin() + r0, prefix.begin() + std::min(prefix.size(), r0 + size));
      lo.push_back(*mn);
      hi.push_back(*mx);
    }
  }
};

// Zero row j of the (rows, cols) matrix t from column prefix[j] - col0 on (prefix[j]: of the
// row's global index row0 + j; col0: the matrix's first global column), one memset a row.
void zero_tails(at::Tensor& t, const std::vector<int64_t>& prefix, int64_t row0, int64_t col0) {
  const int64_t ld = t.stride(0), width = t.element_size(), cols = t.size(1);
  auto* base = static_cast<char*>(t.data_ptr());
  for (int64_t j = 0; j < t.size(0); ++j) {
    const int64_t from = std::clamp<int64_t>(prefix[row0 + j] - col0, 0, cols);
    if (from < cols) std::memset(base + (j * ld + from) * width, 0, (cols - from) * width);
  }
}

// W[r0:r1, c0:c1] * M[r0:r1, c0:c1] copied into the front of `buffer` (the block where the
// mask is neither all ones nor all zeros: the diagonal blocks of a triangle, small).
at::Tensor masked_block(const at::Tensor& weight, const std::vector<int64_t>& prefix, int64_t r0, int64_t r1,
                        int64_t c0, int64_t c1, at::Tensor& buffer) {
  const int64_t n = (r1 - r0) * (c1 - c0);
  if (buffer.numel() < n) buffer = at::empty({n}, weight.options());
  at::Tensor block = buffer.narrow(0, 0, n).view({r1 - r0, c1 - c0});
  block.copy_(weight.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0));
  zero_tails(block, prefix, r0, c0);
  return block;
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
  // a fresh buffer even for one row: expand(...).contiguous() of a (1, d_out) view is the
  // bias itself, and the products below accumulate into `out` in place
  at::Tensor out = bias.has_value() ? bias->unsqueeze(0).expand({b, d_out}).clone(at::MemoryFormat::Contiguous)
                                    : at::zeros({b, d_out}, x.options());
  if (b == 0 || d_out == 0) return out;
  const Tiles tiles(prefix);
  const genkernels::cpu::SoloScope scope(solo(b * x.size(1) * d_out));
  at::Tensor buffer = at::empty({0}, weight.options());
  for (size_t t = 0; t < tiles.lo.size(); ++t) {
    const int64_t r0 = static_cast<int64_t>(t) * tiles.size, rows = std::min(tiles.size, d_out - r0);
    const int64_t lo = tiles.lo[t], hi = tiles.hi[t];
    at::Tensor o = out.narrow(1, r0, rows);
    if (lo > 0) o.addmm_(x.narrow(1, 0, lo), weight.narrow(0, r0, rows).narrow(1, 0, lo).t());
    if (hi > lo)
      o.addmm_(x.narrow(1, lo, hi - lo), masked_block(weight, tiles.prefix, r0, r0 + rows, lo, hi, buffer).t());
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
  at::Tensor grad_w = output_mask[1] ? at::empty({d_out, d_in}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_b = output_mask[2] ? g.sum(0) : at::empty({0}, x.options());
  if (b == 0 || d_out == 0 || d_in == 0) {
    if (output_mask[1]) grad_w.zero_();
    return {grad_x, grad_w, grad_b};
  }
  const Tiles tiles(prefix);
  const genkernels::cpu::SoloScope scope(solo(b * d_in * d_out));
  if (output_mask[0]) {
    at::Tensor buffer = at::empty({0}, weight.options());
    const int64_t width = tile_size(d_in);
    for (int64_t i0 = 0; i0 < d_in; i0 += width) {
      const int64_t cols = std::min(width, d_in - i0), i1 = i0 + cols;
      // rows before `first` see none of the columns [i0, i1) (the first row that sees
      // column i0 -- exact for any prefixes), rows from `full` on all of them
      int64_t first = 0, full = d_out;
      while (first < d_out && tiles.prefix[first] <= i0) ++first;
      while (full > first && tiles.prefix[full - 1] >= i1) --full;
      at::Tensor o = grad_x.narrow(1, i0, cols);
      if (full < d_out) o.addmm_(g.narrow(1, full, d_out - full), weight.narrow(0, full, d_out - full).narrow(1, i0, cols));
      if (full > first)
        o.addmm_(g.narrow(1, first, full - first), masked_block(weight, tiles.prefix, first, full, i0, i1, buffer));
    }
  }
  if (output_mask[1]) {
    for (size_t t = 0; t < tiles.lo.size(); ++t) {
      const int64_t r0 = static_cast<int64_t>(t) * tiles.size, rows = std::min(tiles.size, d_out - r0);
      const int64_t p = tiles.hi[t];
      if (p == 0) continue;
      at::Tensor o = grad_w.narrow(0, r0, rows).narrow(1, 0, p);
      at::mm_out(o, g.narrow(1, r0, rows).t(), x.narrow(1, 0, p));
    }
    // each row from its prefix on: the tiles' triangles and every column no tile wrote
    zero_tails(grad_w, tiles.prefix, 0, 0);
  }
  return {grad_x, grad_w, grad_b};
}

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}

}  // namespace genkernels::autoregressive::cpu
