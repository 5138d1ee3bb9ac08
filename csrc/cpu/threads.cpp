// genkernels::blas_set_local_threads (schema in csrc/genkernels.cpp): the calling thread's
// BLAS threads, for Python loops of small products (genkernels.backends.sequential_blas).
// genkernels::cpu_force_backoff: the busy-machine back-off of parallel_region.h on demand,
// so tests can check that no result depends on it.
#include <torch/library.h>

#include "parallel_region.h"

namespace genkernels::cpu {
namespace {

int64_t blas_set_local_threads(int64_t n) {
  TORCH_CHECK(n >= 0 && n <= 4096, "blas_set_local_threads: n must be in [0, 4096]; got ", n);
  return blas::set_local_threads(static_cast<int>(n));
}

// ns > 0: the state team_health::report(true) leaves, for ns; ns = 0: the state of a quiet
// machine (what on-time probes lead back to); ns < 0: that state, kept while late regions
// are ignored until the next call.
void cpu_force_backoff(int64_t ns) {
  team_health::State& s = team_health::state();
  s.ignore_late.store(ns < 0, std::memory_order_relaxed);
  if (ns > 0) {
    if (team_health::blas_restore < 0) team_health::blas_restore = std::max(0, blas::set_local_threads(1));
    s.backoff.store(std::clamp(ns, team_health::kFirstBackoffNs, team_health::kMaxBackoffNs),
                    std::memory_order_relaxed);
    s.solo_until.store(team_health::now_ns() + ns, std::memory_order_relaxed);
    return;
  }
  s.backoff.store(0, std::memory_order_relaxed);
  s.solo_until.store(0, std::memory_order_relaxed);
  if (team_health::blas_restore >= 0) {
    blas::set_local_threads(team_health::blas_restore);
    team_health::blas_restore = -1;
  }
}

}  // namespace
}  // namespace genkernels::cpu

TORCH_LIBRARY_IMPL(genkernels, CompositeImplicitAutograd, m) {
  m.impl("blas_set_local_threads", &genkernels::cpu::blas_set_local_threads);
  m.impl("cpu_force_backoff", &genkernels::cpu::cpu_force_backoff);
}
