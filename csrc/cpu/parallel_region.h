// Parallel regions of the cpu kernels: exception-safe, below autograd, and fair on a busy
// machine.
//
// 1. Exceptions. An exception thrown inside `#pragma omp parallel` cannot leave the region:
//    it reaches std::terminate and aborts the interpreter. RegionErrors runs each piece of
//    a region's work under try/catch, keeps the first exception, lets the other pieces skip
//    their work (every thread still reaches the region's barriers) and rethrows it on the
//    calling thread once the region has ended, where the dispatcher turns it into a Python
//    exception.
//
// 2. Autograd. Each piece runs below autograd: the caller's dispatch state is thread-local
//    and OpenMP worker threads do not inherit it, so without the guard an at::*_out call on
//    a tensor that requires grad (an nn.Parameter passed to the op) raises in every worker.
//
// 3. A busy neighbour. Every parallel region ends at a barrier; when another process holds
//    the other core, the OS runs a team member a time slice late (milliseconds) and the
//    whole call waits for it: a 10-row half-step measured 200 us instead of 40 us, an online
//    SOM epoch 33x slower. parallel_chunks hands out work one chunk at a time (a late thread
//    finds the work done by the others) and measures how late its threads arrive; after a
//    late region every region runs on the calling thread alone for a back-off period,
//    doubling (from 10 ms up to 1 s) while the probes that follow are late too, and reset
//    by an on-time probe. team_size() applies the back-off to a kernel's own cost model
//    (which decides first whether the work pays for a second thread at all). BLAS calls
//    made outside a team run on the calling thread, and after a late region so do the
//    calling thread's other BLAS calls (torch's matmuls between our kernels) until an
//    on-time probe. MKL rounds some small products differently on one thread than on its
//    threaded path, so a product between kernels whose result must reproduce takes its
//    BLAS threads from its shape (genkernels.backends.blas_threads), not from this state.
//    Tests force the back-off, or a quiet machine, with genkernels::cpu_force_backoff.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
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

  bool failed() const { return failed_.load(std::memory_order_relaxed); }

  // After the region, on the calling thread: the first recorded exception, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

// ---------------------------------------------------------------- BLAS threads
// MKL (torch's BLAS on x86) starts its own OpenMP team for a GEMM called outside a
// parallel region, even for a 100 x 64 x 100 product: beside a busy process that team
// stalls like ours (16 ms instead of 0.1 ms measured). MKL's C entry point
// MKL_Set_Num_Threads_Local (the lower-case symbol is the Fortran one, taking a pointer) is
// a weak symbol: where this torch does not export it, BLAS keeps its own choice.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace blas {

// Sets the calling thread's BLAS threads to n (0: back to the global setting); returns the
// previous thread-local value, or -1 where the BLAS has no such control.
inline int set_local_threads(int n) {
  return &MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(n) : -1;
}

// BLAS on the calling thread alone while it lives.
class Sequential {
 public:
  Sequential() : previous_(set_local_threads(1)) {}
  ~Sequential() {
    if (previous_ >= 0) set_local_threads(previous_);
  }
  Sequential(const Sequential&) = delete;
  Sequential& operator=(const Sequential&) = delete;

 private:
  int previous_;
};

}  // namespace blas

// The calling thread's OpenMP threads set to one while it lives: ATen ops a kernel body
// calls (sigmoid_ on a tile, a copy) start no team of their own when the kernel runs alone.
class SoloThreads {
 public:
  SoloThreads() : previous_(omp_get_max_threads()) {
    if (previous_ > 1) omp_set_num_threads(1);
  }
  ~SoloThreads() {
    if (previous_ > 1) omp_set_num_threads(previous_);
  }
  SoloThreads(const SoloThreads&) = delete;
  SoloThreads& operator=(const SoloThreads&) = delete;

 private:
  int previous_;
};

// Both guards above while it lives, when `active`: a kernel whose cost model chose one
// thread runs its ATen glue too (the products, copies and casts around its own loops) on
// the calling thread -- beside a busy process a BLAS or ATen team started there waits a
// time slice for its second thread.
class SoloScope {
 public:
  explicit SoloScope(bool active) {
    if (active) {
      blas_.emplace();
      threads_.emplace();
    }
  }
  SoloScope(const SoloScope&) = delete;
  SoloScope& operator=(const SoloScope&) = delete;

 private:
  std::optional<blas::Sequential> blas_;
  std::optional<SoloThreads> threads_;
};

// ---------------------------------------------------------------- team health
namespace team_health {

// A team member arriving this long after the region began, or finishing this long after
// the first finisher, marks the machine as contended. A member arriving later than one
// chunk's work (and kLateFloorNs) is late too: the region then cost the calling thread
// more waiting than the member saved it -- on 2 cores beside another process's spinning
// BLAS threads, members arrived ~0.1 ms late region after region, below kLateNs, and the
// facade's 100-row batches ran 1.6x slower on 2 threads than on 1.
constexpr int64_t kLateNs = 200'000;
constexpr int64_t kLateFloorNs = 50'000;
constexpr int64_t kFirstBackoffNs = 10'000'000;
constexpr int64_t kMaxBackoffNs = 1'000'000'000;

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct State {
  std::atomic<int64_t> solo_until{0};
  std::atomic<int64_t> backoff{0};
  // Tests (genkernels::cpu_force_backoff): late regions count as on time, so a busy test
  // machine runs as a quiet one.
  std::atomic<bool> ignore_late{false};
};

inline State& state() {
  static State s;
  return s;
}

inline bool solo_now() { return now_ns() < state().solo_until.load(std::memory_order_relaxed); }

// Whether this thread's BLAS was made sequential by a late region (and what to restore).
inline thread_local int blas_restore = -1;

// After a region, on the calling thread: late -> back off (doubling) and keep this
// thread's BLAS calls -- ours and torch's between them -- on this thread; on time -> halve
// the next back-off (not forget it: beside two busy processes on 2 cores a probe is now
// and then on time, and a reset back-off let the next late probes stall region after
// region) and give BLAS its threads back.
inline void report(bool late) {
  State& s = state();
  if (!late || s.ignore_late.load(std::memory_order_relaxed)) {
    const int64_t halved = s.backoff.load(std::memory_order_relaxed) / 2;
    s.backoff.store(halved < kFirstBackoffNs ? 0 : halved, std::memory_order_relaxed);
    if (blas_restore >= 0) {
      blas::set_local_threads(blas_restore);
      blas_restore = -1;
    }
    return;
  }
  if (blas_restore < 0) blas_restore = std::max(0, blas::set_local_threads(1));
  const int64_t previous = s.backoff.load(std::memory_order_relaxed);
  const int64_t backoff = previous == 0 ? kFirstBackoffNs : std::min(kMaxBackoffNs, 2 * previous);
  s.backoff.store(backoff, std::memory_order_relaxed);
  s.solo_until.store(now_ns() + backoff, std::memory_order_relaxed);
}

}  // namespace team_health

// Threads for a region whose cost model wants `wanted` threads: at most OpenMP's limit
// (torch.set_num_threads), and 1 while the machine is contended (see above).
inline int team_size(int64_t wanted) {
  const int64_t limit = std::min<int64_t>(wanted, omp_get_max_threads());
  if (limit <= 1 || team_health::solo_now()) return 1;
  return static_cast<int>(limit);
}

// body(i, slot) for every chunk i in [0, n), on `team` threads (team_size's answer): chunks
// are claimed one at a time, so a thread the OS runs late finds them taken; slot in
// [0, team) names the thread (for per-thread scratch). Runs below autograd, rethrows the
// first exception after the region, and reports how late the team was.
template <typename Body>
void parallel_chunks(int64_t n, int team, const Body& body) {
  if (n <= 0) return;
  RegionErrors errors;
  if (team <= 1 || n == 1) {
    // work too small for a team, or a busy machine: nothing inside starts a team either
    blas::Sequential sequential_blas;
    SoloThreads solo_threads;
    for (int64_t i = 0; i < n && !errors.failed(); ++i) errors.run([&] { body(i, 0); });
    errors.rethrow();
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> last_arrival{0}, first_finish{INT64_MAX}, last_finish{0}, longest_chunk{0};
  const auto raise_to = [](std::atomic<int64_t>& a, int64_t v) {
    int64_t seen = a.load(std::memory_order_relaxed);
    while (v > seen && !a.compare_exchange_weak(seen, v)) {}
  };
  const int64_t start = team_health::now_ns();
#pragma omp parallel num_threads(team)
  {
    int64_t t = team_health::now_ns();
    raise_to(last_arrival, t);
    const int slot = omp_get_thread_num();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      errors.run([&] { body(i, slot); });
      const int64_t done = team_health::now_ns();
      raise_to(longest_chunk, done - t);
      t = done;
    }
    int64_t seen = first_finish.load(std::memory_order_relaxed);
    while (t < seen && !first_finish.compare_exchange_weak(seen, t)) {}
    raise_to(last_finish, t);
  }
  // late: a member started late (absolutely, or later than a chunk of work), or the last
  // finisher trailed the first by more than the longest chunk could explain
  const int64_t arrival = last_arrival.load() - start;
  team_health::report(arrival > team_health::kLateNs ||
                      arrival > std::max(team_health::kLateFloorNs, longest_chunk.load()) ||
                      last_finish.load() - first_finish.load() >
                          std::max(team_health::kLateNs, 2 * longest_chunk.load()));
  errors.rethrow();
}

// at::parallel_for's contract -- f(chunk_begin, chunk_end) over [begin, end), each chunk
// at least `grain` long, never split below it -- on parallel_chunks: 4 chunks per thread.
// The chunks follow the thread setting (torch.set_num_threads) and the cost model only,
// never the busy-machine back-off, so a kernel whose result depends on its chunks still
// reproduces bit for bit at a given setting.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t wanted = std::min<int64_t>((n + grain - 1) / grain, omp_get_max_threads());
  const int team = team_size(wanted);
  const int64_t chunk = wanted <= 1 ? n : std::max(grain, (n + 4 * wanted - 1) / (4 * wanted));
  parallel_chunks((n + chunk - 1) / chunk, team, [&](int64_t i, int) {
    const int64_t b = begin + i * chunk;
    f(b, std::min(end, b + chunk));
  });
}

}  // namespace genkernels::cpu
