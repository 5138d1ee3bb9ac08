// Philox4x32-10, bit-identical to Triton's tl.randint4x / tl.rand (triton/language/random.py,
// Triton 3.6-3.9), for the cpu/ and cuda/ kernels alike (docs/design.md, "Randomness").
//
//   key     = (seed low 32 bits, seed high 32 bits)
//   counter = (offset low 32 bits, offset high 32 bits, 0, 0)   offset: the int64 bit pattern
//   10 rounds; round r uses key (k0 + r * 0x9E3779B9, k1 + r * 0xBB67AE85) mod 2^32.
//
// One call yields four uint32. uint_to_uniform_float() converts one of them to a float in
// [0, 1) exactly as tl.rand: reinterpret as int32, fold negatives with ~x (so the value lies
// in [0, 2^31 - 1]), convert to fp32 (round to nearest) and multiply by the fp32 constant
// 0x1.fffffep-32 (Triton's 4.6566127342e-10 rounded to fp32), so the result is < 1.
// The reference in PyTorch is genkernels/random.py.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace genkernels::random {

// Weyl increments of the key and round multipliers (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011), as Triton's philox_impl for 32-bit counters.
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
// tl.rand's scale: the largest fp32 s with (2^31 - 1) * s < 1 after rounding.
constexpr float kUint32ToUniformScale = 0x1.fffffep-32f;

struct Uint4 {
  uint32_t x, y, z, w;
};

GK_HD uint32_t umulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// `rounds` rounds of Philox on counter (c.x, c.y, c.z, c.w) with key (k0, k1).
GK_HD Uint4 philox4x32(Uint4 c, uint32_t k0, uint32_t k1, int rounds = kPhiloxRounds) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < rounds; ++r) {
    const uint32_t c0 = c.x, c2 = c.z;
    c.x = umulhi32(kPhiloxRoundB, c2) ^ c.y ^ k0;
    c.z = umulhi32(kPhiloxRoundA, c0) ^ c.w ^ k1;
    c.y = kPhiloxRoundB * c2;
    c.w = kPhiloxRoundA * c0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c;
}

GK_HD Uint4 philox4x32_10(Uint4 counter, uint32_t k0, uint32_t k1) {
  return philox4x32(counter, k0, k1, kPhiloxRounds);
}

// tl.randint4x(seed, offset) for a 64-bit offset: the four uint32 of counter `offset`.
// seed is the full 64-bit pattern (a Python seed in [0, 2^64)); offset the int64 pattern.
GK_HD Uint4 randint4x(uint64_t seed, uint64_t offset) {
  const Uint4 counter{static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), 0u, 0u};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// tl.randint(seed, offset): the first of the four.
GK_HD uint32_t randint(uint64_t seed, uint64_t offset) { return randint4x(seed, offset).x; }

// tl.rand's uint32 -> [0, 1) conversion (uint_to_uniform_float in triton/language/random.py).
GK_HD float uint_to_uniform_float(uint32_t bits) {
  int32_t v = static_cast<int32_t>(bits);  // modular since C++20: the int32 bitcast
  if (v < 0) v = ~v;
  return static_cast<float>(v) * kUint32ToUniformScale;
}

// tl.rand(seed, offset).
GK_HD float rand(uint64_t seed, uint64_t offset) {
  return uint_to_uniform_float(randint(seed, offset));
}

}  // namespace genkernels::random
