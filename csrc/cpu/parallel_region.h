// OpenMP regions that call ATen, made safe for Python callers.
//
// An exception thrown inside `#pragma omp parallel` cannot leave the region: it reaches
// std::terminate and aborts the interpreter. RegionErrors runs each piece of a region's
// work under try/catch, keeps the first exception, lets the other pieces skip their work
// (every thread still reaches the region's barriers) and rethrows it on the calling thread
// once the region has ended, where the dispatcher turns it into a Python exception.
//
// Each piece also runs below autograd: the caller's dispatch state is thread-local and
// OpenMP worker threads do not inherit it, so without the guard an at::*_out call on a
// tensor that requires grad (an nn.Parameter passed to the op) raises in every worker.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <utility>

namespace genkernels::cpu {

class RegionErrors {
 public:
  // body() on this thread, below autograd; an exception is recorded, never propagated.
  template <typename Body>
  void run(Body&& body) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::forward<Body>(body)();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }

  // After the region, on the calling thread: the first recorded exception, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace genkernels::cpu
