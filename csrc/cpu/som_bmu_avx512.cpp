// The fused euclidean BMU micro-kernel (som_bmu_kernel.h) for AVX-512, selected at run time
// when the CPU has it (the extension's baseline is AVX2): 8 samples x 48 nodes (fp32) or
// 8 x 24 (fp64) per register tile -- 24 zmm accumulators + 3 weight vectors + a broadcast.
// Measured on a 2-core Sapphire Rapids (D = 64, K = 1024, one thread, k = 1, relative to
// the torch.mm rate): 8x32 1.27x, 12x32 1.17x, 14x32 1.20x, 6x64 1.38x, 8x48 1.06x.
// som_cpu.h is included before the target pragma so its shared inline functions keep the
// baseline ISA (one definition per symbol across translation units).
#include "cpu/som_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,fma")

namespace genkernels::som::cpu {
namespace avx512 {

struct F32 {
  using T = float;
  using R = __m512;
  static constexpr int W = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const T* p) { return _mm512_load_ps(p); }
  static R set1(T v) { return _mm512_set1_ps(v); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(T* p, R a) { _mm512_store_ps(p, a); }
  static unsigned le_mask(R a, R b) { return unsigned(_mm512_cmp_ps_mask(a, b, _CMP_LE_OQ)); }
};

struct F64 {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8;
  static R zero() { return _mm512_setzero_pd(); }
  static R load(const T* p) { return _mm512_load_pd(p); }
  static R set1(T v) { return _mm512_set1_pd(v); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static void store(T* p, R a) { _mm512_store_pd(p, a); }
  static unsigned le_mask(R a, R b) { return unsigned(_mm512_cmp_pd_mask(a, b, _CMP_LE_OQ)); }
};

#include "cpu/som_bmu_kernel.h"

}  // namespace avx512

void bmu_euclidean_avx512(const float* x, int64_t n, const float* w, int64_t n_nodes, int64_t d, int64_t k,
                          int64_t* idx, float* dist) {
  avx512::bmu_euclidean_fused<avx512::F32, 8, 3>(DenseRows<float>{x, d}, n, w, n_nodes, d, k, idx, dist);
}
void bmu_euclidean_avx512(const double* x, int64_t n, const double* w, int64_t n_nodes, int64_t d, int64_t k,
                          int64_t* idx, double* dist) {
  avx512::bmu_euclidean_fused<avx512::F64, 8, 3>(DenseRows<double>{x, d}, n, w, n_nodes, d, k, idx, dist);
}
void bmu_patch_euclidean_avx512(const PatchRows<float>& patches, int64_t n, const float* w, int64_t n_nodes,
                                int64_t d, int64_t k, int64_t* idx, float* dist) {
  avx512::bmu_euclidean_fused<avx512::F32, 8, 3>(patches, n, w, n_nodes, d, k, idx, dist);
}
void bmu_patch_euclidean_avx512(const PatchRows<double>& patches, int64_t n, const double* w, int64_t n_nodes,
                                int64_t d, int64_t k, int64_t* idx, double* dist) {
  avx512::bmu_euclidean_fused<avx512::F64, 8, 3>(patches, n, w, n_nodes, d, k, idx, dist);
}

}  // namespace genkernels::som::cpu

#pragma GCC pop_options

namespace genkernels::som::cpu {
bool have_avx512_kernel() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}
}  // namespace genkernels::som::cpu

#else

namespace genkernels::som::cpu {
bool have_avx512_kernel() { return false; }
void bmu_euclidean_avx512(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t*, float*) {}
void bmu_euclidean_avx512(const double*, int64_t, const double*, int64_t, int64_t, int64_t, int64_t*, double*) {}
void bmu_patch_euclidean_avx512(const PatchRows<float>&, int64_t, const float*, int64_t, int64_t, int64_t, int64_t*,
                                float*) {}
void bmu_patch_euclidean_avx512(const PatchRows<double>&, int64_t, const double*, int64_t, int64_t, int64_t,
                                int64_t*, double*) {}
}  // namespace genkernels::som::cpu

#endif
