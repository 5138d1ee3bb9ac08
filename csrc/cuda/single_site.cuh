// One single-site sweep of a thread block, shared by the Hopfield recall and Boltzmann
// Gibbs kernels (csrc/cuda/hopfield.cu, boltzmann.cu): one block per probe or chain, its
// fields and state in shared memory (or its global scratch slice); the family supplies
// only the rule that picks a unit's next state (sign of the field, or a Bernoulli draw).
//
// The units in the visiting order (csrc/cuda/visiting_order.cuh): every thread calls the
// rule, which reads what it needs of unit i (s[i], h[i], a uniform) broadcast from
// shared memory, so all threads take the same decision.
// No change: nothing is written, the next unit follows at once. A change by
// delta = next - old (+-2 for +-1 states, +-1 for 0/1 states):
//   __syncthreads  (all reads of h[i], s[i] are done before any write)
//   h[j] += delta * W[i, j] for the thread's units j (row i of W = column i),
//   thread 0 writes s[i];
//   __syncthreads  (the next unit reads the updated fields).
// The product by a small power of two is exact, so whether nvcc contracts it into an FMA
// or not the one rounding is the addition's, as in the references' h.add_(W[i], alpha).
#pragma once
#include <cstdint>

namespace genkernels::cuda_common {

// w (n, n) row-major; h (n,) and s (n,) the block's fields and states; the units in
// order[0..n) when random_order, else 0..n-1; thread tid of `threads` updates the fields
// tid, tid + threads, ... rule(i) returns unit i's next state (int8_t), the same in every
// thread. Returns the number of units that changed (the same in every thread).
//
// The rule reads h[i] after any test that skips the unit (a clamped Boltzmann unit reads
// no field; reading it before the test costs the Boltzmann kernel up to two registers on
// sm_80 / sm_90). delta is the difference of the two states as Scalars, exact for these
// small integers (Scalar(next - old) costs the fp32 Boltzmann kernel a register on sm_80).
template <typename Scalar, typename Rule>
__device__ __forceinline__ int64_t single_site_sweep(const Scalar* __restrict__ w, int64_t n, Scalar* h,
                                                     int8_t* s, bool random_order, const int32_t* order,
                                                     int64_t tid, int64_t threads, Rule rule) {
  int64_t flips = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = random_order ? static_cast<int64_t>(order[k]) : k;
    const int8_t next = rule(i);
    const int8_t old = s[i];
    if (next == old) continue;  // uniform across the block: every thread read the same
    ++flips;
    __syncthreads();
    const Scalar delta = static_cast<Scalar>(next) - static_cast<Scalar>(old);
    const Scalar* __restrict__ row = w + i * n;
    for (int64_t j = tid; j < n; j += threads) h[j] += delta * row[j];
    if (tid == 0) s[i] = next;
    __syncthreads();
  }
  return flips;
}

}  // namespace genkernels::cuda_common
