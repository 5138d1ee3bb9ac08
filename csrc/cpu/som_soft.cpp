// CPU kernels of the soft SOM (schemas in csrc/genkernels.cpp, spec and formulas in
// genkernels/som/soft_reference.py):
//
//   som_soft           one pass over tiles of kNodeTile nodes with a running max m and sum
//                      Z per row (the fused online softmax of soft_som_forward). Parallel
//                      over chunks of kRowChunk rows; a chunk walks the node tiles and, for
//                      each tile (D x kNodeTile numbers, cache-resident), its rows: the
//                      tile's distances, scores s = -beta d, the tile max, the rescale of
//                      the row's running sums and the tile's exponentials and weighted
//                      values. The chunk's rows of out, m and Z are the running state.
//   som_soft_backward  the VJP of the reference's docstring, each tile's weights recomputed
//                      from m and Z. One region, two kinds of work item: a chunk of rows
//                      owns its rows of grad_x (a sum over nodes); a tile of nodes owns its
//                      nodes' rows of grad_nodes and grad_values and their share of
//                      grad_beta (sums over every row, in row order). No item adds into
//                      another's output, so the result does not depend on the thread count
//                      or the scheduling; the per-tile grad_beta partials are summed in tile
//                      order after the region. The scores are computed twice (once per
//                      kind of item): the price of sums without per-thread (K, D) buffers.
//
// Layout: nodes and values are read transposed and zero-padded, (D, Kp) and (C, Kp) with Kp
// a whole number of kLanes-wide vectors (a padding node's score is -inf: weight 0), copied
// in one pass that also checks they are finite; the inner loops are written with GCC vector
// types (som_cpu.h's lanes), so they compile to SIMD for any D and C (D = 1 included)
// without fast-math, exp included (VectorExp's polynomial lane by lane). Distances come
// from the differences (sum over features of (x - l)^2 in feature order), not from
// |x|^2 + |l|^2 - 2 x.l, whose cancellation loses the reference's accuracy for rows near a
// node. Memory per thread: O(kNodeTile x (D + C)); no (B, K) matrix. Arithmetic in the
// inputs' dtype (float or double; the Python side converts half and bfloat16 to float).
// Inputs holding NaN or Inf raise a ValueError naming them (the checks ride on the copies).
// The autograd of som_soft is at the end, in C++.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/som_cpu.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace genkernels::som::cpu {
namespace {

// Nodes per tile: the block a chunk of rows reuses from cache (64 x D numbers), kBlocks
// vectors of kLanes nodes. The transposed copies of nodes and values are padded with zeros
// to a whole number of vectors (Kp nodes); a padding node's score is -inf (weight 0).
constexpr int64_t kNodeTile = 64;
constexpr int64_t kBlocks = kNodeTile / kLanes;
// Rows per forward / grad_x work item.
constexpr int64_t kRowChunk = 32;
// Threads the work (row x node x (D + C) multiply-adds) pays for: one per
// kMinWorkPerThread, as the other cpu kernels (on 2 cores a thread team costs tens of
// microseconds to wake, and a time slice beside a busy process: see parallel_region.h).
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;

int64_t threads_for(int64_t work) { return std::max<int64_t>(1, work / kMinWorkPerThread); }

template <typename T>
using V = lanes_t<T>;
template <typename T>
using VI = lanes_t<std::conditional_t<std::is_same_v<T, float>, int32_t, int64_t>>;

template <typename T>
inline V<T> splat(T v) {
  return V<T>{} + v;
}

// exp of every lane, branch-free (GCC vector types compile to SIMD without fast-math):
// float: VectorExp's polynomial lane by lane (0 below -87.34); double: std::exp.
inline V<float> exp_lanes(V<float> x) {
  using I = VI<float>;
  const V<float> xc = x < -87.33654f ? splat(-87.33654f) : (x > 88.3762626647949f ? splat(88.3762626647949f) : x);
  const V<float> t = xc * 1.44269504088896341f + 0.5f;
  V<float> n = __builtin_convertvector(__builtin_convertvector(t, I), V<float>);  // trunc
  n = n > t ? n - 1.0f : n;                                                        // floor
  const V<float> r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  V<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V<float> y = p * (r * r) + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  V<float> scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return x < -87.33654f ? V<float>{} : y * scale;
}
inline V<double> exp_lanes(V<double> x) {
  for (int l = 0; l < kLanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

// The Euclidean distance from the squared one: sqrt of a copy clamped to the smallest
// normal number where it is > 0, 0 where it is 0 (the reference's clamped sqrt).
template <typename T>
inline V<T> sqrt_lanes(V<T> sq) {
  constexpr T tiny = std::numeric_limits<T>::min();
  V<T> c = sq < tiny ? splat(tiny) : sq;
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    __m256 v;
    __builtin_memcpy(&v, &c, sizeof(v));
    v = _mm256_sqrt_ps(v);
    __builtin_memcpy(&c, &v, sizeof(v));
  } else {
    __m256d v[2];
    __builtin_memcpy(v, &c, sizeof(v));
    v[0] = _mm256_sqrt_pd(v[0]);
    v[1] = _mm256_sqrt_pd(v[1]);
    __builtin_memcpy(&c, v, sizeof(v));
  }
#else
  for (int l = 0; l < kLanes; ++l) c[l] = std::sqrt(c[l]);
#endif
  return sq > T(0) ? c : V<T>{};
}

// An optimisation barrier: v is rounded to its type here (not contracted into a later fma).
template <typename T>
inline void keep_rounded(V<T>& v) {
#if defined(__AVX__)
  if constexpr (sizeof(V<T>) == 32) {
    __asm__("" : "+x"(v));
    return;
  }
#endif
  __asm__("" : "+m"(v));
}

template <typename T>
inline T max_lanes(V<T> a) {
  T m = a[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, a[l]);
  return m;
}

template <typename T>
struct SoftInputs {
  const T* x;         // (B, D) contiguous
  const T* nodes_t;   // (D, Kp) contiguous: nodes transposed, zero-padded
  const T* values_t;  // (C, Kp) contiguous: values transposed, zero-padded
  int64_t b_count, d, k_count, c, kp;
  T beta;
  bool squared;
};

// One node tile: nodes [k0, k0 + tn), nb = ceil(tn / kLanes) vectors; `tail` marks the
// padding lanes of the last vector (true = padding).
template <typename T>
struct Tile {
  int64_t k0, tn, nb;
  VI<T> tail;
  Tile(int64_t k0_, int64_t k_count) : k0(k0_), tn(std::min(kNodeTile, k_count - k0_)), nb((tn + kLanes - 1) / kLanes) {
    const int64_t valid = tn - (nb - 1) * kLanes;
    for (int l = 0; l < kLanes; ++l) tail[l] = l >= valid ? -1 : 0;
  }
};

// dist[b] = d(x_b, l_k) for the nodes of the tile: the squared distance summed in feature
// order, and for the Euclidean distance its square root.
template <typename T>
inline void tile_distances(const SoftInputs<T>& in, const T* __restrict__ xb, const Tile<T>& tile, V<T>* dist) {
  for (int64_t b = 0; b < tile.nb; ++b) dist[b] = V<T>{};
  for (int64_t j = 0; j < in.d; ++j) {
    const T xj = xb[j];
    const T* l = in.nodes_t + j * in.kp + tile.k0;
    for (int64_t b = 0; b < tile.nb; ++b) {
      const V<T> diff = xj - load_lanes(l + b * kLanes);
      dist[b] += diff * diff;
    }
  }
  if (!in.squared) {
    for (int64_t b = 0; b < tile.nb; ++b) dist[b] = sqrt_lanes<T>(dist[b]);
  }
}

// The scores -beta d of the tile (rounded before anything is taken from them, so every
// exponent s - m is <= 0 exactly: written as exp(-beta * d - m), a contracted fma would not
// be, and at beta = 1e30 its exponent overflows), the padding lanes -inf; returns their max.
template <typename T>
inline T tile_scores(const SoftInputs<T>& in, const Tile<T>& tile, const V<T>* dist, V<T>* s) {
  const T neg_beta = -in.beta;
  V<T> mx = splat(-std::numeric_limits<T>::infinity());
  const V<T> neg_inf = splat(-std::numeric_limits<T>::infinity());
  for (int64_t b = 0; b < tile.nb; ++b) {
    s[b] = neg_beta * dist[b];
    keep_rounded<T>(s[b]);  // no fma contraction into the exponent below
    if (b == tile.nb - 1) s[b] = tile.tail ? neg_inf : s[b];
    mx = s[b] > mx ? s[b] : mx;
  }
  return max_lanes<T>(mx);
}

// The rows [r0, r1) of out (C each, running sums then the weighted mean), m and z.
template <typename T>
void forward_rows(const SoftInputs<T>& in, int64_t r0, int64_t r1, T* out, T* m, T* z) {
  const int64_t c_count = in.c;
  for (int64_t r = r0; r < r1; ++r) {
    m[r] = -std::numeric_limits<T>::infinity();
    z[r] = T(0);
    std::fill(out + r * c_count, out + (r + 1) * c_count, T(0));
  }
  V<T> dist[kBlocks], s[kBlocks];
  for (int64_t k0 = 0; k0 < in.k_count; k0 += kNodeTile) {
    const Tile<T> tile(k0, in.k_count);
    for (int64_t r = r0; r < r1; ++r) {
      tile_distances(in, in.x + r * in.d, tile, dist);
      const T tile_max = tile_scores(in, tile, dist, s);
      const T m_new = std::max(m[r], tile_max);
      const T rescale = std::exp(m[r] - m_new);  // 0 on the first tile (m = -inf)
      V<T> sum = {};
      for (int64_t b = 0; b < tile.nb; ++b) {
        s[b] = exp_lanes(s[b] - m_new);
        sum += s[b];
      }
      z[r] = z[r] * rescale + combine_lanes<T>(sum);
      T* __restrict__ out_r = out + r * c_count;
      for (int64_t c = 0; c < c_count; ++c) {
        const T* g = in.values_t + c * in.kp + k0;
        V<T> acc = {};
        for (int64_t b = 0; b < tile.nb; ++b) acc += s[b] * load_lanes(g + b * kLanes);
        out_r[c] = out_r[c] * rescale + combine_lanes<T>(acc);
      }
      m[r] = m_new;
    }
  }
  if (in.k_count == 0) return;  // the reference's K = 0: out 0, m -inf, Z 0
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < c_count; ++c) out[r * c_count + c] /= z[r];
  }
}

// Whether every one of the n numbers at p is finite: x - x is 0 for a number and NaN for
// an Inf or a NaN, summed lane by lane (one vectorised pass, no branch per element).
template <typename T>
bool all_finite(const T* p, int64_t n) {
  V<T> acc = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V<T> v = load_lanes(p + i);
    acc += v - v;
  }
  if (i < n) {
    const V<T> v = load_lanes_partial(p + i, n - i);
    acc += v - v;
  }
  return combine_lanes<T>(acc) == T(0);
}

void check_forward_inputs(const char* op, const at::Tensor& x, const at::Tensor& nodes, const at::Tensor& values,
                          const at::Tensor& beta) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (B, D); got ", x.sizes());
  TORCH_CHECK(nodes.dim() == 2 && nodes.size(1) == x.size(1), op, ": nodes must be (K, ", x.size(1), "); got ",
              nodes.sizes());
  TORCH_CHECK(values.dim() == 2 && values.size(0) == nodes.size(0), op, ": values must be (", nodes.size(0),
              ", C); got ", values.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(nodes.scalar_type() == x.scalar_type() && values.scalar_type() == x.scalar_type(), op,
              ": nodes and values must have x's dtype ", x.scalar_type(), "; got ", nodes.scalar_type(), " and ",
              values.scalar_type());
  TORCH_CHECK(beta.numel() == 1, op, ": beta must hold one number; got ", beta.sizes());
}

// t (K, n), any strides -> (n, Kp) transposed and zero-padded to a whole number of lane
// vectors, in one pass that also checks every number is finite (ValueError naming it).
template <typename T>
at::Tensor transposed_padded(const char* name, const at::Tensor& t) {
  const int64_t k_count = t.size(0), n = t.size(1);
  const int64_t kp = (k_count + kLanes - 1) / kLanes * kLanes;
  at::Tensor out = at::empty({n, kp}, t.options());
  const T* src = t.const_data_ptr<T>();
  const int64_t s0 = t.stride(0), s1 = t.stride(1);
  T* dst = out.mutable_data_ptr<T>();
  T finite = 0;  // x - x summed: 0 while every x is finite, NaN after an Inf or a NaN
  for (int64_t j = 0; j < n; ++j) {
    T* row = dst + j * kp;
    for (int64_t k = 0; k < k_count; ++k) {
      const T v = src[k * s0 + j * s1];
      row[k] = v;
      finite += v - v;
    }
    std::fill(row + k_count, row + kp, T(0));
  }
  TORCH_CHECK_VALUE(finite == T(0), name, " contains NaN or Inf");
  return out;
}

template <typename T>
SoftInputs<T> soft_inputs(const at::Tensor& x, const at::Tensor& nodes_t, const at::Tensor& values_t,
                          int64_t k_count, const at::Tensor& beta, bool squared) {
  return {x.const_data_ptr<T>(), nodes_t.const_data_ptr<T>(), values_t.const_data_ptr<T>(),
          x.size(0),             x.size(1),                   k_count,
          values_t.size(0),      nodes_t.size(1),             beta.to(at::kCPU).item<T>(),
          squared};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_soft_cpu(const at::Tensor& x, const at::Tensor& nodes,
                                                            const at::Tensor& values, const at::Tensor& beta,
                                                            bool squared) {
  check_forward_inputs("som_soft", x, nodes, values, beta);
  const int64_t b_count = x.size(0), d = x.size(1), k_count = nodes.size(0), c_count = values.size(1);
  at::Tensor out = at::empty({b_count, c_count}, x.options());
  at::Tensor m = at::empty({b_count}, x.options());
  at::Tensor z = at::empty({b_count}, x.options());
  if (b_count == 0) return {out, m, z};
  const int64_t chunks = (b_count + kRowChunk - 1) / kRowChunk;
  const int team = genkernels::cpu::team_size(std::min(chunks, threads_for(b_count * k_count * (d + c_count))));
  genkernels::cpu::SoloScope solo(team <= 1);  // the copies below on this thread too
  const at::Tensor x_c = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_soft", [&] {
    TORCH_CHECK_VALUE(all_finite(x_c.const_data_ptr<scalar_t>(), x_c.numel()), "x contains NaN or Inf");
    const at::Tensor nodes_t = transposed_padded<scalar_t>("nodes", nodes);
    const at::Tensor values_t = transposed_padded<scalar_t>("values", values);
    const SoftInputs<scalar_t> in = soft_inputs<scalar_t>(x_c, nodes_t, values_t, k_count, beta, squared);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    scalar_t* m_ptr = m.mutable_data_ptr<scalar_t>();
    scalar_t* z_ptr = z.mutable_data_ptr<scalar_t>();
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t i, int) {
      const int64_t r0 = i * kRowChunk;
      forward_rows(in, r0, std::min(b_count, r0 + kRowChunk), out_ptr, m_ptr, z_ptr);
    });
  });
  return {out, m, z};
}

// ------------------------------------------------------------------------------ backward
// The per-row quantities of the VJP: grad_b, g_out_b = grad_b . out_b, m_b and 1 / Z_b.
template <typename T>
struct RowStats {
  const T* grad;   // (B, C) contiguous
  const T* g_out;  // (B,)
  const T* m;      // (B,)
  const T* inv_z;  // (B,)
};

// The VJP quantities of one row against one node tile (kBlocks vectors each).
template <typename T>
struct TileVjp {
  V<T> dist[kBlocks];  // d_bk
  V<T> w[kBlocks];     // w_bk = exp(s_bk - m_b) / Z_b (0 on padding lanes)
  V<T> gs[kBlocks];    // gs_bk = dL/ds_bk = w_bk (grad_b . g_k - grad_b . out_b)
  V<T> h[kBlocks];     // h_bk: d loss / d x_b = sum_k h_bk (x_b - l_k)
};

// Row r against the tile: d, w, gs and h = -beta gs / d (0 where d = 0) or -2 beta gs
// (squared).
template <typename T>
inline void tile_vjp(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t r, const Tile<T>& tile,
                     TileVjp<T>& v) {
  const int64_t nb = tile.nb;
  tile_distances(in, in.x + r * in.d, tile, v.dist);
  tile_scores(in, tile, v.dist, v.w);
  const T m = rows.m[r], inv_z = rows.inv_z[r], g_out = rows.g_out[r];
  for (int64_t b = 0; b < nb; ++b) {
    v.w[b] = exp_lanes(v.w[b] - m) * inv_z;
    v.gs[b] = V<T>{};
  }
  const T* __restrict__ grad_r = rows.grad + r * in.c;
  for (int64_t c = 0; c < in.c; ++c) {
    const T gc = grad_r[c];
    const T* g = in.values_t + c * in.kp + tile.k0;
    for (int64_t b = 0; b < nb; ++b) v.gs[b] += gc * load_lanes(g + b * kLanes);
  }
  const T neg_beta = -in.beta;
  const T scale = T(-2) * in.beta;
  for (int64_t b = 0; b < nb; ++b) {
    v.gs[b] = v.w[b] * (v.gs[b] - g_out);
    v.h[b] = in.squared ? scale * v.gs[b] : (v.dist[b] > T(0) ? neg_beta * v.gs[b] / v.dist[b] : V<T>{});
  }
}

// grad_x of rows [r0, r1): sum over the nodes, tile by tile, of h_bk (x_b - l_k).
template <typename T>
void grad_x_rows(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t r0, int64_t r1, T* grad_x) {
  std::fill(grad_x + r0 * in.d, grad_x + r1 * in.d, T(0));
  TileVjp<T> v;
  for (int64_t k0 = 0; k0 < in.k_count; k0 += kNodeTile) {
    const Tile<T> tile(k0, in.k_count);
    for (int64_t r = r0; r < r1; ++r) {
      tile_vjp(in, rows, r, tile, v);
      const T* __restrict__ xb = in.x + r * in.d;
      T* __restrict__ gx = grad_x + r * in.d;
      for (int64_t j = 0; j < in.d; ++j) {
        const T xj = xb[j];
        const T* l = in.nodes_t + j * in.kp + k0;
        V<T> acc = {};
        for (int64_t b = 0; b < tile.nb; ++b) acc += v.h[b] * (xj - load_lanes(l + b * kLanes));
        gx[j] += combine_lanes<T>(acc);
      }
    }
  }
}

// Per-thread sums of one node tile over the rows: (D, kNodeTile) grad_nodes transposed,
// (C, kNodeTile) grad_values transposed, kNodeTile grad_beta.
template <typename T>
struct TileSums {
  std::vector<V<T>> nodes, values;
  V<T> beta[kBlocks] = {};
  TileSums(int64_t d, int64_t c) : nodes(d * kBlocks), values(c * kBlocks) {}
};

// The node tile at k0: its rows of grad_nodes (-sum_b h_bk (x_b - l_k)) and grad_values
// (sum_b w_bk grad_b), summed over every row in row order; returns its share of grad_beta
// (-sum_bk gs_bk d_bk, per node over the rows, then over the tile's nodes).
template <typename T>
T node_tile(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t k0, T* grad_nodes, T* grad_values,
            TileSums<T>& sums) {
  const Tile<T> tile(k0, in.k_count);
  const int64_t nb = tile.nb;
  std::fill(sums.nodes.begin(), sums.nodes.end(), V<T>{});
  std::fill(sums.values.begin(), sums.values.end(), V<T>{});
  for (int64_t b = 0; b < kBlocks; ++b) sums.beta[b] = V<T>{};
  TileVjp<T> v;
  for (int64_t r = 0; r < in.b_count; ++r) {
    tile_vjp(in, rows, r, tile, v);
    const T* __restrict__ xb = in.x + r * in.d;
    for (int64_t j = 0; j < in.d; ++j) {
      const T xj = xb[j];
      const T* l = in.nodes_t + j * in.kp + k0;
      V<T>* gl = sums.nodes.data() + j * kBlocks;
      for (int64_t b = 0; b < nb; ++b) gl[b] -= v.h[b] * (xj - load_lanes(l + b * kLanes));
    }
    const T* __restrict__ grad_r = rows.grad + r * in.c;
    for (int64_t c = 0; c < in.c; ++c) {
      const T gc = grad_r[c];
      V<T>* gv = sums.values.data() + c * kBlocks;
      for (int64_t b = 0; b < nb; ++b) gv[b] += v.w[b] * gc;
    }
    for (int64_t b = 0; b < nb; ++b) sums.beta[b] -= v.gs[b] * v.dist[b];
  }
  T tile_beta = 0;
  for (int64_t t = 0; t < tile.tn; ++t) {
    const int64_t b = t / kLanes, l = t % kLanes;
    for (int64_t j = 0; j < in.d; ++j) grad_nodes[(k0 + t) * in.d + j] = sums.nodes[j * kBlocks + b][l];
    for (int64_t c = 0; c < in.c; ++c) grad_values[(k0 + t) * in.c + c] = sums.values[c * kBlocks + b][l];
    tile_beta += sums.beta[b][l];
  }
  return tile_beta;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> som_soft_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& nodes, const at::Tensor& values,
    const at::Tensor& beta, const at::Tensor& out, const at::Tensor& m, const at::Tensor& z, bool squared) {
  check_forward_inputs("som_soft_backward", x, nodes, values, beta);
  const int64_t b_count = x.size(0), d = x.size(1), k_count = nodes.size(0), c_count = values.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == b_count && grad.size(1) == c_count,
              "som_soft_backward: grad must be (", b_count, ", ", c_count, "); got ", grad.sizes());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == b_count && out.size(1) == c_count,
              "som_soft_backward: out must be (", b_count, ", ", c_count, "); got ", out.sizes());
  TORCH_CHECK(m.dim() == 1 && m.size(0) == b_count, "som_soft_backward: m must be (", b_count, ",); got ",
              m.sizes());
  TORCH_CHECK(z.dim() == 1 && z.size(0) == b_count, "som_soft_backward: z must be (", b_count, ",); got ",
              z.sizes());
  if (b_count == 0 || k_count == 0) {
    return {at::zeros({b_count, d}, x.options()), at::zeros({k_count, d}, x.options()),
            at::zeros({k_count, c_count}, x.options()), at::zeros({}, x.options())};
  }
  // every element of the three gradients is written by exactly one work item below
  at::Tensor grad_x = at::empty({b_count, d}, x.options());
  at::Tensor grad_nodes = at::empty({k_count, d}, x.options());
  at::Tensor grad_values = at::empty({k_count, c_count}, x.options());
  at::Tensor grad_beta = at::empty({}, x.options());
  const int64_t node_tiles = (k_count + kNodeTile - 1) / kNodeTile;
  const int64_t row_chunks = (b_count + kRowChunk - 1) / kRowChunk;
  // items [0, node_tiles) are node tiles (the larger ones, handed out first), the rest
  // chunks of rows
  const int64_t items = node_tiles + row_chunks;
  const int team = genkernels::cpu::team_size(std::min(items, threads_for(2 * b_count * k_count * (d + c_count))));
  genkernels::cpu::SoloScope solo(team <= 1);  // the copies below on this thread too
  const at::ScalarType dtype = x.scalar_type();
  const at::Tensor x_c = x.contiguous();
  const at::Tensor grad_c = grad.to(dtype).contiguous();
  const at::Tensor out_c = out.to(dtype).contiguous();
  const at::Tensor m_c = m.to(dtype).contiguous();
  const at::Tensor z_c = z.to(dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "som_soft_backward", [&] {
    using T = scalar_t;
    const at::Tensor nodes_t = transposed_padded<T>("nodes", nodes);
    const at::Tensor values_t = transposed_padded<T>("values", values);
    const SoftInputs<T> in = soft_inputs<T>(x_c, nodes_t, values_t, k_count, beta, squared);
    // per row: grad_b . out_b and 1 / Z_b
    std::vector<T> g_out(b_count), inv_z(b_count);
    const T* gr = grad_c.const_data_ptr<T>();
    const T* o = out_c.const_data_ptr<T>();
    const T* zp = z_c.const_data_ptr<T>();
    for (int64_t r = 0; r < b_count; ++r) {
      T acc = 0;
      for (int64_t c = 0; c < c_count; ++c) acc += gr[r * c_count + c] * o[r * c_count + c];
      g_out[r] = acc;
      inv_z[r] = T(1) / zp[r];
    }
    const RowStats<T> rows{gr, g_out.data(), m_c.const_data_ptr<T>(), inv_z.data()};
    T* gx = grad_x.mutable_data_ptr<T>();
    T* gl = grad_nodes.mutable_data_ptr<T>();
    T* gv = grad_values.mutable_data_ptr<T>();
    std::vector<T> tile_beta(node_tiles);
    std::vector<TileSums<T>> sums(team, TileSums<T>(d, c_count));
    genkernels::cpu::parallel_chunks(items, team, [&](int64_t i, int slot) {
      if (i < node_tiles) {
        tile_beta[i] = node_tile(in, rows, i * kNodeTile, gl, gv, sums[slot]);
        return;
      }
      const int64_t r0 = (i - node_tiles) * kRowChunk;
      grad_x_rows(in, rows, r0, std::min(b_count, r0 + kRowChunk), gx);
    });
    T total = 0;
    for (int64_t t = 0; t < node_tiles; ++t) total += tile_beta[t];
    *grad_beta.mutable_data_ptr<T>() = total;
  });
  return {grad_x, grad_nodes, grad_values, grad_beta};
}

// ------------------------------------------------------------------------------ autograd
// In C++ so that a call pays no Python autograd layer (torch.library's register_autograd
// cost ~0.1 ms per forward + backward, more than the kernels at small shapes). The
// backward is som_soft_backward through the dispatcher; m and Z are statistics, not
// differentiable outputs.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using SoftSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&, bool);
using SoftBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);

class SoftFunction : public torch::autograd::Function<SoftFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& nodes,
                               const at::Tensor& values, const at::Tensor& beta, bool squared) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::som_soft", "").typed<SoftSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, m, z] = op.call(x, nodes, values, beta, squared);
    ctx->save_for_backward({x, nodes, values, beta, out, m, z});
    ctx->saved_data["squared"] = squared;
    ctx->mark_non_differentiable({m, z});
    return {out, m, z};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::som_soft_backward", "")
                               .typed<SoftBackwardSignature>();
    variable_list result(5);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return result;
    const auto saved = ctx->get_saved_variables();
    auto [gx, gl, gv, gb] = op.call(grad, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                                    ctx->saved_data["squared"].toBool());
    const at::Tensor* computed[4] = {&gx, &gl, &gv, &gb};
    for (int i = 0; i < 4; ++i) {
      if (ctx->needs_input_grad(i)) result[i] = computed[i]->to(saved[i].scalar_type());
    }
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_soft_autograd(const at::Tensor& x, const at::Tensor& nodes,
                                                                 const at::Tensor& values, const at::Tensor& beta,
                                                                 bool squared) {
  auto outputs = SoftFunction::apply(x, nodes, values, beta, squared);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace
}  // namespace genkernels::som::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("som_soft", &genkernels::som::cpu::som_soft_cpu);
  m.impl("som_soft_backward", &genkernels::som::cpu::som_soft_backward_cpu);
}

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) {
  m.impl("som_soft", &genkernels::som::cpu::som_soft_autograd);
}
