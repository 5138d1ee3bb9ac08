// GCC/Clang vector types of N lanes of T, and their loads and stores at any alignment
// (through memcpy: one unaligned vector move). The compiler splits a vector wider than the
// target's registers. Shared by the cpu kernels that write their SIMD loops this way.
#pragma once

namespace genkernels::cpu {

template <typename T, int N>
struct Simd {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int N>
using simd_t = typename Simd<T, N>::type;

template <typename V, typename T>
inline V simd_load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, typename V>
inline void simd_store(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

}  // namespace genkernels::cpu
