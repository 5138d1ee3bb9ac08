// CPU kernels of the fused masked MLP (schemas in csrc/genkernels.cpp, spec in
// genkernels/autoregressive/mlp_reference.py): MADE's whole network in one call,
//
//   h_0 = x,  h_l = relu(h_{l-1} (W_l * M_l)^T + b_l)  (l < L),
//   out = h_{L-1} (W_L * M_L)^T + b_L  [+ x (S * M_S)^T],   M[j, i] = 1 for i < prefix[j],
//
// and its backward. A chain of per-layer ops over a small network (MADE's 2 -> 64 -> 64 -> 4
// layers in a flow) pays per layer and per direction a dispatch, an allocation, a pass over
// memory for the bias, another for the ReLU and one for its backward -- more than the
// products themselves. Here the batch goes through every layer in chunks of rows that stay
// in cache: the bias is written and the ReLU applied on the chunk the product has just
// made, and the backward runs the chunk back through the layers with the ReLU's gate applied
// to the chunk's gradient in place. Only the hidden activations (needed by the backward) are
// written whole. Products are BLAS calls on the chunk (the Fortran sgemm_/dgemm_ torch's BLAS
// exports: no dispatch, no tensors; where this torch exports none, at::mm_out on views) by
// runs of output units, each skipping the inputs no unit of the run sees (with MADE's units
// sorted by degree, the upper blocks of a block-triangular mask: about half); products with
// a dimension under 16 are plain loops. The masked weights are copied once per call (W * M:
// MADE-sized layers; the layer op masked_linear, which never copies W, is the one for wide
// layers). Arithmetic in the inputs' dtype (float or double).
//
// Threads: the chunks are shared among the team (parallel_region.h) when the work pays for
// a second thread. The backward's weight and bias gradients are summed per group of
// consecutive chunks, the groups fixed by the work alone (never by the thread count, the
// busy-machine back-off or which thread ran what), then added in group order: a result
// reproduces bit for bit at any torch.set_num_threads.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/simd.h"

namespace genkernels::autoregressive::cpu {
namespace {

// Column-major BLAS: C (m x n, ldc) = alpha op(A) op(B) + beta C. Weak: where the torch
// library exports no Fortran BLAS, gemm() below takes the ATen path.
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                       const int*, const double*, const int*, const double*, double*, const int*)
    __attribute__((weak));

// GENKERNELS_NO_FORTRAN_BLAS set in the environment: the ATen path even where the Fortran
// symbols exist (how the tests reach the path a torch without them takes).
bool fortran_blas_disabled() {
  static const bool disabled = std::getenv("GENKERNELS_NO_FORTRAN_BLAS") != nullptr;
  return disabled;
}

// C = op(A) op(B) + beta C, column-major, op = transpose where t_x; beta 0 or 1.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == T(0))
      for (int64_t j = 0; j < n; ++j) std::fill(c + j * ldc, c + j * ldc + m, T(0));
    return;
  }
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ilda = int(lda), ildb = int(ldb), ildc = int(ldc);
  const T one(1);
  if constexpr (std::is_same_v<T, float>) {
    if (&sgemm_ != nullptr && !fortran_blas_disabled())
      return sgemm_(&cta, &ctb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &beta, c, &ildc);
  } else {
    if (&dgemm_ != nullptr && !fortran_blas_disabled())
      return dgemm_(&cta, &ctb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &beta, c, &ildc);
  }
  // the ATen path: a column-major matrix is the row-major view of its transpose, and
  // C^T (n x m) = op(B)^T op(A)^T
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor ra = at::from_blob(const_cast<T*>(a), {ta ? m : k, ta ? k : m}, {lda, 1}, opts);
  const at::Tensor rb = at::from_blob(const_cast<T*>(b), {tb ? k : n, tb ? n : k}, {ldb, 1}, opts);
  at::Tensor rc = at::from_blob(c, {n, m}, {ldc, 1}, opts);
  const at::Tensor lhs = tb ? rb.t() : rb, rhs = ta ? ra.t() : ra;
  if (beta == T(0)) {
    at::mm_out(rc, lhs, rhs);
  } else {
    rc.addmm_(lhs, rhs);
  }
}

// Rows per chunk: about 64 KiB of the widest layer's activations (the chunk's input and
// output of a layer then sit in L2 together), 16 to 256 rows.
constexpr int64_t kChunkBytes = int64_t(256) << 10;
// Multiply-adds a thread must get before a second one is started (as masked_linear.cpp).
constexpr int64_t kMinWorkPerThread = int64_t(1) << 21;
// The backward's groups of chunks (each with its own gradient sums) at most.
constexpr int64_t kMaxGroups = 8;

// A run of a layer's output units [j0, j1) that sees only its first kk inputs (the largest
// prefix among them): the BLAS products of that run skip the columns from kk on -- with
// MADE's units sorted by degree the mask is block triangular and this skips about half.
struct Tile {
  int64_t j0, j1, kk;
};

struct Net {
  int64_t layers;                  // L
  std::vector<std::vector<Tile>> tiles;   // per layer
  std::vector<Tile> skip_tiles;
  std::vector<int64_t> width;      // D_0 .. D_L
  std::vector<at::Tensor> masked;  // W_l * M_l, contiguous (D_l, D_{l-1})
  std::vector<at::Tensor> masked_t;  // its transpose, contiguous (D_{l-1}, D_l), for the loops: undefined
                                     // where both dimensions take BLAS
  at::Tensor skip, skip_t;         // S * M_S (D_L, D_0) and its transpose (as masked_t), or undefined
};

void check_prefix(const char* op, const char* what, const at::Tensor& prefix, int64_t out, int64_t in) {
  TORCH_CHECK_TYPE(prefix.scalar_type() == at::kLong, op, ": ", what, " must be int64; got ", prefix.scalar_type());
  TORCH_CHECK_VALUE(prefix.dim() == 1 && prefix.size(0) == out, op, ": ", what, " must be (", out, ",); got ",
                    prefix.sizes());
  TORCH_CHECK_VALUE(prefix.device().is_cpu(), op, ": ", what, " must be on the CPU");
}

// Zero row j of the (rows, cols) contiguous matrix t from column prefix[j] on.
void zero_tails(at::Tensor& t, const at::Tensor& prefix) {
  const at::Tensor p = prefix.contiguous();
  const int64_t* pp = p.const_data_ptr<int64_t>();
  const int64_t cols = t.size(1), width = t.element_size();
  auto* base = static_cast<char*>(t.data_ptr());
  for (int64_t j = 0; j < t.size(0); ++j)
    std::memset(base + (j * cols + pp[j]) * width, 0, (cols - pp[j]) * width);
}

// W * M contiguous: W itself where every prefix is full (a dense layer: no copy when W is
// contiguous), else a fresh copy with each row's tail zeroed (the prefixes are checked
// against [0, D_in] here, on the values the kernel uses).
at::Tensor masked_copy(const char* op, const at::Tensor& weight, const at::Tensor& prefix) {
  const at::Tensor p = prefix.contiguous();
  const int64_t cols = weight.size(1);
  const int64_t* pp = p.const_data_ptr<int64_t>();
  bool full = true;
  for (int64_t j = 0; j < p.numel(); ++j) {
    TORCH_CHECK_VALUE(pp[j] >= 0 && pp[j] <= cols, op, ": prefixes must lie in [0, ", cols, "]; got ", pp[j]);
    full = full && pp[j] == cols;
  }
  if (full) return weight.contiguous();
  at::Tensor w = weight.contiguous().clone();
  zero_tails(w, p);
  return w;
}

// Products below this width in any dimension run as plain loops: BLAS's small-matrix paths
// take 25 us for a 256 x 64 x 2 product (a MADE's first or last layer on 2-D data), the
// loops about 1 us.
constexpr int64_t kBlasMin = 16;

// The runs of a layer's (n, k) outputs for its BLAS products: a quarter of the outputs each
// (16 to 128), neighbours with the same reach merged (full prefixes: one run, one product).
std::vector<Tile> make_tiles(const at::Tensor& prefix, int64_t n, int64_t k) {
  if (!(n >= kBlasMin && k >= kBlasMin)) return {{0, n, k}};
  const at::Tensor p = prefix.contiguous();
  const int64_t* pp = p.const_data_ptr<int64_t>();
  const int64_t width = std::clamp<int64_t>(n / 4, kBlasMin, 128);
  std::vector<Tile> tiles;
  for (int64_t j0 = 0; j0 < n; j0 += width) {
    const int64_t j1 = std::min(n, j0 + width);
    const int64_t kk = std::clamp<int64_t>(*std::max_element(pp + j0, pp + j1), 0, k);
    if (!tiles.empty() && tiles.back().kk == kk) {
      tiles.back().j1 = j1;
    } else {
      tiles.push_back({j0, j1, kk});
    }
  }
  return tiles;
}

// w^T contiguous where a product of w runs as loops (a dimension under kBlasMin), else
// undefined (the BLAS products read w alone).
at::Tensor transpose_for_loops(const at::Tensor& w) {
  return (w.size(0) >= kBlasMin && w.size(1) >= kBlasMin) ? at::Tensor() : w.t().contiguous();
}

// t's data, or nullptr for an undefined t
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

Net build(const char* op, const at::Tensor& x, at::TensorList weights, at::TensorList prefixes,
          const std::optional<at::Tensor>& skip_weight, const std::optional<at::Tensor>& skip_prefix) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be (B, D0); got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK_VALUE(!weights.empty(), op, ": weights must hold at least one layer");
  TORCH_CHECK_VALUE(prefixes.size() == weights.size(), op, ": one prefix per layer: got ", prefixes.size(),
                    " prefixes for ", weights.size(), " weights");
  Net net;
  net.layers = static_cast<int64_t>(weights.size());
  net.width.push_back(x.size(1));
  for (int64_t l = 0; l < net.layers; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == net.width.back(), op, ": weights[", l, "] must be (D", l + 1,
                      ", ", net.width.back(), "); got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": weights[", l, "] must have x's dtype ",
                     x.scalar_type(), "; got ", w.scalar_type());
    check_prefix(op, "prefixes", prefixes[l], w.size(0), w.size(1));
    net.masked.push_back(masked_copy(op, w, prefixes[l]));
    net.masked_t.push_back(transpose_for_loops(net.masked.back()));
    net.tiles.push_back(make_tiles(prefixes[l], w.size(0), w.size(1)));
    net.width.push_back(w.size(0));
  }
  TORCH_CHECK_VALUE(skip_weight.has_value() == skip_prefix.has_value(), op,
                    ": skip_weight and skip_prefix come together");
  if (skip_weight.has_value()) {
    TORCH_CHECK_VALUE(skip_weight->dim() == 2 && skip_weight->size(0) == net.width.back() &&
                          skip_weight->size(1) == x.size(1),
                      op, ": skip_weight must be (", net.width.back(), ", ", x.size(1), "); got ", skip_weight->sizes());
    TORCH_CHECK_TYPE(skip_weight->scalar_type() == x.scalar_type(), op, ": skip_weight must have x's dtype");
    check_prefix(op, "skip_prefix", *skip_prefix, skip_weight->size(0), skip_weight->size(1));
    net.skip = masked_copy(op, *skip_weight, *skip_prefix);
    net.skip_t = transpose_for_loops(net.skip);
    net.skip_tiles = make_tiles(*skip_prefix, skip_weight->size(0), skip_weight->size(1));
  }
  return net;
}

int64_t chunk_rows(const Net& net, int64_t element_size) {
  const int64_t widest = *std::max_element(net.width.begin(), net.width.end());
  return std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(1, widest * element_size), 16, 1024);
}

int64_t work(const Net& net, int64_t batch) {
  int64_t macs = 0;
  for (int64_t l = 0; l < net.layers; ++l) macs += net.width[l] * net.width[l + 1];
  return batch * macs;
}

// One AVX2 register of T (8 floats or 4 doubles): the loops below keep their sums in these,
// as GCC vectors, so each output is loaded and stored once per product rather than once per
// multiply-add.
template <typename T>
constexpr int64_t kVecLanes = 32 / sizeof(T);
template <typename T>
using vec_t = genkernels::cpu::simd_t<T, kVecLanes<T>>;

template <typename T>
inline vec_t<T> vload(const T* p) {
  return genkernels::cpu::simd_load<vec_t<T>>(p);
}
using genkernels::cpu::simd_store;

template <typename T>
inline T vsum(vec_t<T> v) {
  T s(0);
  for (int64_t l = 0; l < kVecLanes<T>; ++l) s += v[l];
  return s;
}

// D (rows x n, ldd) += A (rows x k, lda) Bt, Bt (k x n) contiguous, for a short k (a first
// layer on few inputs): per row, the outputs in registers two vectors at a time, each
// input's row of Bt added into them.
template <typename T>
void product_short_k(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* bt, T* d, int64_t ldd) {
  constexpr int64_t L = kVecLanes<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict ar = a + r * lda;
    T* __restrict dr = d + r * ldd;
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      vec_t<T> s0 = vload(dr + j), s1 = vload(dr + j + L);
      for (int64_t i = 0; i < k; ++i) {
        s0 += ar[i] * vload(bt + i * n + j);
        s1 += ar[i] * vload(bt + i * n + j + L);
      }
      simd_store(dr + j, s0);
      simd_store(dr + j + L, s1);
    }
    for (; j + L <= n; j += L) {
      vec_t<T> s0 = vload(dr + j);
      for (int64_t i = 0; i < k; ++i) s0 += ar[i] * vload(bt + i * n + j);
      simd_store(dr + j, s0);
    }
    for (; j < n; ++j) {
      T s = dr[j];
      for (int64_t i = 0; i < k; ++i) s += ar[i] * bt[i * n + j];
      dr[j] = s;
    }
  }
}

// D (rows x n, ldd) += A (rows x k, lda) B^T, B (n x k) contiguous, for a short n (a last
// layer to few outputs): per row, four outputs' dot products at a time in vector partial
// sums along k (a fifth-to-last output past n repeats a valid row of B and is not written).
template <typename T>
void product_short_n(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, T* d, int64_t ldd) {
  constexpr int64_t L = kVecLanes<T>;
  for (int64_t j0 = 0; j0 < n; j0 += 4) {
    const int64_t m = std::min<int64_t>(4, n - j0);
    const T* __restrict b0 = b + j0 * k;
    const T* __restrict b1 = b + (j0 + std::min<int64_t>(1, m - 1)) * k;
    const T* __restrict b2 = b + (j0 + std::min<int64_t>(2, m - 1)) * k;
    const T* __restrict b3 = b + (j0 + std::min<int64_t>(3, m - 1)) * k;
    for (int64_t r = 0; r < rows; ++r) {
      const T* __restrict ar = a + r * lda;
      vec_t<T> s0{}, s1{}, s2{}, s3{};
      int64_t i = 0;
      for (; i + L <= k; i += L) {
        const vec_t<T> v = vload(ar + i);
        s0 += v * vload(b0 + i);
        s1 += v * vload(b1 + i);
        s2 += v * vload(b2 + i);
        s3 += v * vload(b3 + i);
      }
      T t[4] = {vsum<T>(s0), vsum<T>(s1), vsum<T>(s2), vsum<T>(s3)};
      for (; i < k; ++i) {
        t[0] += ar[i] * b0[i];
        t[1] += ar[i] * b1[i];
        t[2] += ar[i] * b2[i];
        t[3] += ar[i] * b3[i];
      }
      for (int64_t q = 0; q < m; ++q) d[r * ldd + j0 + q] += t[q];
    }
  }
}

// C (n x k, contiguous) += A^T B, A (rows x n, lda), B (rows x k, ldb), vectorised along k:
// per output row j, blocks of four vectors of C held in registers over all the rows.
template <typename T>
void product_tn(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c) {
  constexpr int64_t L = kVecLanes<T>;
  for (int64_t j = 0; j < n; ++j) {
    T* __restrict cj = c + j * k;
    int64_t i = 0;
    for (; i + 4 * L <= k; i += 4 * L) {
      vec_t<T> s0 = vload(cj + i), s1 = vload(cj + i + L), s2 = vload(cj + i + 2 * L), s3 = vload(cj + i + 3 * L);
      for (int64_t r = 0; r < rows; ++r) {
        const T v = a[r * lda + j];
        const T* __restrict br = b + r * ldb + i;
        s0 += v * vload(br);
        s1 += v * vload(br + L);
        s2 += v * vload(br + 2 * L);
        s3 += v * vload(br + 3 * L);
      }
      simd_store(cj + i, s0);
      simd_store(cj + i + L, s1);
      simd_store(cj + i + 2 * L, s2);
      simd_store(cj + i + 3 * L, s3);
    }
    for (; i + L <= k; i += L) {
      vec_t<T> s0 = vload(cj + i);
      for (int64_t r = 0; r < rows; ++r) s0 += a[r * lda + j] * vload(b + r * ldb + i);
      simd_store(cj + i, s0);
    }
    for (; i < k; ++i) {
      T s = cj[i];
      for (int64_t r = 0; r < rows; ++r) s += a[r * lda + j] * b[r * ldb + i];
      cj[i] = s;
    }
  }
}

// D (rows x n, ldd) += A (rows x k, lda) B^T, with B (n x k) and Bt = B^T (k x n) both
// contiguous (the loops run along the longer of n and k).
template <typename T>
void product_abt(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, const T* bt, T* d,
                 int64_t ldd, const std::vector<Tile>* tiles = nullptr) {
  if (rows == 0 || n == 0 || k == 0) return;
  if (n >= kBlasMin && k >= kBlasMin) {   // column-major: D^T = B A^T, B's rows by tile
    if (tiles == nullptr) return gemm<T>(true, false, n, rows, k, b, k, a, lda, T(1), d, ldd);
    for (const Tile& t : *tiles)
      gemm<T>(true, false, t.j1 - t.j0, rows, t.kk, b + t.j0 * k, k, a, lda, T(1), d + t.j0, ldd);
  } else if (n >= k) {
    product_short_k<T>(rows, n, k, a, lda, bt, d, ldd);
  } else {
    product_short_n<T>(rows, n, k, a, lda, b, d, ldd);
  }
}

// D (rows x k, ldd) += G (rows x n, ldg) (W * M), W * M (n x k) and its transpose both
// contiguous: the BLAS path by W's row tiles (each reaching only its first kk columns).
template <typename T>
void product_ab(int64_t rows, int64_t n, int64_t k, const T* g, int64_t ldg, const T* w, const T* wt, T* d,
                int64_t ldd, const std::vector<Tile>& tiles) {
  if (rows == 0 || n == 0 || k == 0) return;
  if (n >= kBlasMin && k >= kBlasMin) {   // column-major: D^T[:kk] += W[j0:j1, :kk]^T G[:, j0:j1]^T
    for (const Tile& t : tiles)
      gemm<T>(false, false, t.kk, rows, t.j1 - t.j0, w + t.j0 * k, k, g + t.j0, ldg, T(1), d, ldd);
  } else {
    product_abt<T>(rows, k, n, g, ldg, wt, w, d, ldd);
  }
}

// Whether product_atb accumulates an (n x k) product transposed.
bool transposed_acc(int64_t n, int64_t k) { return !(n >= kBlasMin && k >= kBlasMin) && k < n; }

// C (n x k) += A^T B, A (rows x n, lda), B (rows x k, ldb); Ct (k x n) is where the loops
// accumulate instead when k < n (the transposed layout keeps them along the longer side):
// the caller adds Ct^T into C at the end.
template <typename T>
void product_atb(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, T* ct,
                 const std::vector<Tile>& tiles) {
  if (rows == 0 || n == 0 || k == 0) return;
  if (n >= kBlasMin && k >= kBlasMin) {   // column-major: C^T = B^T A, C's rows by tile
    for (const Tile& t : tiles)
      gemm<T>(false, true, t.kk, t.j1 - t.j0, rows, b, ldb, a + t.j0, lda, T(1), c + t.j0 * k, k);
  } else if (!transposed_acc(n, k)) {
    product_tn<T>(rows, n, k, a, lda, b, ldb, c);
  } else {
    product_tn<T>(rows, k, n, b, ldb, a, lda, ct);
  }
}

template <typename T>
void forward_rows(const Net& net, const T* x, const std::vector<at::Tensor>& biases, std::vector<at::Tensor>& hidden,
                  T* out, int64_t r0, int64_t r1) {
  const int64_t rows = r1 - r0, d0 = net.width[0];
  const T* in = x + r0 * d0;
  int64_t ld_in = d0;
  for (int64_t l = 0; l < net.layers; ++l) {
    const int64_t n = net.width[l + 1], k = net.width[l];
    const bool last = l == net.layers - 1;
    T* dst = last ? out + r0 * n : hidden[l].data_ptr<T>() + r0 * n;
    const T* b = biases[l].const_data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * n, b, n * sizeof(T));
    product_abt<T>(rows, n, k, in, ld_in, net.masked[l].const_data_ptr<T>(), data_or_null<T>(net.masked_t[l]), dst,
                   n, &net.tiles[l]);
    if (!last)
      for (int64_t i = 0; i < rows * n; ++i) dst[i] = dst[i] > T(0) ? dst[i] : T(0);
    in = dst;
    ld_in = n;
  }
  if (net.skip.defined()) {
    const int64_t n = net.width.back();
    product_abt<T>(rows, n, d0, x + r0 * d0, d0, net.skip.const_data_ptr<T>(), data_or_null<T>(net.skip_t),
                   out + r0 * n, n, &net.skip_tiles);
  }
}

// Per group of chunks: the weight, bias and skip gradients of its chunks, and two scratch
// gradients of a chunk (the current layer's and the one below).
template <typename T>
struct Slot {
  std::vector<at::Tensor> gw, gw_t, gb;   // gw_t: product_atb's transposed accumulators
  at::Tensor gs, gs_t;
  std::vector<T> g_cur, g_next;
};

template <typename T>
void backward_rows(const Net& net, const T* grad, const T* x, const std::vector<at::Tensor>& hidden, T* grad_x,
                   Slot<T>& s, int64_t r0, int64_t r1) {
  const int64_t rows = r1 - r0, d0 = net.width[0], dl = net.width.back();
  const T* g = grad + r0 * dl;   // the current layer's output gradient (rows x D_l)
  int64_t ld_g = dl;
  for (int64_t l = net.layers - 1; l >= 0; --l) {
    const int64_t n = net.width[l + 1], k = net.width[l];
    const T* in = l == 0 ? x + r0 * d0 : hidden[l - 1].const_data_ptr<T>() + r0 * k;
    product_atb<T>(rows, n, k, g, ld_g, in, k, s.gw[l].template data_ptr<T>(), s.gw_t[l].template data_ptr<T>(),
                   net.tiles[l]);
    T* __restrict gb = s.gb[l].template data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* __restrict gr = g + r * ld_g;
      for (int64_t j = 0; j < n; ++j) gb[j] += gr[j];
    }
    if (l > 0) {   // the gradient of h_{l-1}: g (W_l * M_l), gated by h_{l-1} > 0
      T* below = (g == s.g_cur.data()) ? s.g_next.data() : s.g_cur.data();
      std::fill(below, below + rows * k, T(0));
      product_ab<T>(rows, n, k, g, ld_g, net.masked[l].const_data_ptr<T>(), data_or_null<T>(net.masked_t[l]), below,
                    k, net.tiles[l]);
      for (int64_t i = 0; i < rows * k; ++i) below[i] = in[i] > T(0) ? below[i] : T(0);   // a blend, no branch
      g = below;
      ld_g = k;
    } else if (grad_x != nullptr) {
      T* gx = grad_x + r0 * d0;
      std::fill(gx, gx + rows * d0, T(0));
      product_ab<T>(rows, n, k, g, ld_g, net.masked[0].const_data_ptr<T>(), data_or_null<T>(net.masked_t[0]), gx, d0,
                    net.tiles[0]);
    }
  }
  if (net.skip.defined()) {
    const T* go = grad + r0 * dl;
    product_atb<T>(rows, dl, d0, go, dl, x + r0 * d0, d0, s.gs.template data_ptr<T>(), s.gs_t.template data_ptr<T>(),
                   net.skip_tiles);
    if (grad_x != nullptr)   // grad_x += go (S * M_S)
      product_ab<T>(rows, dl, d0, go, dl, net.skip.const_data_ptr<T>(), data_or_null<T>(net.skip_t),
                    grad_x + r0 * d0, d0, net.skip_tiles);
  }
}


}  // namespace

std::tuple<at::Tensor, std::vector<at::Tensor>> masked_mlp_cpu(const at::Tensor& x, at::TensorList weights,
                                                               at::TensorList biases, at::TensorList prefixes,
                                                               const std::optional<at::Tensor>& skip_weight,
                                                               const std::optional<at::Tensor>& skip_prefix) {
  constexpr const char* op = "masked_mlp";
  const Net net = build(op, x, weights, prefixes, skip_weight, skip_prefix);
  TORCH_CHECK_VALUE(biases.size() == weights.size(), op, ": one bias per layer: got ", biases.size(), " biases for ",
                    weights.size(), " weights");
  std::vector<at::Tensor> b;
  for (int64_t l = 0; l < net.layers; ++l) {
    TORCH_CHECK_VALUE(biases[l].dim() == 1 && biases[l].size(0) == net.width[l + 1], op, ": biases[", l,
                      "] must be (", net.width[l + 1], ",); got ", biases[l].sizes());
    TORCH_CHECK_TYPE(biases[l].scalar_type() == x.scalar_type(), op, ": biases[", l, "] must have x's dtype");
    b.push_back(biases[l].contiguous());
  }
  const int64_t batch = x.size(0);
  const at::Tensor xc = x.contiguous();
  std::vector<at::Tensor> hidden;
  for (int64_t l = 0; l + 1 < net.layers; ++l) hidden.push_back(at::empty({batch, net.width[l + 1]}, x.options()));
  at::Tensor out = at::empty({batch, net.width.back()}, x.options());
  const int64_t rows = chunk_rows(net, x.element_size()), chunks = (batch + rows - 1) / rows;
  const int team = genkernels::cpu::team_size(std::min<int64_t>(chunks, work(net, batch) / kMinWorkPerThread));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), op, [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t c, int) {
      forward_rows<scalar_t>(net, xp, b, hidden, op_, c * rows, std::min(batch, (c + 1) * rows));
    });
  });
  return {out, hidden};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> masked_mlp_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, at::TensorList hidden, at::TensorList weights,
    at::TensorList prefixes, const std::optional<at::Tensor>& skip_weight, const std::optional<at::Tensor>& skip_prefix,
    bool need_x) {
  constexpr const char* op = "masked_mlp_backward";
  const Net net = build(op, x, weights, prefixes, skip_weight, skip_prefix);
  const int64_t batch = x.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == batch && grad.size(1) == net.width.back(), op,
                    ": grad must be (", batch, ", ", net.width.back(), "); got ", grad.sizes());
  TORCH_CHECK_VALUE(static_cast<int64_t>(hidden.size()) == net.layers - 1, op, ": hidden must hold ",
                    net.layers - 1, " activations; got ", hidden.size());
  std::vector<at::Tensor> h;
  for (int64_t l = 0; l + 1 < net.layers; ++l) {
    TORCH_CHECK_VALUE(hidden[l].dim() == 2 && hidden[l].size(0) == batch && hidden[l].size(1) == net.width[l + 1],
                      op, ": hidden[", l, "] must be (", batch, ", ", net.width[l + 1], "); got ", hidden[l].sizes());
    TORCH_CHECK_TYPE(hidden[l].scalar_type() == x.scalar_type(), op, ": hidden[", l, "] must have x's dtype");
    h.push_back(hidden[l].contiguous());
  }
  const at::Tensor g = grad.to(x.scalar_type()).contiguous(), xc = x.contiguous();
  const int64_t rows = chunk_rows(net, x.element_size()), chunks = (batch + rows - 1) / rows;
  // groups: twice the forward's products (the weight and the input gradients), at most
  // kMaxGroups -- fixed by the work alone, so the sums reproduce at any thread count
  const int64_t groups = std::clamp<int64_t>(2 * work(net, batch) / kMinWorkPerThread, 1,
                                             std::clamp<int64_t>(chunks, 1, kMaxGroups));
  const int team = genkernels::cpu::team_size(groups);
  const int64_t widest = *std::max_element(net.width.begin(), net.width.end());
  at::Tensor grad_x = need_x ? at::empty({batch, net.width[0]}, x.options()) : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w, grad_b;
  at::Tensor grad_s;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), op, [&] {
    std::vector<Slot<scalar_t>> slots(groups);
    for (auto& s : slots) {
      for (int64_t l = 0; l < net.layers; ++l) {
        s.gw.push_back(at::zeros({net.width[l + 1], net.width[l]}, x.options()));
        s.gw_t.push_back(transposed_acc(net.width[l + 1], net.width[l]) ? at::zeros({net.width[l], net.width[l + 1]}, x.options())
                                                                         : at::empty({0}, x.options()));
        s.gb.push_back(at::zeros({net.width[l + 1]}, x.options()));
      }
      if (net.skip.defined()) {
        s.gs = at::zeros({net.width.back(), net.width[0]}, x.options());
        s.gs_t = transposed_acc(net.width.back(), net.width[0]) ? at::zeros({net.width[0], net.width.back()}, x.options())
                                                                : at::empty({0}, x.options());
      }
      s.g_cur.resize(rows * widest);
      s.g_next.resize(rows * widest);
    }
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* gxp = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    genkernels::cpu::parallel_chunks(groups, team, [&](int64_t group, int) {
      // group `group`: the chunks [c0, c1), in order, into its own sums
      const int64_t c0 = group * chunks / groups, c1 = (group + 1) * chunks / groups;
      for (int64_t c = c0; c < c1; ++c)
        backward_rows<scalar_t>(net, gp, xp, h, gxp, slots[group], c * rows, std::min(batch, (c + 1) * rows));
    });
    for (auto& s : slots) {   // the transposed accumulators into the others
      for (int64_t l = 0; l < net.layers; ++l)
        if (s.gw_t[l].numel() > 0) s.gw[l].add_(s.gw_t[l].t());
      if (net.skip.defined() && s.gs_t.numel() > 0) s.gs.add_(s.gs_t.t());
    }
    for (int64_t l = 0; l < net.layers; ++l) {   // the groups' sums, in group order
      for (int64_t t = 1; t < groups; ++t) {
        slots[0].gw[l].add_(slots[t].gw[l]);
        slots[0].gb[l].add_(slots[t].gb[l]);
      }
      zero_tails(slots[0].gw[l], prefixes[l]);
      grad_w.push_back(slots[0].gw[l]);
      grad_b.push_back(slots[0].gb[l]);
    }
    if (net.skip.defined()) {
      for (int64_t t = 1; t < groups; ++t) slots[0].gs.add_(slots[t].gs);
      zero_tails(slots[0].gs, *skip_prefix);
      grad_s = slots[0].gs;
    } else {
      grad_s = at::empty({0}, x.options());
    }
  });
  return {grad_x, grad_w, grad_b, grad_s};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using MlpSignature = std::tuple<at::Tensor, std::vector<at::Tensor>>(const at::Tensor&, at::TensorList, at::TensorList,
                                                                     at::TensorList, const std::optional<at::Tensor>&,
                                                                     const std::optional<at::Tensor>&);
using MlpBackwardSignature = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>(
    const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool);

// The network by differentiable ATen ops (mlp_reference.py's definition): the backward's
// path when a double backward is asked for (create_graph), so second derivatives are exact.
at::Tensor reference_forward(const at::Tensor& x, const variable_list& weights, const variable_list& biases,
                             const variable_list& prefixes, const at::Tensor& skip_weight, const at::Tensor& skip_prefix) {
  auto mask = [](const at::Tensor& prefix, int64_t cols, const at::Tensor& like) {
    return at::arange(cols, prefix.options()).unsqueeze(0).lt(prefix.unsqueeze(1)).to(like.scalar_type());
  };
  at::Tensor h = x;
  for (size_t l = 0; l < weights.size(); ++l) {
    h = at::linear(h, weights[l] * mask(prefixes[l], weights[l].size(1), weights[l]), biases[l]);
    if (l + 1 < weights.size()) h = at::relu(h);
  }
  if (skip_weight.defined()) h = h + at::linear(x, skip_weight * mask(skip_prefix, skip_weight.size(1), skip_weight));
  return h;
}

// Autograd of masked_mlp on the CPU, in C++: a small network's call and its backward cost
// microseconds here against tens through a Python autograd function. The saved variables:
// x, the hidden activations, the weights, the biases, the prefixes, [skip_weight, skip_prefix].
class MlpFunction : public torch::autograd::Function<MlpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                               at::TensorList biases, at::TensorList prefixes,
                               const std::optional<at::Tensor>& skip_weight,
                               const std::optional<at::Tensor>& skip_prefix) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::masked_mlp", "").typed<MlpSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, hidden] = op.call(x, weights, biases, prefixes, skip_weight, skip_prefix);
    const bool skip = skip_weight.has_value() && skip_weight->defined();
    variable_list saved{x};
    saved.insert(saved.end(), hidden.begin(), hidden.end());
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    saved.insert(saved.end(), prefixes.begin(), prefixes.end());
    if (skip) {
      saved.push_back(*skip_weight);
      saved.push_back(*skip_prefix);
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["skip"] = skip;
    variable_list outputs{out};
    outputs.insert(outputs.end(), hidden.begin(), hidden.end());
    ctx->mark_non_differentiable(variable_list(hidden.begin(), hidden.end()));   // saved, not results
    // no zero gradients formed for the hidden outputs (a (B, D_l) fill each, every backward)
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::masked_mlp_backward", "")
                               .typed<MlpBackwardSignature>();
    const int64_t n = ctx->saved_data["layers"].toInt();
    const bool skip = ctx->saved_data["skip"].toBool();
    const size_t inputs = 1 + 3 * n + 2;   // skip_weight and skip_prefix count even when absent
    if (!grads[0].defined()) return variable_list(inputs);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const variable_list hidden(saved.begin() + 1, saved.begin() + n);
    const variable_list weights(saved.begin() + n, saved.begin() + 2 * n);
    const variable_list biases(saved.begin() + 2 * n, saved.begin() + 3 * n);
    const variable_list prefixes(saved.begin() + 3 * n, saved.begin() + 4 * n);
    const at::Tensor skip_weight = skip ? saved[4 * n] : at::Tensor();
    const at::Tensor skip_prefix = skip ? saved[4 * n + 1] : at::Tensor();
    variable_list result(inputs);
    if (at::GradMode::is_enabled()) {   // create_graph: the reference's VJP, itself differentiable
      variable_list leaves{x}, want;
      leaves.insert(leaves.end(), weights.begin(), weights.end());
      leaves.insert(leaves.end(), biases.begin(), biases.end());
      if (skip) leaves.push_back(skip_weight);
      std::vector<size_t> slot;
      for (size_t i = 0; i < leaves.size(); ++i) {
        const size_t at_input = i < 1 + 2 * size_t(n) ? i : (skip && i == leaves.size() - 1 ? 1 + 3 * n : i);
        if (ctx->needs_input_grad(at_input)) {
          want.push_back(leaves[i]);
          slot.push_back(at_input);
        }
      }
      if (want.empty()) return result;
      const at::Tensor out = reference_forward(x, weights, biases, prefixes, skip_weight, skip_prefix);
      const variable_list g = torch::autograd::grad({out}, want, {grads[0].to(out.scalar_type())}, true, true, true);
      for (size_t i = 0; i < want.size(); ++i) result[slot[i]] = g[i];
      return result;
    }
    const bool need_x = ctx->needs_input_grad(0);
    auto [gx, gw, gb, gs] = op.call(grads[0].contiguous(), x, hidden, weights, prefixes,
                                    skip ? std::optional<at::Tensor>(skip_weight) : std::nullopt,
                                    skip ? std::optional<at::Tensor>(skip_prefix) : std::nullopt, need_x);
    if (need_x) result[0] = gx;
    for (int64_t l = 0; l < n; ++l) {
      if (ctx->needs_input_grad(1 + l)) result[1 + l] = gw[l];
      if (ctx->needs_input_grad(1 + n + l)) result[1 + n + l] = gb[l];
    }
    if (skip && ctx->needs_input_grad(1 + 3 * n)) result[1 + 3 * n] = gs;
    return result;
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>> masked_mlp_autograd(const at::Tensor& x, at::TensorList weights,
                                                                    at::TensorList biases, at::TensorList prefixes,
                                                                    const std::optional<at::Tensor>& skip_weight,
                                                                    const std::optional<at::Tensor>& skip_prefix) {
  variable_list outputs = MlpFunction::apply(x, weights, biases, prefixes, skip_weight, skip_prefix);
  return {outputs[0], std::vector<at::Tensor>(outputs.begin() + 1, outputs.end())};
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) { m.impl("masked_mlp", &masked_mlp_autograd); }

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("masked_mlp", &masked_mlp_cpu);
  m.impl("masked_mlp_backward", &masked_mlp_backward_cpu);
}

}  // namespace genkernels::autoregressive::cpu
