// Persistent online-SOM kernels: one launch walks the whole epoch.
//
// Kohonen's sequential rule is a chain of T dependent steps per map, which a grid of
// short kernels would serialise on launch latency. Two kernels, chosen per launch by
// plan_metric below:
//
// * som_online_kernel: one block per map for all T steps, the map in shared memory when
//   (K * D + D) * sizeof(Scalar) fits the opt-in limit (else it works on the global
//   copy). Best with many maps (M >= number of SMs) or small maps.
// * som_online_coop_kernel (further down): B blocks per map, each keeping a slice of the
//   map's nodes in shared memory, one grid barrier per step. Best for few large maps.
//
// One-block kernel, each step:
//
//   1. stage the sample s = x[order[m, t]] in shared memory;           __syncthreads
//   2. distance pass: a group of G lanes (G = next power of two >= D, at most 32) per
//      node, G-wide shuffle reduction of the distance, running (distance, index) minimum
//      per thread, warp shuffle argmin, then across warps -- ties to the lowest index;
//                                                                      __syncthreads
//   3. update pass: w_j += lr * h_j * (s - w_j) with h from genkernels::som::neighborhood
//      and lattice_delta (csrc/common/som.h, the formulas the CPU kernel uses);
//                                                                      __syncthreads
//
// Arithmetic runs in Scalar: float for fp32/fp16/bf16 data, double for fp64. Includes
// only CUDA headers and csrc/common (see docs/design.md, "Testing").
#include <cooperative_groups.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/som.h"
#include "cuda/som.cuh"

namespace genkernels::som::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kNoNode = 0x7fffffff;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename Scalar>
__device__ __forceinline__ bool precedes(Scalar v, int i, Scalar best_v, int best_i) {
  return v < best_v || (v == best_v && i < best_i);
}

// Per-lane partial sums of one node's distance over the features d = lane, lane + G, ...
template <typename Scalar>
struct Partial {
  Scalar acc;    // sum (x-w)^2 | x.w | sum |x-w| | max |x-w|
  Scalar w_sq;   // |w|^2 (cosine)
  Scalar s_sq;   // |s|^2 (cosine)
};

// Adds feature (sample sv, weight wv) to a lane's partial sums.
template <Metric kMetric, typename Scalar>
__device__ __forceinline__ void accumulate(Partial<Scalar>& p, Scalar sv, Scalar wv) {
  const Scalar diff = sv - wv;
  if constexpr (kMetric == Metric::Euclidean) {
    p.acc += diff * diff;
  } else if constexpr (kMetric == Metric::Cosine) {
    p.acc += sv * wv;
    p.w_sq += wv * wv;
    p.s_sq += sv * sv;
  } else if constexpr (kMetric == Metric::Manhattan) {
    p.acc += fabs(diff);
  } else {
    p.acc = fmax(p.acc, fabs(diff));
  }
}

template <Metric kMetric, typename Scalar>
__device__ __forceinline__ Partial<Scalar> node_partial(const Scalar* __restrict__ w,
                                                        const Scalar* __restrict__ s,
                                                        int64_t D, int lane, int group) {
  Partial<Scalar> p{Scalar(0), Scalar(0), Scalar(0)};
  // Unrolled: the loads of four features are in flight at once (the stride is a runtime
  // value, so the compiler does not unroll on its own and a map in global memory waited
  // for every load); the accumulation order, hence the result, is unchanged.
#pragma unroll 4
  for (int64_t d = lane; d < D; d += group) accumulate<kMetric>(p, s[d], w[d]);
  return p;
}

// w[d] += coef * (s[d] - w[d]) over the features d = lane, lane + G, ... of one row, four
// rows' worth of loads issued before the first store (the compiler cannot move a load of
// w past a store to w on its own). Same expression per element as a plain loop.
template <typename Scalar>
__device__ __forceinline__ void update_row(Scalar* __restrict__ w, const Scalar* __restrict__ s,
                                           Scalar coef, int64_t D, int lane, int group) {
  int64_t d = lane;
  for (; d + 3 * group < D; d += 4 * group) {
    Scalar wv[4], sv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      wv[u] = w[d + u * group];
      sv[u] = s[d + u * group];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) w[d + u * group] = wv[u] + coef * (sv[u] - wv[u]);
  }
  for (; d < D; d += group) w[d] = w[d] + coef * (s[d] - w[d]);
}

// Reduce a Partial over the G lanes of a group (every lane of the warp participates) and
// turn it into the true distance, the same value on every lane of the group.
template <Metric kMetric, typename Scalar>
__device__ __forceinline__ Scalar group_distance(Partial<Scalar> p, int group) {
  for (int offset = group / 2; offset > 0; offset >>= 1) {
    const Scalar other = __shfl_xor_sync(kFullMask, p.acc, offset, group);
    if constexpr (kMetric == Metric::Chebyshev) {
      p.acc = fmax(p.acc, other);
    } else {
      p.acc += other;
    }
    if constexpr (kMetric == Metric::Cosine) {
      p.w_sq += __shfl_xor_sync(kFullMask, p.w_sq, offset, group);
      p.s_sq += __shfl_xor_sync(kFullMask, p.s_sq, offset, group);
    }
  }
  if constexpr (kMetric == Metric::Euclidean) {
    return sqrt(p.acc);
  } else if constexpr (kMetric == Metric::Cosine) {
    return Scalar(1) - p.acc / (sqrt(p.s_sq) * sqrt(p.w_sq) + Scalar(kCosineEps));
  } else {
    return p.acc;
  }
}

// One block per map. kInShared: the map lives in dynamic shared memory (copied in at the
// start, out at the end); otherwise the block works on `weights` in global memory.
template <Metric kMetric, bool kInShared, typename Scalar>
__global__ void __launch_bounds__(kThreads)
som_online_kernel(const Scalar* __restrict__ x,       // (N, D)
                  Scalar* __restrict__ weights,       // (M, K, D) in/out
                  const int64_t* __restrict__ order,  // (M, T)
                  const Scalar* __restrict__ lr,      // (M, T)
                  const Scalar* __restrict__ sigma,   // (M, T)
                  const Scalar* __restrict__ coords,  // (K, 2)
                  int64_t K, int64_t D, int64_t T, Scalar period_0, Scalar period_1,
                  Neighborhood kind, Rule rule, int group) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Scalar* sample = reinterpret_cast<Scalar*>(smem_raw);  // (D,)
  __shared__ Scalar warp_best_v[kWarps];
  __shared__ int warp_best_i[kWarps];
  __shared__ int winner_shared;

  const int64_t m = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int group_lane = lane & (group - 1);  // this lane's position in its node group
  const int group_id = tid / group;           // which node of a pass this lane works on
  const int groups = kThreads / group;        // nodes per pass of the block
  const int64_t map_elems = K * D;

  Scalar* global_map = weights + m * map_elems;
  Scalar* map = global_map;
  if constexpr (kInShared) {
    map = sample + D;
    for (int64_t i = tid; i < map_elems; i += kThreads) map[i] = global_map[i];
  }

  for (int64_t t = 0; t < T; ++t) {
    const int64_t step = m * T + t;
    const Scalar* x_row = x + order[step] * D;
    const Scalar eta = lr[step];
    const Scalar sig = sigma[step];
    for (int64_t d = tid; d < D; d += kThreads) sample[d] = x_row[d];
    __syncthreads();

    // ---- distance pass: running (distance, node) minimum, ties to the lowest node
    Scalar best_v = Scalar(INFINITY);
    int best_i = kNoNode;
    for (int64_t j0 = 0; j0 < K; j0 += groups) {  // uniform trip count: shuffles below
      const int64_t j = j0 + group_id;
      const bool active = j < K;
      Partial<Scalar> p{Scalar(0), Scalar(0), Scalar(0)};
      if (active) p = node_partial<kMetric>(map + j * D, sample, D, group_lane, group);
      Scalar dist = group_distance<kMetric>(p, group);
      if (dist != dist) dist = Scalar(INFINITY);  // NaN ranks last: a winner always exists
      if (active && precedes(dist, static_cast<int>(j), best_v, best_i)) {
        best_v = dist;
        best_i = static_cast<int>(j);
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const Scalar other_v = __shfl_xor_sync(kFullMask, best_v, offset);
      const int other_i = __shfl_xor_sync(kFullMask, best_i, offset);
      if (precedes(other_v, other_i, best_v, best_i)) {
        best_v = other_v;
        best_i = other_i;
      }
    }
    if (lane == 0) {
      warp_best_v[warp] = best_v;
      warp_best_i[warp] = best_i;
    }
    __syncthreads();
    if (tid == 0) {
      Scalar v = warp_best_v[0];
      int i = warp_best_i[0];
      for (int w = 1; w < kWarps; ++w) {
        if (precedes(warp_best_v[w], warp_best_i[w], v, i)) {
          v = warp_best_v[w];
          i = warp_best_i[w];
        }
      }
      winner_shared = i;
    }
    __syncthreads();
    const int64_t winner = winner_shared;

    // ---- update pass: w_j += lr * h_j * (s - w_j)
    if (rule == Rule::Wta) {
      Scalar* w = map + winner * D;
      for (int64_t d = tid; d < D; d += kThreads) w[d] = w[d] + eta * (sample[d] - w[d]);
    } else {
      const Scalar win_0 = coords[2 * winner];
      const Scalar win_1 = coords[2 * winner + 1];
      for (int64_t j0 = 0; j0 < K; j0 += groups) {  // uniform: wtm shuffles below
        const int64_t j = j0 + group_id;
        const bool active = j < K;
        Scalar h;
        if (rule == Rule::Som) {
          h = active ? neighborhood(kind,
                                    lattice_delta(coords[2 * j], win_0, period_0),
                                    lattice_delta(coords[2 * j + 1], win_1, period_1), sig)
                     : Scalar(0);
        } else {  // winner takes most: h of this node's data-space distance
          Partial<Scalar> p{Scalar(0), Scalar(0), Scalar(0)};
          if (active) p = node_partial<kMetric>(map + j * D, sample, D, group_lane, group);
          const Scalar rho = group_distance<kMetric>(p, group);
          h = neighborhood(kind, rho, Scalar(0), sig);
        }
        const Scalar coef = eta * h;
        if (active) {
          Scalar* w = map + j * D;
          update_row(w, sample, coef, D, group_lane, group);
        }
      }
    }
    __syncthreads();
  }

  if constexpr (kInShared) {
    for (int64_t i = tid; i < map_elems; i += kThreads) global_map[i] = map[i];
  }
}

// ---------------------------------------------------------------------------------------
// Cooperative kernel: B blocks per map, each owning a contiguous slice of its nodes.
//
// Block b of map m owns a contiguous slice of ceil(K/B) or floor(K/B) nodes (the larger
// ones first; empty when K < B) and, with kInShared, keeps that slice in dynamic shared
// memory for the whole epoch (copied in at the start, out at the end): the epoch moves no
// weight bytes through DRAM. The grid (M * B blocks) is launched with
// cudaLaunchCooperativeKernel, so every block is resident at once and cooperative_groups'
// grid barrier cannot deadlock. Step t of a block:
//
//   (a) thread 0 publishes the block's best node of step t, (distance, index), in
//       partials[t & 1][m][b];
//   (b) the sample of step t+1, x[order[m, t+1]], is copied into the free half of a
//       double-buffered sample in shared memory (cp.async, in flight across the barrier);
//   (c) grid.sync()                                 -- the only grid barrier of the step
//   (d) every warp reduces the B partials of map m to the winner (ties to the lowest node
//       index, like the one-block kernel and torch.argmin);
//   (e) one fused pass over the slice: w_j += lr * h_j * (s_t - w_j), then, with the
//       updated row still in registers, the row's distance to s_{t+1}, kept per node (the
//       winner-takes-most rule of step t+1 reads it back as rho_j) and folded into the
//       block's running (distance, index) minimum;
//   (f) block reduction of that minimum: the candidate (a) publishes at step t+1.
//
// A prologue computes the distances to s_0 the same way (no update). h_j comes from
// genkernels::som::neighborhood / lattice_delta (csrc/common/som.h), the distances from
// the same accumulate / group_distance code as the one-block kernel.
//
// Why one grid barrier per step is enough:
//   * Weights: a block reads and writes only the rows of its own slice, so no other
//     block ever observes them. Within the block a row (and its per-node distance) is
//     only touched by the lanes of its node's group, the same lanes at every step;
//     the copies in and out are separated from the steps by __syncthreads.
//   * Partials of step t live in half t & 1. They are written in (a) before barrier
//     S_t and read in (d) after S_t, so every read sees every block's write (the grid
//     barrier orders memory; the reads also bypass L1 with ld.global.cg). The next write
//     to the same half is step t+2's (a), which a block reaches only after leaving
//     S_{t+1}; no block leaves S_{t+1} before every block has arrived there, and every
//     block arrives there only after its own step-t reads (d). So a write of step t+2
//     can never overtake a read of step t. Step t+1's writes go to the other half and
//     may overlap step-t reads of slower blocks harmlessly.
//   * Samples: step t+1's copy (b) overwrites the half that held s_{t-1}, whose last
//     readers are step t-1's fused pass (e); the __syncthreads of step t-1's reduction
//     (f) separates the two. The copy is waited for and made visible to the whole block
//     (cp.async wait + __syncthreads) after the grid barrier, before (e) reads it.
//   * The per-warp scratch of (f) is rewritten only after the next grid barrier, which
//     thread 0 reaches only after reading it.
// ---------------------------------------------------------------------------------------

// One block's best node of one step.
template <typename Scalar>
struct Candidate {
  Scalar value;
  int index;
};

// What the fused pass needs to know about the update of the current step.
template <typename Scalar>
struct StepUpdate {
  const Scalar* coords;  // (K, 2)
  Scalar eta, sigma, win_0, win_1, period_0, period_1;
  int64_t winner;
  Neighborhood kind;
  Rule rule;
};

// Running (distance, index) minimum of the calling thread -> the block's minimum in
// thread 0 (other threads: unspecified). Ends with all threads past a __syncthreads.
template <typename Scalar>
__device__ __forceinline__ Candidate<Scalar> block_best(Scalar best_v, int best_i,
                                                        Scalar* warp_best_v, int* warp_best_i) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Scalar other_v = __shfl_xor_sync(kFullMask, best_v, offset);
    const int other_i = __shfl_xor_sync(kFullMask, best_i, offset);
    if (precedes(other_v, other_i, best_v, best_i)) {
      best_v = other_v;
      best_i = other_i;
    }
  }
  if (lane == 0) {
    warp_best_v[warp] = best_v;
    warp_best_i[warp] = best_i;
  }
  __syncthreads();
  Candidate<Scalar> c{warp_best_v[0], warp_best_i[0]};
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      if (precedes(warp_best_v[w], warp_best_i[w], c.value, c.index)) {
        c.value = warp_best_v[w];
        c.index = warp_best_i[w];
      }
    }
  }
  return c;
}

// The winner of a map from its blocks' partials, computed by each warp on its own (every
// lane gets it): no shared-memory broadcast and no extra block barrier.
template <typename Scalar>
__device__ __forceinline__ int64_t map_winner(const Candidate<Scalar>* parts, int B) {
  const int lane = threadIdx.x & 31;
  Scalar v = Scalar(INFINITY);
  int i = kNoNode;
  for (int k = lane; k < B; k += 32) {
    const Scalar other_v = __ldcg(&parts[k].value);
    const int other_i = __ldcg(&parts[k].index);
    if (precedes(other_v, other_i, v, i)) {
      v = other_v;
      i = other_i;
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Scalar other_v = __shfl_xor_sync(kFullMask, v, offset);
    const int other_i = __shfl_xor_sync(kFullMask, i, offset);
    if (precedes(other_v, other_i, v, i)) {
      v = other_v;
      i = other_i;
    }
  }
  return i;
}

// Copies sample row `row` (D values) into shared `dst` asynchronously (cp.async on sm_80+).
template <typename Scalar>
__device__ __forceinline__ void stage_sample(Scalar* dst, const Scalar* __restrict__ row,
                                             int D) {
#pragma unroll 1  // a few asynchronous copies per thread: nothing to gain, registers to lose
  for (int d = threadIdx.x; d < D; d += kThreads) {
    __pipeline_memcpy_async(dst + d, row + d, sizeof(Scalar));
  }
  __pipeline_commit();
}

// One pass over the block's slice (n nodes from global index lo, `passes` uniform trip
// count): with `update`, w_j += coef_j * (s_upd - w_j) (rows with coef_j == 0 are left
// as they are); with `distance`, the distance of the (updated) row to s_next goes to
// node_dist and into the thread's running (distance, index) minimum.
template <Metric kMetric, typename Scalar>
__device__ __forceinline__ void slice_pass(Scalar* __restrict__ slice,
                                           Scalar* __restrict__ node_dist, int lo, int n,
                                           int passes, int D,
                                           const Scalar* __restrict__ s_upd,
                                           const Scalar* __restrict__ s_next, bool update,
                                           bool distance, const StepUpdate<Scalar>& u,
                                           int group, Scalar& best_v, int& best_i) {
  const int group_lane = threadIdx.x & (group - 1);
  const int group_id = threadIdx.x / group;
  const int groups = kThreads / group;
  for (int pass = 0; pass < passes; ++pass) {  // uniform: group shuffles below
    const int local = pass * groups + group_id;
    const bool active = local < n;
    const int j = lo + local;
    Scalar coef = Scalar(0);
    if (update && active) {
      Scalar h;
      if (u.rule == Rule::Som) {
        const Scalar* pos = u.coords + 2 * static_cast<int64_t>(j);
        h = neighborhood(u.kind, lattice_delta(pos[0], u.win_0, u.period_0),
                         lattice_delta(pos[1], u.win_1, u.period_1), u.sigma);
      } else if (u.rule == Rule::Wta) {
        h = j == u.winner ? Scalar(1) : Scalar(0);
      } else {  // winner takes most: rho_j = this node's distance to s_upd, from last pass
        // (read by every lane of the group before the shuffles below, written after them
        // by lane 0 only)
        h = neighborhood(u.kind, node_dist[local], Scalar(0), u.sigma);
      }
      coef = u.eta * h;
    }
    Partial<Scalar> p{Scalar(0), Scalar(0), Scalar(0)};
    if (active) {
      Scalar* w = slice + static_cast<int64_t>(local) * D;
      if (coef != Scalar(0)) {
        for (int d = group_lane; d < D; d += group) {
          const Scalar wv = w[d] + coef * (s_upd[d] - w[d]);
          w[d] = wv;
          if (distance) accumulate<kMetric>(p, s_next[d], wv);
        }
      } else if (distance) {
        for (int d = group_lane; d < D; d += group) accumulate<kMetric>(p, s_next[d], w[d]);
      }
    }
    if (distance) {
      Scalar dist = group_distance<kMetric>(p, group);
      if (active && group_lane == 0) node_dist[local] = dist;  // raw: wtm's rho (NaN stays)
      if (dist != dist) dist = Scalar(INFINITY);  // NaN ranks last: a winner always exists
      if (active && precedes(dist, j, best_v, best_i)) {
        best_v = dist;
        best_i = j;
      }
    }
  }
}

template <Metric kMetric, bool kInShared, typename Scalar>
__global__ void __launch_bounds__(kThreads)
som_online_coop_kernel(const Scalar* __restrict__ x,       // (N, D)
                       Scalar* __restrict__ weights,       // (M, K, D) in/out
                       const int64_t* __restrict__ order,  // (M, T)
                       const Scalar* __restrict__ lr,      // (M, T)
                       const Scalar* __restrict__ sigma,   // (M, T)
                       const Scalar* __restrict__ coords,  // (K, 2)
                       Candidate<Scalar>* __restrict__ partials,  // (2, M, B) scratch
                       int64_t M, int64_t K, int64_t D, int64_t T, int B, Scalar period_0,
                       Scalar period_1, Neighborhood kind, Rule rule, int group) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ Scalar warp_best_v[kWarps];
  __shared__ int warp_best_i[kWarps];
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  // 32-bit indices: M * B blocks, K nodes and D features (the sample fits shared memory)
  // are all below 2^31; fewer live registers across the fp64 division calls
  const int m = static_cast<int>(blockIdx.x) / B;
  const int b = static_cast<int>(blockIdx.x) - m * B;
  const int d_features = static_cast<int>(D);
  const int q = static_cast<int>(K) / B;  // K = q * B + r: r slices of q + 1 nodes, then q
  const int r = static_cast<int>(K) - q * B;
  const int lo = b * q + min(b, r);
  const int n = q + (b < r ? 1 : 0);
  const int capacity = q + (r > 0 ? 1 : 0);  // largest slice: the shared-memory layout
  const int groups = kThreads / group;
  const int passes = (n + groups - 1) / groups;

  Scalar* samples = reinterpret_cast<Scalar*>(smem_raw);  // (2, D) double buffer
  Scalar* node_dist = samples + 2 * d_features;           // (capacity,)
  Scalar* slice = weights + (m * K + lo) * D;
  if constexpr (kInShared) {
    slice = node_dist + capacity;  // (capacity, D)
    const Scalar* src = weights + (m * K + lo) * D;
    for (int i = threadIdx.x; i < n * d_features; i += kThreads) slice[i] = src[i];
  }
  const int64_t map_steps = m * T;  // this map's row of order, lr, sigma

  StepUpdate<Scalar> u{coords, Scalar(0), Scalar(0), Scalar(0), Scalar(0),
                       period_0, period_1, 0, kind, rule};
  stage_sample(samples, x + order[map_steps] * D, d_features);
  __pipeline_wait_prior(0);
  __syncthreads();  // the sample and, with kInShared, the slice
  Scalar best_v = Scalar(INFINITY);
  int best_i = kNoNode;
  slice_pass<kMetric>(slice, node_dist, lo, n, passes, d_features, samples, samples, false, true,
                      u, group, best_v, best_i);
  Candidate<Scalar> mine = block_best(best_v, best_i, warp_best_v, warp_best_i);
  // sample index of step t + 1, loaded one step ahead: no load latency before the barrier
  int64_t next_row = T > 1 ? order[map_steps + 1] : 0;

  for (int64_t t = 0; t < T; ++t) {
    const int parity = static_cast<int>(t & 1);
    const bool has_next = t + 1 < T;
    Scalar* s_cur = samples + parity * d_features;
    Scalar* s_next = samples + (parity ^ 1) * d_features;
    Candidate<Scalar>* map_parts = partials + (parity * M + m) * B;  // this step's half
    if (threadIdx.x == 0) {  // (a)
      __stcg(&map_parts[b].value, mine.value);
      __stcg(&map_parts[b].index, mine.index);
    }
    if (has_next) stage_sample(s_next, x + next_row * D, d_features);  // (b)
    if (t + 2 < T) next_row = order[map_steps + t + 2];
    u.eta = lr[map_steps + t];
    u.sigma = sigma[map_steps + t];
    grid.sync();  // (c)
    u.winner = map_winner(map_parts, B);  // (d)
    if (rule == Rule::Som) {
      u.win_0 = coords[2 * u.winner];
      u.win_1 = coords[2 * u.winner + 1];
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // s_next visible to the whole block
    best_v = Scalar(INFINITY);
    best_i = kNoNode;
    slice_pass<kMetric>(slice, node_dist, lo, n, passes, d_features, s_cur, s_next, true,
                        has_next, u, group, best_v, best_i);  // (e)
    if (has_next) mine = block_best(best_v, best_i, warp_best_v, warp_best_i);  // (f)
  }

  if constexpr (kInShared) {
    __syncthreads();  // rows are updated by their node's group, copied out by any thread
    Scalar* dst = weights + (m * K + lo) * D;
    for (int i = threadIdx.x; i < n * d_features; i += kThreads) dst[i] = slice[i];
  }
}

int group_size(int64_t D) {
  int g = 1;
  while (g < D && g < 32) g <<= 1;
  return g;
}

// Dynamic shared memory of the one-block kernel (sample + map) and of a cooperative block
// (double-buffered sample + per-node distances + its slice), in bytes.
int64_t single_bytes(int64_t K, int64_t D, int64_t scalar, bool in_shared) {
  return (D + (in_shared ? K * D : 0)) * scalar;
}
int64_t coop_bytes(int64_t K, int64_t D, int B, int64_t scalar, bool in_shared) {
  const int64_t capacity = (K + B - 1) / B;
  return (2 * D + capacity + (in_shared ? capacity * D : 0)) * scalar;
}

// Static shared memory (per-warp argmin scratch, winner) plus a margin, bytes; the margin
// includes the 1 KB per block that sm_80+ reserve for the system (reported as static
// shared memory in sm_90 cubins), should the opt-in limit not already exclude it.
template <typename Scalar>
constexpr int64_t kStaticBytes =
    kWarps * (sizeof(Scalar) + sizeof(int)) + sizeof(int) + 64 + 1024;

// A map that fits one block's shared memory but has fewer elements than this stays on
// the one-block kernel even when SMs are idle: its whole step (two passes over <= 64 KB
// of shared memory, three block barriers) costs about as much as one grid barrier
// (~1-2 us with a hundred-odd blocks), so splitting it cannot pay.
constexpr int64_t kCoopMinElements = 16384;
// Resident blocks of kThreads threads per SM at most (2048 threads per SM): a search bound.
constexpr int kMaxBlocksPerSm = 2048 / kThreads;

struct Device {
  int sms = 0;
  int optin = 0;  // shared memory per block, opt-in maximum
  bool cooperative = false;
};

cudaError_t query_device(Device* dev) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&dev->sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&dev->optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  int coop = 0;
  err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err != cudaSuccess) return err;
  dev->cooperative = coop != 0;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t allow_dynamic_shared(Kernel kernel, int64_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// Cooperative configuration for B blocks per map: slice in shared memory when it fits;
// *resident_blocks = how many blocks of that configuration the device holds at once
// (occupancy x SMs; 0 when the sample alone exceeds shared memory). The grid of M * B
// blocks may be launched cooperatively only when M * B <= *resident_blocks.
template <Metric kMetric, typename Scalar>
cudaError_t coop_config(const Device& dev, int64_t M, int64_t K, int64_t D, int B,
                        OnlinePlan* plan, int64_t* resident_blocks) {
  constexpr int64_t scalar = sizeof(Scalar);
  *resident_blocks = 0;
  const bool in_shared =
      coop_bytes(K, D, B, scalar, true) + kStaticBytes<Scalar> <= dev.optin;
  const int64_t bytes = coop_bytes(K, D, B, scalar, in_shared);
  if (bytes + kStaticBytes<Scalar> > dev.optin) return cudaSuccess;  // sample too large
  cudaError_t err;
  int per_sm = 0;
  if (in_shared) {
    auto kernel = som_online_coop_kernel<kMetric, true, Scalar>;
    err = allow_dynamic_shared(kernel, bytes);
    if (err != cudaSuccess) return err;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                        static_cast<size_t>(bytes));
  } else {
    auto kernel = som_online_coop_kernel<kMetric, false, Scalar>;
    err = allow_dynamic_shared(kernel, bytes);
    if (err != cudaSuccess) return err;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                        static_cast<size_t>(bytes));
  }
  if (err != cudaSuccess) return err;
  plan->blocks_per_map = B;
  plan->in_shared = in_shared;
  plan->shared_bytes = bytes;
  plan->workspace_bytes = static_cast<size_t>(2 * M * B) * sizeof(Candidate<Scalar>);
  *resident_blocks = static_cast<int64_t>(per_sm) * dev.sms;
  return cudaSuccess;
}

// The kernel for (M, K, D): see som_online_plan in som.cuh for `requested_blocks`.
//
// Auto choice (requested_blocks == 0), with S SMs:
//   * A map that fits one block's shared memory stays on the one-block kernel when
//     M >= S (one block per map already gives every SM work and keeps every map on chip)
//     or when it has fewer than kCoopMinElements elements (a step is cheaper than a grid
//     barrier).
//   * Otherwise the one-block kernel would leave SMs idle (M < S) and/or stream each map
//     from L2/DRAM every step once it exceeds one block's shared memory (the 40x40x784
//     MNIST map: 5 MB per step through a single SM). The cooperative kernel takes the
//     smallest B >= B0 (B0 = max(2, S / M): with M < S, one block on every SM) whose
//     slices fit shared memory and whose M * B blocks are co-resident; a 5 MB map then
//     sits in 132 slices of ~40 KB of shared memory on an H100.
//   * If no such B exists (slices too large even at the residency limit) and M < S, the
//     cooperative kernel still runs with B0 blocks (or fewer, until co-resident) working
//     on their slices in global memory: B SMs instead of one streaming the map.
//   * Without cooperative launch, or when no B >= 2 is co-resident, the one-block kernel
//     runs: never a grid that could deadlock at its barrier.
// requested_blocks = N > 1 takes B = N when its grid is co-resident, else steps B down
// (to at most what the residency of the last configuration tried allows) until it is;
// slices in shared memory whenever they fit. N = 1 is the one-block kernel.
template <Metric kMetric, typename Scalar>
cudaError_t plan_metric(int64_t M, int64_t K, int64_t D, int requested_blocks,
                        OnlinePlan* plan) {
  constexpr int64_t scalar = sizeof(Scalar);
  Device dev;
  cudaError_t err = query_device(&dev);
  if (err != cudaSuccess) return err;
  const bool single_in_shared =
      single_bytes(K, D, scalar, true) + kStaticBytes<Scalar> <= dev.optin;
  plan->blocks_per_map = 1;
  plan->in_shared = single_in_shared;
  plan->shared_bytes = single_bytes(K, D, scalar, single_in_shared);
  plan->workspace_bytes = 0;
  if (requested_blocks == 1 || !dev.cooperative) return cudaSuccess;
  // no grid can hold more blocks than this (and the bound keeps M * B within int)
  const int64_t max_resident = int64_t{kMaxBlocksPerSm} * dev.sms;
  if (M * 2 > max_resident) return cudaSuccess;

  OnlinePlan coop;
  int64_t resident = 0;
  if (requested_blocks > 1) {
    int64_t B = std::min<int64_t>(requested_blocks, max_resident / M);
    while (B >= 2) {
      err = coop_config<kMetric, Scalar>(dev, M, K, D, static_cast<int>(B), &coop, &resident);
      if (err != cudaSuccess) return err;
      if (M * B <= resident) {
        *plan = coop;
        return cudaSuccess;
      }
      B = std::min(B - 1, resident / M);  // fewer blocks: larger slices, same or less room
    }
    return cudaSuccess;
  }
  if (single_in_shared && (M >= dev.sms || K * D < kCoopMinElements)) return cudaSuccess;
  const int64_t b0 = std::min<int64_t>(K, std::max<int64_t>(2, dev.sms / M));
  const int64_t b_max = std::min<int64_t>(K, max_resident / M);
  for (int64_t B = b0; B <= b_max; ++B) {
    if (coop_bytes(K, D, static_cast<int>(B), scalar, true) + kStaticBytes<Scalar> > dev.optin) {
      continue;  // slices still beyond shared memory: more blocks
    }
    err = coop_config<kMetric, Scalar>(dev, M, K, D, static_cast<int>(B), &coop, &resident);
    if (err != cudaSuccess) return err;
    if (M * B <= resident) {
      *plan = coop;
      return cudaSuccess;
    }  // else smaller slices may let more blocks share an SM: try more blocks
  }
  if (M >= dev.sms) return cudaSuccess;
  int64_t B = b0;
  while (B >= 2) {  // slices in global memory (or whatever fits), B0 blocks or fewer
    err = coop_config<kMetric, Scalar>(dev, M, K, D, static_cast<int>(B), &coop, &resident);
    if (err != cudaSuccess) return err;
    if (M * B <= resident) {
      *plan = coop;
      return cudaSuccess;
    }
    B = std::min(B - 1, resident / M);
  }
  return cudaSuccess;
}

template <Metric kMetric, typename Scalar>
cudaError_t launch_single(const Scalar* x, Scalar* weights, const int64_t* order,
                          const Scalar* lr, const Scalar* sigma, const Scalar* coords, int64_t M,
                          int64_t K, int64_t D, int64_t T, Scalar period_0, Scalar period_1,
                          Neighborhood kind, Rule rule, bool in_shared, cudaStream_t stream) {
  const int group = group_size(D);
  const dim3 grid(static_cast<unsigned>(M));
  const dim3 block(kThreads);
  const int64_t bytes = single_bytes(K, D, sizeof(Scalar), in_shared);
  cudaError_t err;
  if (in_shared) {
    auto kernel = som_online_kernel<kMetric, true, Scalar>;
    err = allow_dynamic_shared(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, block, static_cast<size_t>(bytes), stream>>>(
        x, weights, order, lr, sigma, coords, K, D, T, period_0, period_1, kind, rule, group);
  } else {
    auto kernel = som_online_kernel<kMetric, false, Scalar>;
    err = allow_dynamic_shared(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<grid, block, static_cast<size_t>(bytes), stream>>>(
        x, weights, order, lr, sigma, coords, K, D, T, period_0, period_1, kind, rule, group);
  }
  return cudaGetLastError();
}

template <Metric kMetric, typename Scalar>
cudaError_t launch_coop(const Scalar* x, Scalar* weights, const int64_t* order, const Scalar* lr,
                        const Scalar* sigma, const Scalar* coords, int64_t M, int64_t K,
                        int64_t D, int64_t T, Scalar period_0, Scalar period_1,
                        Neighborhood kind, Rule rule, const OnlinePlan& plan, void* workspace,
                        cudaStream_t stream) {
  int B = plan.blocks_per_map;
  int group = group_size(D);
  auto* partials = static_cast<Candidate<Scalar>*>(workspace);
  void* args[] = {&x,   &weights, &order,    &lr,       &sigma, &coords, &partials,
                  &M,   &K,       &D,        &T,        &B,     &period_0, &period_1,
                  &kind, &rule,   &group};
  const dim3 grid(static_cast<unsigned>(M * B));
  const dim3 block(kThreads);
  auto in_shared_kernel = som_online_coop_kernel<kMetric, true, Scalar>;
  auto global_kernel = som_online_coop_kernel<kMetric, false, Scalar>;
  const void* kernel = plan.in_shared ? reinterpret_cast<const void*>(in_shared_kernel)
                                      : reinterpret_cast<const void*>(global_kernel);
  cudaError_t err = plan.in_shared ? allow_dynamic_shared(in_shared_kernel, plan.shared_bytes)
                                   : allow_dynamic_shared(global_kernel, plan.shared_bytes);
  if (err != cudaSuccess) return err;
  err = cudaLaunchCooperativeKernel(kernel, grid, block, args,
                                    static_cast<size_t>(plan.shared_bytes), stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    // The occupancy check said the grid fits; should the driver disagree (another
    // context holding SMs, a changed limit), run the one-block kernel rather than fail.
    (void)cudaGetLastError();  // clear the launch error
    Device dev;
    err = query_device(&dev);
    if (err != cudaSuccess) return err;
    const bool in_shared =
        single_bytes(K, D, sizeof(Scalar), true) + kStaticBytes<Scalar> <= dev.optin;
    return launch_single<kMetric>(x, weights, order, lr, sigma, coords, M, K, D, T, period_0,
                                  period_1, kind, rule, in_shared, stream);
  }
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template <Metric kMetric, typename Scalar>
cudaError_t launch_metric(const Scalar* x, Scalar* weights, const int64_t* order,
                          const Scalar* lr, const Scalar* sigma, const Scalar* coords, int64_t M,
                          int64_t K, int64_t D, int64_t T, Scalar period_0, Scalar period_1,
                          Neighborhood kind, Rule rule, const OnlinePlan& plan, void* workspace,
                          cudaStream_t stream) {
  if (plan.blocks_per_map <= 1) {
    return launch_single<kMetric>(x, weights, order, lr, sigma, coords, M, K, D, T, period_0,
                                  period_1, kind, rule, plan.in_shared, stream);
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  return launch_coop<kMetric>(x, weights, order, lr, sigma, coords, M, K, D, T, period_0,
                              period_1, kind, rule, plan, workspace, stream);
}

}  // namespace

template <typename Scalar>
cudaError_t som_online_plan(int64_t M, int64_t K, int64_t D, int metric, int requested_blocks,
                            OnlinePlan* plan) {
  *plan = OnlinePlan{};
  if (M == 0 || K == 0) return cudaSuccess;
  if (requested_blocks < 0) return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<Metric>(metric)) {
    case Metric::Euclidean:
      err = plan_metric<Metric::Euclidean, Scalar>(M, K, D, requested_blocks, plan);
      break;
    case Metric::Cosine:
      err = plan_metric<Metric::Cosine, Scalar>(M, K, D, requested_blocks, plan);
      break;
    case Metric::Manhattan:
      err = plan_metric<Metric::Manhattan, Scalar>(M, K, D, requested_blocks, plan);
      break;
    case Metric::Chebyshev:
      err = plan_metric<Metric::Chebyshev, Scalar>(M, K, D, requested_blocks, plan);
      break;
  }
  return err;
}

template <typename Scalar>
cudaError_t som_online_launch(const Scalar* x, Scalar* weights, const int64_t* order,
                              const Scalar* lr, const Scalar* sigma, const Scalar* coords,
                              int64_t M, int64_t K, int64_t D, int64_t T, Scalar period_0,
                              Scalar period_1, int neighborhood, int rule, int metric,
                              const OnlinePlan& plan, void* workspace, cudaStream_t stream) {
  if (M == 0 || T == 0 || K == 0) return cudaSuccess;
  const auto nb = static_cast<Neighborhood>(neighborhood);
  const auto r = static_cast<Rule>(rule);
  switch (static_cast<Metric>(metric)) {
    case Metric::Euclidean:
      return launch_metric<Metric::Euclidean>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, plan, workspace, stream);
    case Metric::Cosine:
      return launch_metric<Metric::Cosine>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                           period_0, period_1, nb, r, plan, workspace, stream);
    case Metric::Manhattan:
      return launch_metric<Metric::Manhattan>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, plan, workspace, stream);
    case Metric::Chebyshev:
      return launch_metric<Metric::Chebyshev>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, plan, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

template cudaError_t som_online_plan<float>(int64_t, int64_t, int64_t, int, int, OnlinePlan*);
template cudaError_t som_online_plan<double>(int64_t, int64_t, int64_t, int, int, OnlinePlan*);
template cudaError_t som_online_launch<float>(const float*, float*, const int64_t*, const float*,
                                              const float*, const float*, int64_t, int64_t,
                                              int64_t, int64_t, float, float, int, int, int,
                                              const OnlinePlan&, void*, cudaStream_t);
template cudaError_t som_online_launch<double>(const double*, double*, const int64_t*,
                                               const double*, const double*, const double*,
                                               int64_t, int64_t, int64_t, int64_t, double, double,
                                               int, int, int, const OnlinePlan&, void*,
                                               cudaStream_t);

}  // namespace genkernels::som::cuda
