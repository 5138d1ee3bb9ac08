// Persistent asynchronous-recall kernel of Hopfield networks: one thread block per probe
// walks all of that probe's sweeps in one launch (spec: genkernels/hopfield/recall_reference.py
// recall_async, reproduced bit for bit from the same starting fields).
//
// A probe's working set -- fields h (N x Scalar), the sweep's Philox keys (N x uint32),
// its visiting order (N x int32) and the state (N x int8) -- lives in dynamic shared
// memory when it fits the opt-in limit (fp32: N <= ~17,000 on sm_90), else in a global
// scratch slice of its own (L2-resident for the sizes of interest). Per sweep:
//
//   1. random order: every thread draws the keys randint(seed, offset + (b * max_sweeps
//      + t) * N + j) of its units (csrc/common/philox.h); __syncthreads; then the rank of
//      unit j -- the number of units whose key is smaller, or equal with a smaller index
//      -- is its position, order[rank] = j: the stable argsort the reference takes, in
//      O(N^2 / threads) compares, the same order of work as the sweep itself.
//                                                                      __syncthreads
//   2. the units in that order (csrc/cuda/single_site.cuh, the sweep the Boltzmann Gibbs
//      kernel runs too): every thread reads h[i] and s[i] (broadcast from shared memory)
//      and takes the same decision (sign of h, a field of exactly 0 keeps the state). No
//      flip: nothing is written, the next unit follows at once. A flip to s_i:
//        __syncthreads  (all reads of h[i], s[i] are done before any write)
//        h[j] += (2 s_i) * W[i, j] for the thread's units j (row i of W = column i),
//        thread 0 writes s[i];
//        __syncthreads  (the next unit reads the updated fields).
//      The product by +-2 is exact, so whether nvcc contracts it into an FMA or not the
//      one rounding is the addition's, as in the reference's h.add_(W[i], alpha=2 s_i).
//   3. a sweep without a flip ends the probe (converged); otherwise after max_sweeps.
//
// Between sweeps no extra barrier is needed: the unit loop never reads the keys, and the
// order is rewritten only after the __syncthreads that follows the keys, which a thread
// passes only once every thread has left the previous sweep's loop. Sequential order
// reads no shared order at all.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/philox.h"
#include "cuda/single_site.cuh"
#include "cuda/visiting_order.cuh"
#include "cuda/shared_limit.cuh"
#include "cuda/hopfield.cuh"

namespace genkernels::hopfield::cuda {
namespace {

constexpr int kThreads = 256;

// Bytes of one probe's working set, rounded up to 16 so that every probe's slice of the
// global scratch starts aligned for its Scalar fields.
template <typename Scalar>
__host__ __device__ int64_t probe_bytes(int64_t n) {
  const int64_t raw = n * static_cast<int64_t>(sizeof(Scalar) + sizeof(uint32_t) + sizeof(int32_t) + 1);
  return (raw + 15) / 16 * 16;
}

template <typename Scalar>
__global__ void __launch_bounds__(kThreads)
hopfield_recall_async_kernel(const Scalar* __restrict__ w,     // (N, N)
                             const Scalar* __restrict__ fields_in,  // (B, N)
                             int8_t* __restrict__ states,      // (B, N) in/out
                             bool* __restrict__ converged,     // (B,)
                             unsigned char* __restrict__ scratch,  // nullptr: shared memory
                             int64_t n, int64_t max_sweeps, bool random_order, uint64_t seed,
                             uint64_t offset) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  unsigned char* base = scratch != nullptr ? scratch + b * probe_bytes<Scalar>(n) : smem_raw;
  Scalar* h = reinterpret_cast<Scalar*>(base);
  uint32_t* keys = reinterpret_cast<uint32_t*>(h + n);
  int32_t* order = reinterpret_cast<int32_t*>(keys + n);
  int8_t* s = reinterpret_cast<int8_t*>(order + n);

  const Scalar* h_in = fields_in + b * n;
  int8_t* s_io = states + b * n;
  for (int64_t j = tid; j < n; j += kThreads) {
    h[j] = h_in[j];
    s[j] = s_io[j];
  }
  __syncthreads();

  bool done = false;
  for (int64_t t = 0; t < max_sweeps && !done; ++t) {
    if (random_order) {
      const uint64_t first =
          offset + (static_cast<uint64_t>(b) * static_cast<uint64_t>(max_sweeps) +
                    static_cast<uint64_t>(t)) * static_cast<uint64_t>(n);
      for (int64_t j = tid; j < n; j += kThreads) {
        keys[j] = random::randint(seed, first + static_cast<uint64_t>(j));
      }
      __syncthreads();
      cuda_common::visiting_order(keys, order, n, tid, kThreads);
    }
    // a visited unit takes the sign of its field; a field of exactly 0 keeps its state
    const int64_t flips = cuda_common::single_site_sweep(
        w, n, h, s, random_order, order, tid, kThreads,
        [&](int64_t i) {
          const int8_t si = s[i];
          const Scalar hi = h[i];
          return hi > Scalar(0) ? int8_t{1} : (hi < Scalar(0) ? int8_t{-1} : si);
        });
    done = flips == 0;
  }
  for (int64_t j = tid; j < n; j += kThreads) s_io[j] = s[j];
  if (tid == 0) converged[b] = done;
}

// GENKERNELS_HOPFIELD_GLOBAL=1 keeps every working set in the global scratch (tests cover that path)
constexpr const char* kForceGlobalEnv = "GENKERNELS_HOPFIELD_GLOBAL";

}  // namespace

template <typename Scalar>
cudaError_t hopfield_scratch_bytes(int64_t B, int64_t N, int64_t* bytes) {
  return cuda_common::scratch_bytes(kForceGlobalEnv, probe_bytes<Scalar>(N), B, bytes);
}

template <typename Scalar>
cudaError_t hopfield_recall_async_launch(const Scalar* weights, Scalar* fields, int8_t* states,
                                         bool* converged, void* scratch, int64_t B, int64_t N,
                                         int64_t max_sweeps, bool random_order, uint64_t seed,
                                         uint64_t offset, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  auto kernel = hopfield_recall_async_kernel<Scalar>;
  bool in_shared = false;
  size_t dynamic = 0;
  const cudaError_t err = cuda_common::place_working_set(
      kForceGlobalEnv, kernel, probe_bytes<Scalar>(N), scratch != nullptr, &in_shared, &dynamic);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(B), kThreads, dynamic, stream>>>(
      weights, fields, states, converged,
      in_shared ? nullptr : static_cast<unsigned char*>(scratch), N, max_sweeps, random_order, seed,
      offset);
  return cudaGetLastError();
}

template cudaError_t hopfield_recall_async_launch<float>(const float*, float*, int8_t*, bool*, void*,
                                                         int64_t, int64_t, int64_t, bool, uint64_t,
                                                         uint64_t, cudaStream_t);
template cudaError_t hopfield_recall_async_launch<double>(const double*, double*, int8_t*, bool*,
                                                          void*, int64_t, int64_t, int64_t, bool,
                                                          uint64_t, uint64_t, cudaStream_t);
template cudaError_t hopfield_scratch_bytes<float>(int64_t, int64_t, int64_t*);
template cudaError_t hopfield_scratch_bytes<double>(int64_t, int64_t, int64_t*);

}  // namespace genkernels::hopfield::cuda
