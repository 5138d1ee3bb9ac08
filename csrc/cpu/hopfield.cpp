// CPU kernel of asynchronous Hopfield recall (schema in csrc/genkernels.cpp, spec in
// genkernels/hopfield/recall_reference.py, which this reproduces bit for bit):
//
//   hopfield_recall_async  the fields of every probe start as one at::mm (states @ W, the
//                          product the reference takes); then each probe runs its sweeps
//                          alone, in parallel over probes (OpenMP, dynamic: probes converge
//                          after different numbers of sweeps). A sweep visits every unit
//                          once (csrc/cpu/single_site.h); when unit i flips to s_i,
//                          h += (2 s_i) * W[i, :] -- row i (= column i, W symmetric),
//                          contiguous, a vectorised loop. The product by +-2 is exact, so
//                          with or without FMA the one rounding is the addition's, as in
//                          the reference's h.add_(W[i], alpha).
//
// Random order: sweep t of probe b sorts the units by the Philox keys of counters
// offset + (b * max_sweeps + t) * N + j (csrc/common/philox.h), ties in ascending unit order
// -- the reference's stable argsort. Sorting (key << 32 | unit) as uint64 gives that order.
//
// States are kept as int8 per probe (N bytes); fields in W's dtype (fp32 or fp64).
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include "parallel_region.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include "common/philox.h"
#include "aten/hopfield_checks.h"
#include "cpu/single_site.h"
#include "cpu/visiting_order.h"

namespace genkernels::hopfield::cpu {
namespace {

using genkernels::hopfield::check_recall_args;
using genkernels::hopfield::prepare_recall;
using genkernels::hopfield::RecallInputs;

template <typename scalar_t>
void recall_one(const scalar_t* __restrict__ w, int64_t n, scalar_t* __restrict__ fields,
                int8_t* __restrict__ state, int64_t probe, int64_t max_sweeps, bool random_order,
                uint64_t seed, uint64_t offset, bool* converged) {
  genkernels::cpu::VisitingOrder order(n, random_order);
  const int64_t* units = order.units();
  *converged = false;
  for (int64_t t = 0; t < max_sweeps; ++t) {
    if (random_order) {
      const uint64_t first = offset + (static_cast<uint64_t>(probe) * static_cast<uint64_t>(max_sweeps) +
                                       static_cast<uint64_t>(t)) * static_cast<uint64_t>(n);
      // unit j's key: randint(seed, first + j) (word 0)
      for (int64_t j = 0; j < n; ++j) order.set_key(j, random::randint(seed, first + static_cast<uint64_t>(j)));
      units = order.sort();
    }
    // a visited unit takes the sign of its field; a field of exactly 0 keeps its state
    const int64_t flips = genkernels::cpu::single_site_sweep(
        w, n, fields, state, units, [&](int64_t i) {
          const scalar_t h = fields[i];
          return h > scalar_t(0) ? int8_t{1} : (h < scalar_t(0) ? int8_t{-1} : state[i]);
        });
    if (flips == 0) {
      *converged = true;
      return;
    }
  }
}

// Every probe b owns row b of fields and states; probes converge after different numbers
// of sweeps, hence the dynamic schedule. Below kParallelMinUnits^2 weights per probe a
// sweep takes microseconds and waking the thread team costs more than it saves (on a
// loaded 2-core machine, 8 probes of N = 300: 56 ms with 2 threads, 0.4 ms with one).
constexpr int64_t kParallelMinUnits = 512;

template <typename scalar_t>
void recall_batch(const scalar_t* w, scalar_t* fields, int8_t* states, int64_t b_count, int64_t n,
                  int64_t max_sweeps, bool random_order, uint64_t seed, uint64_t offset,
                  bool* converged) {
  const int team = b_count > 1 && n >= kParallelMinUnits ? genkernels::cpu::team_size(b_count) : 1;
  genkernels::cpu::parallel_chunks(b_count, team, [&](int64_t b, int) {
    recall_one<scalar_t>(w, n, fields + b * n, states + b * n, b, max_sweeps, random_order, seed,
                         offset, converged + b);
  });
}

// weights (N, N) fp32/fp64 symmetric; states (B, N) +-1 in weights' dtype.
// Returns the final states (B, N) in that dtype and converged (B,) bool.
std::tuple<at::Tensor, at::Tensor> hopfield_recall_async_cpu(const at::Tensor& weights,
                                                             const at::Tensor& states,
                                                             int64_t max_sweeps, bool random_order,
                                                             int64_t seed, int64_t offset) {
  check_recall_args(weights, states, max_sweeps);
  // below the cost model the whole call runs on the calling thread, the fields' product
  // and the casts too (beside a busy process, batch 10 of N = 64 took 2x -- 20x its one-
  // thread time on 2 threads while MKL's team for the product waited for its second thread)
  const genkernels::cpu::SoloScope solo(weights.size(0) < kParallelMinUnits);
  RecallInputs in = prepare_recall(weights, states, max_sweeps);
  if (in.finished) return in.early;
  const int64_t b_count = states.size(0), n = weights.size(0);
  bool* conv = in.converged.mutable_data_ptr<bool>();
  int8_t* s_ptr = in.states8.mutable_data_ptr<int8_t>();

  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "hopfield_recall_async", [&] {
    recall_batch<scalar_t>(in.weights.const_data_ptr<scalar_t>(), in.fields.mutable_data_ptr<scalar_t>(), s_ptr,
                           b_count, n, max_sweeps, random_order, static_cast<uint64_t>(seed),
                           static_cast<uint64_t>(offset), conv);
  });
  return {in.states8.to(states.scalar_type()), in.converged};
}

}  // namespace
}  // namespace genkernels::hopfield::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("hopfield_recall_async", &genkernels::hopfield::cpu::hopfield_recall_async_cpu);
}
