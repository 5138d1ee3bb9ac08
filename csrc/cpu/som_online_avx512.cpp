// The fused pass of som_online (csrc/cpu/som.cpp, fused_pass) for fp32 euclidean maps with
// AVX-512, selected at run time when the CPU has it (the extension's baseline is AVX2).
// Groups of 8 nodes are swept together, 16 features at a time: each weight vector is
// loaded once, takes step t's update w += eh (s - w), is stored and measured against step
// t+1's sample; the 8 nodes give 8 independent FMA chains, reduced together at the end of
// the group by one shuffle tree. Every node (tail nodes included, run through a padded
// scratch group) takes the same arithmetic, so duplicated nodes get identical keys and
// ties stay exact.
//
// Measured on 2 cores (Xeon, AVX-512), 50,000 steps, 32x32 map, D = 64, us/step, AVX2 pass
// -> this one: gaussian 5.0 -> 3.8 (two threads), 8.1 -> 6.1 (one thread); wta (distance
// only) 3.1 -> 2.1 (two threads). 40x40, D = 784: 70 -> 65 (two threads; the 5 MB map
// streams from L2/L3). Tried and dropped: software prefetch one group ahead (within noise)
// and storing only vectors that changed (slower: 3.7 -> 4.3).
//
// som_cpu.h is included before the target pragma so its shared inline functions keep the
// baseline ISA (one definition per symbol across translation units).
#include "cpu/som_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,fma")

namespace genkernels::som::cpu {
namespace {

constexpr int kGroup = 8;

// r[q] = sum of the 16 lanes of a[q]: lanes l and l + 8 first, then the tree of
// combine_lanes ((0+1)+(2+3))+((4+5)+(6+7)) on the 8 partial sums.
inline __m256 reduce_x8(const __m512* a) {
  __m256 f[kGroup];
  for (int q = 0; q < kGroup; ++q)
    f[q] = _mm256_add_ps(_mm512_castps512_ps256(a[q]), _mm512_extractf32x8_ps(a[q], 1));
  const __m256 h01 = _mm256_hadd_ps(f[0], f[1]), h23 = _mm256_hadd_ps(f[2], f[3]);
  const __m256 h45 = _mm256_hadd_ps(f[4], f[5]), h67 = _mm256_hadd_ps(f[6], f[7]);
  // g0 = [q0 (0..3), q1 (0..3), q2 (0..3), q3 (0..3) | same for lanes 4..7]
  const __m256 g0 = _mm256_hadd_ps(h01, h23), g1 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
}

// One group of 8 rows at wg (row stride D): update with s (skipped where eh == 0 for the
// whole group, or s == nullptr), then the 8 keys against `next` into key[0..8).
[[gnu::always_inline]] inline void group_pass(float* wg, int64_t D, const float* s, const float* eh,
                                              const float* next, float* key) {
  __m512 acc[kGroup];
  for (int q = 0; q < kGroup; ++q) acc[q] = _mm512_setzero_ps();
  bool moves = false;
  if (s != nullptr)
    for (int q = 0; q < kGroup; ++q) moves |= eh[q] != 0.0f;
  int64_t d = 0;
  const int64_t tail = D & 15;
  const __mmask16 tail_mask = __mmask16((1u << tail) - 1u);
  if (moves) {
    __m512 e[kGroup];
    for (int q = 0; q < kGroup; ++q) e[q] = _mm512_set1_ps(eh[q]);
    for (; d + 16 <= D; d += 16) {
      const __m512 xv = _mm512_loadu_ps(next + d), sv = _mm512_loadu_ps(s + d);
#pragma GCC unroll 8
      for (int q = 0; q < kGroup; ++q) {
        float* p = wg + q * D + d;
        __m512 wv = _mm512_loadu_ps(p);
        wv = _mm512_fmadd_ps(e[q], _mm512_sub_ps(sv, wv), wv);
        _mm512_storeu_ps(p, wv);
        const __m512 t = _mm512_sub_ps(xv, wv);
        acc[q] = _mm512_fmadd_ps(t, t, acc[q]);
      }
    }
    if (tail) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail_mask, next + d), sv = _mm512_maskz_loadu_ps(tail_mask, s + d);
      for (int q = 0; q < kGroup; ++q) {
        float* p = wg + q * D + d;
        __m512 wv = _mm512_maskz_loadu_ps(tail_mask, p);
        wv = _mm512_fmadd_ps(e[q], _mm512_sub_ps(sv, wv), wv);
        _mm512_mask_storeu_ps(p, tail_mask, wv);
        const __m512 t = _mm512_sub_ps(xv, wv);
        acc[q] = _mm512_fmadd_ps(t, t, acc[q]);
      }
    }
  } else {
    for (; d + 16 <= D; d += 16) {
      const __m512 xv = _mm512_loadu_ps(next + d);
#pragma GCC unroll 8
      for (int q = 0; q < kGroup; ++q) {
        const __m512 t = _mm512_sub_ps(xv, _mm512_loadu_ps(wg + q * D + d));
        acc[q] = _mm512_fmadd_ps(t, t, acc[q]);
      }
    }
    if (tail) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail_mask, next + d);
      for (int q = 0; q < kGroup; ++q) {
        const __m512 t = _mm512_sub_ps(xv, _mm512_maskz_loadu_ps(tail_mask, wg + q * D + d));
        acc[q] = _mm512_fmadd_ps(t, t, acc[q]);
      }
    }
  }
  _mm256_storeu_ps(key, reduce_x8(acc));
}

}  // namespace

void online_pass_euclidean_avx512(float* w, int64_t K, int64_t D, const float* s, const float* eh,
                                  const float* next, float* key) {
  int64_t j = 0;
  for (; j + kGroup <= K; j += kGroup) group_pass(w + j * D, D, s, eh + j, next, key + j);
  if (j < K) {
    // the last K mod 8 nodes through a zero-padded scratch group (the same arithmetic)
    const int64_t rem = K - j;
    AlignedBuffer<float> scratch(kGroup * D);
    float scratch_eh[kGroup] = {}, scratch_key[kGroup];
    std::memset(scratch.get(), 0, sizeof(float) * kGroup * D);
    std::memcpy(scratch.get(), w + j * D, sizeof(float) * rem * D);
    for (int64_t q = 0; q < rem; ++q) scratch_eh[q] = eh[j + q];
    group_pass(scratch.get(), D, s, scratch_eh, next, scratch_key);
    std::memcpy(w + j * D, scratch.get(), sizeof(float) * rem * D);
    for (int64_t q = 0; q < rem; ++q) key[j + q] = scratch_key[q];
  }
}

}  // namespace genkernels::som::cpu

#pragma GCC pop_options

#else

namespace genkernels::som::cpu {
void online_pass_euclidean_avx512(float*, int64_t, int64_t, const float*, const float*, const float*, float*) {}
}  // namespace genkernels::som::cpu

#endif
