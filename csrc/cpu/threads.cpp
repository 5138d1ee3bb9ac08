// genkernels::blas_set_local_threads (schema in csrc/genkernels.cpp): the calling thread's
// BLAS threads, for Python loops of small products (genkernels.backends.sequential_blas).
#include <torch/library.h>

#include "parallel_region.h"

namespace genkernels::cpu {
namespace {

int64_t blas_set_local_threads(int64_t n) {
  TORCH_CHECK(n >= 0 && n <= 4096, "blas_set_local_threads: n must be in [0, 4096]; got ", n);
  return blas::set_local_threads(static_cast<int>(n));
}

}  // namespace
}  // namespace genkernels::cpu

TORCH_LIBRARY_IMPL(genkernels, CompositeImplicitAutograd, m) {
  m.impl("blas_set_local_threads", &genkernels::cpu::blas_set_local_threads);
}
