// The visiting order of a random single-site sweep on the cpu, shared by Hopfield recall
// (csrc/cpu/hopfield.cpp) and Boltzmann Gibbs sweeps (csrc/cpu/boltzmann.cpp): the stable
// argsort of the units' 32-bit Philox keys -- by key, ties by the smaller unit -- as the
// references take it (torch.argsort(stable=True)) and the triton and cuda kernels too
// (genkernels/triton_common.py, csrc/cuda/visiting_order.cuh).
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace genkernels::cpu {

class VisitingOrder {
 public:
  // n units; random = false keeps the order 0..n-1 (and needs no keys)
  VisitingOrder(int64_t n, bool random) : units_(n), keyed_(random ? n : 0) {
    std::iota(units_.begin(), units_.end(), int64_t{0});
  }

  // unit i's key for the next sort (random orders only)
  void set_key(int64_t i, uint32_t key) {
    keyed_[i] = (static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(i);
  }

  // sorts the units by (key, unit) and returns them in that order
  const int64_t* sort() {
    std::sort(keyed_.begin(), keyed_.end());
    for (size_t k = 0; k < keyed_.size(); ++k) units_[k] = static_cast<int64_t>(keyed_[k] & 0xFFFFFFFFu);
    return units_.data();
  }

  // the units in the current order (0..n-1 until sorted)
  const int64_t* units() const { return units_.data(); }

 private:
  std::vector<int64_t> units_;
  std::vector<uint64_t> keyed_;
};

}  // namespace genkernels::cpu
