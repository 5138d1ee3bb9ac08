// The flip table of the ising_sweep op from its (2, 5) int64 thresholds, shared by the cpu
// and cuda bindings (host code with torch headers; the kernels take the FlipTable).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "common/ising.h"

namespace genkernels::ising {

// thresholds[s > 0][n] in [0, 2^32] -> FlipTable: lo[n + 8 s] the uint32 threshold, or
// bit n + 8 s of `always` for 2^32 (flip whatever the random word).
inline FlipTable make_table(const at::Tensor& thresholds) {
  const at::Tensor th = thresholds.to(at::kCPU).contiguous();
  const int64_t* f = th.const_data_ptr<int64_t>();
  FlipTable table{};
  for (int sigma = 0; sigma < 2; ++sigma) {
    for (int n = 0; n < 5; ++n) {
      const int64_t v = f[sigma * 5 + n];
      TORCH_CHECK(v >= 0 && v <= (int64_t{1} << 32), "ising_sweep: thresholds must lie in [0, 2^32]; got ", v);
      const int idx = n + 8 * sigma;
      if (v == (int64_t{1} << 32)) {
        table.always |= 1u << idx;
      } else {
        table.lo[idx] = static_cast<uint32_t>(v);
      }
    }
  }
  return table;
}

}  // namespace genkernels::ising
