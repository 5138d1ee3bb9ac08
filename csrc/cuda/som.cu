// Persistent online-SOM kernel: one thread block per map walks the whole epoch.
//
// Kohonen's sequential rule is a chain of T dependent steps per map, which a grid of
// short kernels would serialise on launch latency; here each block owns one map for all
// T steps and keeps it in shared memory when (K * D + D) * sizeof(Scalar) fits the
// opt-in limit (else it works on the global copy, which stays L2-resident for the map
// sizes of interest). Each step:
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
// only CUDA headers and csrc/common (see DESIGN.md, "Testing").
#include <cuda_runtime.h>

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

template <Metric kMetric, typename Scalar>
__device__ __forceinline__ Partial<Scalar> node_partial(const Scalar* __restrict__ w,
                                                        const Scalar* __restrict__ s,
                                                        int64_t D, int lane, int group) {
  Partial<Scalar> p{Scalar(0), Scalar(0), Scalar(0)};
  for (int64_t d = lane; d < D; d += group) {
    const Scalar sv = s[d];
    const Scalar wv = w[d];
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
  return p;
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
          for (int64_t d = group_lane; d < D; d += group) w[d] = w[d] + coef * (sample[d] - w[d]);
        }
      }
    }
    __syncthreads();
  }

  if constexpr (kInShared) {
    for (int64_t i = tid; i < map_elems; i += kThreads) global_map[i] = map[i];
  }
}

int group_size(int64_t D) {
  int g = 1;
  while (g < D && g < 32) g <<= 1;
  return g;
}

template <Metric kMetric, typename Scalar>
cudaError_t launch_metric(const Scalar* x, Scalar* weights, const int64_t* order,
                          const Scalar* lr, const Scalar* sigma, const Scalar* coords, int64_t M,
                          int64_t K, int64_t D, int64_t T, Scalar period_0, Scalar period_1,
                          Neighborhood kind, Rule rule, cudaStream_t stream) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int optin = 0;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  // static shared: the per-warp argmin scratch
  const int64_t static_bytes = kWarps * (sizeof(Scalar) + sizeof(int)) + sizeof(int) + 64;
  const int64_t sample_bytes = D * static_cast<int64_t>(sizeof(Scalar));
  const int64_t map_bytes = K * D * static_cast<int64_t>(sizeof(Scalar));
  const bool in_shared = sample_bytes + map_bytes + static_bytes <= optin;
  const int group = group_size(D);
  const dim3 grid(static_cast<unsigned>(M));
  const dim3 block(kThreads);
  if (in_shared) {
    const size_t bytes = static_cast<size_t>(sample_bytes + map_bytes);
    auto kernel = som_online_kernel<kMetric, true, Scalar>;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    kernel<<<grid, block, bytes, stream>>>(x, weights, order, lr, sigma, coords, K, D, T,
                                          period_0, period_1, kind, rule, group);
  } else {
    const size_t bytes = static_cast<size_t>(sample_bytes);
    auto kernel = som_online_kernel<kMetric, false, Scalar>;
    if (bytes > 48 * 1024) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes));
      if (err != cudaSuccess) return err;
    }
    kernel<<<grid, block, bytes, stream>>>(x, weights, order, lr, sigma, coords, K, D, T,
                                          period_0, period_1, kind, rule, group);
  }
  return cudaGetLastError();
}

}  // namespace

template <typename Scalar>
cudaError_t som_online_launch(const Scalar* x, Scalar* weights, const int64_t* order,
                              const Scalar* lr, const Scalar* sigma, const Scalar* coords,
                              int64_t M, int64_t K, int64_t D, int64_t T, Scalar period_0,
                              Scalar period_1, int neighborhood, int rule, int metric,
                              cudaStream_t stream) {
  if (M == 0 || T == 0 || K == 0) return cudaSuccess;
  const auto nb = static_cast<Neighborhood>(neighborhood);
  const auto r = static_cast<Rule>(rule);
  switch (static_cast<Metric>(metric)) {
    case Metric::Euclidean:
      return launch_metric<Metric::Euclidean>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, stream);
    case Metric::Cosine:
      return launch_metric<Metric::Cosine>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                           period_0, period_1, nb, r, stream);
    case Metric::Manhattan:
      return launch_metric<Metric::Manhattan>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, stream);
    case Metric::Chebyshev:
      return launch_metric<Metric::Chebyshev>(x, weights, order, lr, sigma, coords, M, K, D, T,
                                              period_0, period_1, nb, r, stream);
  }
  return cudaErrorInvalidValue;
}

template cudaError_t som_online_launch<float>(const float*, float*, const int64_t*, const float*,
                                              const float*, const float*, int64_t, int64_t,
                                              int64_t, int64_t, float, float, int, int, int,
                                              cudaStream_t);
template cudaError_t som_online_launch<double>(const double*, double*, const int64_t*,
                                               const double*, const double*, const double*,
                                               int64_t, int64_t, int64_t, int64_t, double, double,
                                               int, int, int, cudaStream_t);

}  // namespace genkernels::som::cuda
