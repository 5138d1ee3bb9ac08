// CPU kernel of sequential Gibbs sweeps in general Boltzmann machines (schema in
// csrc/genkernels.cpp; spec genkernels/boltzmann/bm_reference.py gibbs, which this follows
// step for step):
//
//   bm_gibbs  the fields of every chain start as one at::addmm (states @ W + b, the
//             reference's product); each chain then runs its S sweeps alone, in parallel
//             over chains (OpenMP, one thread below kParallelMinWork). Sweep t of chain c
//             draws the Philox words of counters offset + (c * S + t) * N + i
//             (csrc/common/philox.h): word 0 keys the random order (a stable argsort:
//             sorting (key << 32 | unit) as uint64), word 1 is unit i's uniform. A visited,
//             unclamped unit turns on iff u < 1 / (1 + exp(-h / T)) (in the fields'
//             dtype; csrc/common/boltzmann.h, the arithmetic the CUDA kernel runs); a
//             change by delta = +-1 updates h += delta * W[i, :] (row i = column i), one
//             rounding per element as in the reference's h.add_(W[i], alpha) -- the
//             sweep of csrc/cpu/single_site.h, which Hopfield recall runs too.
//
// States are kept as int8 per chain; fields in W's dtype (fp32 or fp64).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "parallel_region.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

#include "aten/boltzmann_checks.h"
#include "cpu/single_site.h"
#include "cpu/visiting_order.h"
#include "common/boltzmann.h"
#include "common/philox.h"

namespace genkernels::boltzmann::cpu {
namespace {

// Below this many weight reads per call (C * S * N^2) the thread team costs more than
// it saves.
constexpr int64_t kParallelMinWork = int64_t{1} << 22;

template <typename scalar_t>
void run_chain(const scalar_t* __restrict__ w, const scalar_t* __restrict__ temps,
               const bool* __restrict__ clamp, int64_t n, int64_t n_sweeps,
               scalar_t* __restrict__ fields, int8_t* __restrict__ state, int64_t chain,
               bool random_order, uint64_t seed, uint64_t offset) {
  genkernels::cpu::VisitingOrder order(n, random_order);
  const int64_t* units = order.units();
  std::vector<float> uniform(n);
  for (int64_t t = 0; t < n_sweeps; ++t) {
    const uint64_t first = offset + (static_cast<uint64_t>(chain) * static_cast<uint64_t>(n_sweeps) +
                                     static_cast<uint64_t>(t)) * static_cast<uint64_t>(n);
    for (int64_t i = 0; i < n; ++i) {
      const random::Uint4 r = random::randint4x(seed, first + static_cast<uint64_t>(i));
      uniform[i] = random::uint_to_uniform_float(r.y);
      if (random_order) order.set_key(i, r.x);
    }
    if (random_order) units = order.sort();
    const scalar_t temp = temps[t];
    // a clamped unit keeps its state; any other turns on iff u < p (csrc/common/boltzmann.h)
    genkernels::cpu::single_site_sweep(w, n, fields, state, units, [&](int64_t i) {
      if (clamp[i]) return state[i];
      return unit_turns_on(fields[i], temp, uniform[i]) ? int8_t{1} : int8_t{0};
    });
  }
}

// Chain c owns row c of fields and states.
template <typename scalar_t>
void run_chains(const scalar_t* w, const scalar_t* temps, const bool* clamp, int64_t n,
                int64_t n_sweeps, int64_t c_count, scalar_t* fields, int8_t* states,
                bool random_order, uint64_t seed, uint64_t offset, bool parallel) {
  // one chain per chunk, claimed dynamically; one thread below the cost model or on a
  // busy machine (parallel_region.h)
  genkernels::cpu::parallel_chunks(c_count, parallel ? genkernels::cpu::team_size(c_count) : 1,
                                   [&](int64_t c, int) {
    run_chain<scalar_t>(w, temps, clamp, n, n_sweeps, fields + c * n, states + c * n, c,
                        random_order, seed, offset);
  });
}

// weights (N, N) symmetric zero diagonal, bias (N,), states (C, N) in {0, 1}, clamp (N,)
// bool, temperatures (S,) > 0; all floats in one dtype (fp32/fp64). Returns (C, N).
at::Tensor bm_gibbs_cpu(const at::Tensor& weights, const at::Tensor& bias, const at::Tensor& states,
                        const at::Tensor& clamp, const at::Tensor& temperatures, bool random_order,
                        int64_t seed, int64_t offset) {
  check_gibbs_args(weights, bias, states, clamp, temperatures);
  const int64_t n = weights.size(0);
  const int64_t c_count = states.size(0), n_sweeps = temperatures.size(0);
  if (c_count == 0 || n == 0 || n_sweeps == 0) return states.clone();

  const at::Tensor w = weights.contiguous();
  const at::Tensor s_in = states.contiguous();
  const bool parallel = c_count > 1 && c_count * n_sweeps * n * n >= kParallelMinWork;
  at::Tensor fields;
  {
    // below the cost model the product runs on this thread too: between calls MKL's team
    // falls asleep, and beside a busy process waking it cost a time slice (10 chains of
    // 20 units: 0.43 ms on 2 threads against 0.18 ms on 1)
    std::optional<genkernels::cpu::blas::Sequential> sequential_blas;
    if (!parallel) sequential_blas.emplace();
    fields = at::addmm(bias, s_in, w).contiguous();  // the reference's torch.addmm(bias, states, W)
  }
  at::Tensor s8 = s_in.gt(0.5).to(at::kChar).contiguous();
  const at::Tensor clamp_c = clamp.contiguous();
  const at::Tensor temps = temperatures.contiguous();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "bm_gibbs", [&] {
    run_chains<scalar_t>(w.const_data_ptr<scalar_t>(), temps.const_data_ptr<scalar_t>(),
                         clamp_c.const_data_ptr<bool>(), n, n_sweeps, c_count,
                         fields.mutable_data_ptr<scalar_t>(), s8.mutable_data_ptr<int8_t>(),
                         random_order, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                         parallel);
  });
  return s8.to(states.scalar_type());
}

}  // namespace
}  // namespace genkernels::boltzmann::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("bm_gibbs", &genkernels::boltzmann::cpu::bm_gibbs_cpu);
}
