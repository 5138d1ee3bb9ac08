// CPU kernels of the Philox ops (schemas in csrc/genkernels.cpp, arithmetic in
// csrc/common/philox.h, reference in genkernels/random.py): one independent Philox call per
// offset, parallel over elements (parallel_for of parallel_region.h: OpenMP, one thread on a busy machine).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "parallel_region.h"
#include <torch/library.h>

#include "common/philox.h"

namespace genkernels::random::cpu {
namespace {

// Elements per parallel task: one Philox call is ~100 integer ops, so a few thousand
// amortise the task overhead.
constexpr int64_t kGrain = 4096;

void check_offsets(const char* op, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, op, ": offsets must be an int64 tensor; got ",
              offsets.scalar_type());
  TORCH_CHECK(offsets.device().is_cpu(), op, ": offsets must be a CPU tensor; got ",
              offsets.device());
}

// offsets (...) int64 -> (..., 4) uint32: the four words of Philox counter offsets[i] under
// key `seed` (the int64 pattern of a seed in [0, 2^64)).
at::Tensor philox_randint4x_cpu(int64_t seed, const at::Tensor& offsets) {
  check_offsets("philox_randint4x", offsets);
  auto sizes = offsets.sizes().vec();
  sizes.push_back(4);
  at::Tensor out = at::empty(sizes, offsets.options().dtype(at::kUInt32));
  const at::Tensor offsets_c = offsets.contiguous();
  const int64_t* off = offsets_c.const_data_ptr<int64_t>();
  uint32_t* dst = out.mutable_data_ptr<uint32_t>();
  const auto key = static_cast<uint64_t>(seed);
  genkernels::cpu::parallel_for(0, offsets_c.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Uint4 r = randint4x(key, static_cast<uint64_t>(off[i]));
      dst[4 * i + 0] = r.x;
      dst[4 * i + 1] = r.y;
      dst[4 * i + 2] = r.z;
      dst[4 * i + 3] = r.w;
    }
  });
  return out;
}

// offsets (...) int64 -> (...) float32 in [0, 1): tl.rand(seed, offsets).
at::Tensor philox_rand_cpu(int64_t seed, const at::Tensor& offsets) {
  check_offsets("philox_rand", offsets);
  at::Tensor out = at::empty(offsets.sizes(), offsets.options().dtype(at::kFloat));
  const at::Tensor offsets_c = offsets.contiguous();
  const int64_t* off = offsets_c.const_data_ptr<int64_t>();
  float* dst = out.mutable_data_ptr<float>();
  const auto key = static_cast<uint64_t>(seed);
  genkernels::cpu::parallel_for(0, offsets_c.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = rand(key, static_cast<uint64_t>(off[i]));
  });
  return out;
}

}  // namespace
}  // namespace genkernels::random::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("philox_randint4x", &genkernels::random::cpu::philox_randint4x_cpu);
  m.impl("philox_rand", &genkernels::random::cpu::philox_rand_cpu);
}
