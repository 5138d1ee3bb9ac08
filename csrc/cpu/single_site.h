// One single-site sweep on the cpu, shared by Hopfield recall (csrc/cpu/hopfield.cpp) and
// Boltzmann Gibbs sweeps (csrc/cpu/boltzmann.cpp); the family supplies only the rule that
// picks a unit's next state (sign of the field, or a Bernoulli draw).
//
// The units are visited in the given order (csrc/cpu/visiting_order.h). A unit whose
// next state differs from its state changes by delta = next - old (+-2 for +-1 states,
// +-1 for 0/1 states) and every field takes h[j] += delta * W[i, j] -- row i of the
// symmetric W (= column i), contiguous, a vectorised loop. The product by a small
// power of two is exact, so with or without FMA the one rounding is the addition's, as in
// the references' h.add_(W[i], alpha=delta).
#pragma once
#include <cstdint>

namespace genkernels::cpu {

// w (n, n) row-major, fields (n,) and state (n,) of one chain or probe, updated in place;
// units: the visiting order (n unit indices). rule(i) returns unit i's next state
// (int8_t), reading what it needs (state[i], fields[i]) itself -- a clamped Boltzmann unit
// reads no field -- as the cuda sweep's rule does (csrc/cuda/single_site.cuh). Returns
// the number of units that changed.
template <typename scalar_t, typename Rule>
int64_t single_site_sweep(const scalar_t* __restrict__ w, int64_t n, scalar_t* __restrict__ fields,
                          int8_t* __restrict__ state, const int64_t* __restrict__ units, Rule&& rule) {
  int64_t flips = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = units[k];
    const int8_t next = rule(i);
    const int8_t old = state[i];
    if (next == old) continue;
    state[i] = next;
    ++flips;
    const scalar_t delta = static_cast<scalar_t>(next - old);
    const scalar_t* __restrict__ row = w + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) fields[j] += delta * row[j];
  }
  return flips;
}

}  // namespace genkernels::cpu
