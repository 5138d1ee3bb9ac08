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
// Layout: nodes and values are read transposed, (D, K) and (C, K), so the inner loops run
// over the nodes of a tile with unit stride and vectorise for any D and C (D = 1 included).
// Distances come from the differences (sum over features of (x - l)^2 in feature order),
// not from |x|^2 + |l|^2 - 2 x.l, whose cancellation loses the reference's accuracy for
// rows near a node. Memory per thread: O(kNodeTile x (D + C)); no (B, K) matrix.
// Arithmetic in the inputs' dtype (float or double; the Python side converts half and
// bfloat16 to float).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/som_cpu.h"

namespace genkernels::som::cpu {
namespace {

// Nodes per tile: the vector length of the inner loops and the block a chunk of rows reuses
// from cache (64 x D numbers).
constexpr int64_t kNodeTile = 64;
// Rows per forward / grad_x work item.
constexpr int64_t kRowChunk = 32;
// Threads the work (row x node x (D + C) multiply-adds) pays for: one per
// kMinWorkPerThread, as the other cpu kernels (on 2 cores a thread team costs tens of
// microseconds to wake, and a time slice beside a busy process: see parallel_region.h).
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;

int64_t threads_for(int64_t work) { return std::max<int64_t>(1, work / kMinWorkPerThread); }

template <typename T>
struct SoftInputs {
  const T* x;         // (B, D) contiguous
  const T* nodes_t;   // (D, K) contiguous: nodes transposed
  const T* values_t;  // (C, K) contiguous: values transposed
  int64_t b_count, d, k_count, c;
  T beta;
  bool squared;
};

// dist[t] = d(x_b, l_{k0 + t}) for the tn nodes of a tile: the squared distance summed in
// feature order, and for the Euclidean distance its square root (0 where it is 0, as the
// reference's clamped sqrt).
template <typename T>
inline void tile_distances(const SoftInputs<T>& in, const T* __restrict__ xb, int64_t k0, int64_t tn,
                           T* __restrict__ dist) {
  std::fill(dist, dist + tn, T(0));
  for (int64_t j = 0; j < in.d; ++j) {
    const T xj = xb[j];
    const T* __restrict__ l = in.nodes_t + j * in.k_count + k0;
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) {
      const T diff = xj - l[t];
      dist[t] += diff * diff;
    }
  }
  if (!in.squared) {
    constexpr T tiny = std::numeric_limits<T>::min();
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) dist[t] = dist[t] > T(0) ? std::sqrt(std::max(dist[t], tiny)) : T(0);
  }
}

// The rows [r0, r1) of out (C each, running sums then the weighted mean), m and z. The
// scores of a tile are rounded and stored before the max is taken over them, so every
// exponent s - m is <= 0 exactly (written as exp(-beta * d - m), a contracted fma would
// not be: at beta = 1e30 its exponent overflows).
template <typename T>
void forward_rows(const SoftInputs<T>& in, int64_t r0, int64_t r1, T* out, T* m, T* z, T* __restrict__ s) {
  const int64_t c_count = in.c;
  for (int64_t r = r0; r < r1; ++r) {
    m[r] = -std::numeric_limits<T>::infinity();
    z[r] = T(0);
    std::fill(out + r * c_count, out + (r + 1) * c_count, T(0));
  }
  const VectorExp exp_fn;
  for (int64_t k0 = 0; k0 < in.k_count; k0 += kNodeTile) {
    const int64_t tn = std::min(kNodeTile, in.k_count - k0);
    for (int64_t r = r0; r < r1; ++r) {
      tile_distances(in, in.x + r * in.d, k0, tn, s);
      T tile_max = -std::numeric_limits<T>::infinity();
      const T neg_beta = -in.beta;
#pragma omp simd reduction(max : tile_max)
      for (int64_t t = 0; t < tn; ++t) {
        s[t] = neg_beta * s[t];
        tile_max = std::max(tile_max, s[t]);
      }
      const T m_new = std::max(m[r], tile_max);
      const T rescale = std::exp(m[r] - m_new);  // 0 on the first tile (m = -inf)
      T tile_sum = 0;
#pragma omp simd reduction(+ : tile_sum)
      for (int64_t t = 0; t < tn; ++t) {
        s[t] = exp_fn(s[t] - m_new);
        tile_sum += s[t];
      }
      z[r] = z[r] * rescale + tile_sum;
      T* __restrict__ out_r = out + r * c_count;
      for (int64_t c = 0; c < c_count; ++c) {
        const T* __restrict__ g = in.values_t + c * in.k_count + k0;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = 0; t < tn; ++t) acc += s[t] * g[t];
        out_r[c] = out_r[c] * rescale + acc;
      }
      m[r] = m_new;
    }
  }
  if (in.k_count == 0) return;  // the reference's K = 0: out 0, m -inf, Z 0
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < c_count; ++c) out[r * c_count + c] /= z[r];
  }
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

template <typename T>
SoftInputs<T> soft_inputs(const at::Tensor& x, const at::Tensor& nodes_t, const at::Tensor& values_t,
                          const at::Tensor& beta, bool squared) {
  return {x.const_data_ptr<T>(), nodes_t.const_data_ptr<T>(), values_t.const_data_ptr<T>(),
          x.size(0),             x.size(1),                   nodes_t.size(1),
          values_t.size(0),      beta.to(at::kCPU).item<T>(), squared};
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
  const at::Tensor nodes_t = nodes.t().contiguous();
  const at::Tensor values_t = values.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_soft", [&] {
    const SoftInputs<scalar_t> in = soft_inputs<scalar_t>(x_c, nodes_t, values_t, beta, squared);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    scalar_t* m_ptr = m.mutable_data_ptr<scalar_t>();
    scalar_t* z_ptr = z.mutable_data_ptr<scalar_t>();
    std::vector<std::vector<scalar_t>> scores(team, std::vector<scalar_t>(kNodeTile));
    genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t i, int slot) {
      const int64_t r0 = i * kRowChunk;
      forward_rows(in, r0, std::min(b_count, r0 + kRowChunk), out_ptr, m_ptr, z_ptr, scores[slot].data());
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

// Scratch of one thread: the tile quantities (kNodeTile each) and a node tile's sums.
template <typename T>
struct TileScratch {
  std::vector<T> dist, w, gs, h;  // d_bk, w_bk, gs_bk = dL/ds_bk, h_bk = -beta gs_bk dd_bk / (x_b - l_k)
  std::vector<T> grad_nodes_t;    // (D, kNodeTile)
  std::vector<T> grad_values_t;   // (C, kNodeTile)
  std::vector<T> grad_beta;       // (kNodeTile,)
  TileScratch(int64_t d, int64_t c)
      : dist(kNodeTile), w(kNodeTile), gs(kNodeTile), h(kNodeTile), grad_nodes_t(d * kNodeTile),
        grad_values_t(c * kNodeTile), grad_beta(kNodeTile) {}
};

// Row r against the tn nodes of the tile at k0: d, w = exp(s - m) / Z, gs = w (grad . g_k
// - grad . out) and h, the coefficient of (x_b - l_k) in d loss / d x_b: -beta gs / d
// (0 where d = 0) or -2 beta gs (squared).
template <typename T>
inline void tile_vjp(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t r, int64_t k0, int64_t tn,
                     TileScratch<T>& sc) {
  T* __restrict__ dist = sc.dist.data();
  T* __restrict__ w = sc.w.data();
  T* __restrict__ gs = sc.gs.data();
  T* __restrict__ h = sc.h.data();
  tile_distances(in, in.x + r * in.d, k0, tn, dist);
  const T neg_beta = -in.beta, m = rows.m[r], inv_z = rows.inv_z[r], g_out = rows.g_out[r];
#pragma omp simd
  for (int64_t t = 0; t < tn; ++t) w[t] = neg_beta * dist[t];
  const VectorExp exp_fn;
#pragma omp simd
  for (int64_t t = 0; t < tn; ++t) w[t] = exp_fn(w[t] - m) * inv_z;
  std::fill(gs, gs + tn, T(0));
  const T* __restrict__ grad_r = rows.grad + r * in.c;
  for (int64_t c = 0; c < in.c; ++c) {
    const T gc = grad_r[c];
    const T* __restrict__ g = in.values_t + c * in.k_count + k0;
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) gs[t] += gc * g[t];
  }
#pragma omp simd
  for (int64_t t = 0; t < tn; ++t) gs[t] = w[t] * (gs[t] - g_out);
  if (in.squared) {
    const T scale = T(-2) * in.beta;
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) h[t] = scale * gs[t];
  } else {
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) h[t] = dist[t] > T(0) ? neg_beta * gs[t] / dist[t] : T(0);
  }
}

// grad_x of rows [r0, r1): sum over the nodes, tile by tile, of h_bk (x_b - l_k).
template <typename T>
void grad_x_rows(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t r0, int64_t r1, T* grad_x,
                 TileScratch<T>& sc) {
  std::fill(grad_x + r0 * in.d, grad_x + r1 * in.d, T(0));
  for (int64_t k0 = 0; k0 < in.k_count; k0 += kNodeTile) {
    const int64_t tn = std::min(kNodeTile, in.k_count - k0);
    for (int64_t r = r0; r < r1; ++r) {
      tile_vjp(in, rows, r, k0, tn, sc);
      const T* __restrict__ h = sc.h.data();
      const T* __restrict__ xb = in.x + r * in.d;
      T* __restrict__ gx = grad_x + r * in.d;
      for (int64_t j = 0; j < in.d; ++j) {
        const T xj = xb[j];
        const T* __restrict__ l = in.nodes_t + j * in.k_count + k0;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = 0; t < tn; ++t) acc += h[t] * (xj - l[t]);
        gx[j] += acc;
      }
    }
  }
}

// The node tile at k0: its rows of grad_nodes (-sum_b h_bk (x_b - l_k)) and grad_values
// (sum_b w_bk grad_b), summed over every row in row order; returns its share of grad_beta
// (-sum_bk gs_bk d_bk, per node over the rows, then over the tile's nodes).
template <typename T>
T node_tile(const SoftInputs<T>& in, const RowStats<T>& rows, int64_t k0, T* grad_nodes, T* grad_values,
            TileScratch<T>& sc) {
  const int64_t tn = std::min(kNodeTile, in.k_count - k0);
  T* __restrict__ gl = sc.grad_nodes_t.data();
  T* __restrict__ gv = sc.grad_values_t.data();
  T* __restrict__ gb = sc.grad_beta.data();
  std::fill(gl, gl + in.d * kNodeTile, T(0));
  std::fill(gv, gv + in.c * kNodeTile, T(0));
  std::fill(gb, gb + kNodeTile, T(0));
  for (int64_t r = 0; r < in.b_count; ++r) {
    tile_vjp(in, rows, r, k0, tn, sc);
    const T* __restrict__ h = sc.h.data();
    const T* __restrict__ w = sc.w.data();
    const T* __restrict__ gs = sc.gs.data();
    const T* __restrict__ dist = sc.dist.data();
    const T* __restrict__ xb = in.x + r * in.d;
    for (int64_t j = 0; j < in.d; ++j) {
      const T xj = xb[j];
      const T* __restrict__ l = in.nodes_t + j * in.k_count + k0;
      T* __restrict__ gl_j = gl + j * kNodeTile;
#pragma omp simd
      for (int64_t t = 0; t < tn; ++t) gl_j[t] -= h[t] * (xj - l[t]);
    }
    const T* __restrict__ grad_r = rows.grad + r * in.c;
    for (int64_t c = 0; c < in.c; ++c) {
      const T gc = grad_r[c];
      T* __restrict__ gv_c = gv + c * kNodeTile;
#pragma omp simd
      for (int64_t t = 0; t < tn; ++t) gv_c[t] += w[t] * gc;
    }
#pragma omp simd
    for (int64_t t = 0; t < tn; ++t) gb[t] -= gs[t] * dist[t];
  }
  for (int64_t t = 0; t < tn; ++t) {
    for (int64_t j = 0; j < in.d; ++j) grad_nodes[(k0 + t) * in.d + j] = gl[j * kNodeTile + t];
    for (int64_t c = 0; c < in.c; ++c) grad_values[(k0 + t) * in.c + c] = gv[c * kNodeTile + t];
  }
  T tile_beta = 0;
  for (int64_t t = 0; t < tn; ++t) tile_beta += gb[t];
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
  at::Tensor grad_x = at::zeros({b_count, d}, x.options());
  at::Tensor grad_nodes = at::zeros({k_count, d}, x.options());
  at::Tensor grad_values = at::zeros({k_count, c_count}, x.options());
  at::Tensor grad_beta = at::zeros({}, x.options());
  if (b_count == 0 || k_count == 0) return {grad_x, grad_nodes, grad_values, grad_beta};
  const int64_t node_tiles = (k_count + kNodeTile - 1) / kNodeTile;
  const int64_t row_chunks = (b_count + kRowChunk - 1) / kRowChunk;
  // items [0, node_tiles) are node tiles (the larger ones, handed out first), the rest
  // chunks of rows
  const int64_t items = node_tiles + row_chunks;
  const int team = genkernels::cpu::team_size(std::min(items, threads_for(2 * b_count * k_count * (d + c_count))));
  genkernels::cpu::SoloScope solo(team <= 1);  // the copies and row sums below on this thread too
  const at::Tensor x_c = x.contiguous();
  const at::Tensor nodes_t = nodes.t().contiguous();
  const at::Tensor values_t = values.t().contiguous();
  const at::Tensor grad_c = grad.to(x.scalar_type()).contiguous();
  const at::Tensor g_out = (grad_c * out.to(x.scalar_type())).sum(1);
  const at::Tensor m_c = m.to(x.scalar_type()).contiguous();
  const at::Tensor inv_z = z.to(x.scalar_type()).reciprocal();
  at::Tensor tile_beta = at::zeros({node_tiles}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "som_soft_backward", [&] {
    const SoftInputs<scalar_t> in = soft_inputs<scalar_t>(x_c, nodes_t, values_t, beta, squared);
    const RowStats<scalar_t> rows{grad_c.const_data_ptr<scalar_t>(), g_out.const_data_ptr<scalar_t>(),
                                  m_c.const_data_ptr<scalar_t>(), inv_z.const_data_ptr<scalar_t>()};
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gl = grad_nodes.mutable_data_ptr<scalar_t>();
    scalar_t* gv = grad_values.mutable_data_ptr<scalar_t>();
    scalar_t* gb = tile_beta.mutable_data_ptr<scalar_t>();
    std::vector<TileScratch<scalar_t>> scratch(team, TileScratch<scalar_t>(d, c_count));
    genkernels::cpu::parallel_chunks(items, team, [&](int64_t i, int slot) {
      if (i < node_tiles) {
        gb[i] = node_tile(in, rows, i * kNodeTile, gl, gv, scratch[slot]);
        return;
      }
      const int64_t r0 = (i - node_tiles) * kRowChunk;
      grad_x_rows(in, rows, r0, std::min(b_count, r0 + kRowChunk), gx, scratch[slot]);
    });
    scalar_t total = 0;
    for (int64_t t = 0; t < node_tiles; ++t) total += gb[t];
    grad_beta.fill_(total);
  });
  return {grad_x, grad_nodes, grad_values, grad_beta};
}

}  // namespace
}  // namespace genkernels::som::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("som_soft", &genkernels::som::cpu::som_soft_cpu);
  m.impl("som_soft_backward", &genkernels::som::cpu::som_soft_backward_cpu);
}
