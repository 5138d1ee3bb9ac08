// The fused euclidean BMU micro-kernel (som_bmu_kernel.h) for AVX2 + FMA: 6 samples x 16
// nodes (fp32) or 6 x 8 (fp64) per register tile -- 12 accumulators, 2 weight vectors and a
// broadcast fill 15 of the 16 ymm registers.
#include "cpu/som_cpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace genkernels::som::cpu {
namespace avx2 {

struct F32 {
  using T = float;
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const T* p) { return _mm256_load_ps(p); }
  static R set1(T v) { return _mm256_set1_ps(v); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(T* p, R a) { _mm256_store_ps(p, a); }
  static unsigned le_mask(R a, R b) { return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ))); }
};

struct F64 {
  using T = double;
  using R = __m256d;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(const T* p) { return _mm256_load_pd(p); }
  static R set1(T v) { return _mm256_set1_pd(v); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static void store(T* p, R a) { _mm256_store_pd(p, a); }
  static unsigned le_mask(R a, R b) { return unsigned(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LE_OQ))); }
};

#include "cpu/som_bmu_kernel.h"

}  // namespace avx2

bool have_avx2_kernel() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

void bmu_euclidean_avx2(const float* x, int64_t n, const float* w, int64_t n_nodes, int64_t d, int64_t k,
                        int64_t* idx, float* dist) {
  avx2::bmu_euclidean_fused<avx2::F32, 6, 2>(DenseRows<float>{x, d}, n, w, n_nodes, d, k, idx, dist);
}
void bmu_euclidean_avx2(const double* x, int64_t n, const double* w, int64_t n_nodes, int64_t d, int64_t k,
                        int64_t* idx, double* dist) {
  avx2::bmu_euclidean_fused<avx2::F64, 6, 2>(DenseRows<double>{x, d}, n, w, n_nodes, d, k, idx, dist);
}
void bmu_patch_euclidean_avx2(const PatchRows<float>& patches, int64_t n, const float* w, int64_t n_nodes,
                              int64_t d, int64_t k, int64_t* idx, float* dist) {
  avx2::bmu_euclidean_fused<avx2::F32, 6, 2>(patches, n, w, n_nodes, d, k, idx, dist);
}
void bmu_patch_euclidean_avx2(const PatchRows<double>& patches, int64_t n, const double* w, int64_t n_nodes,
                              int64_t d, int64_t k, int64_t* idx, double* dist) {
  avx2::bmu_euclidean_fused<avx2::F64, 6, 2>(patches, n, w, n_nodes, d, k, idx, dist);
}

}  // namespace genkernels::som::cpu

#else  // no AVX2 at build time: the direct path serves every request

namespace genkernels::som::cpu {
bool have_avx2_kernel() { return false; }
void bmu_euclidean_avx2(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t*, float*) {}
void bmu_euclidean_avx2(const double*, int64_t, const double*, int64_t, int64_t, int64_t, int64_t*, double*) {}
void bmu_patch_euclidean_avx2(const PatchRows<float>&, int64_t, const float*, int64_t, int64_t, int64_t, int64_t*,
                              float*) {}
void bmu_patch_euclidean_avx2(const PatchRows<double>&, int64_t, const double*, int64_t, int64_t, int64_t,
                              int64_t*, double*) {}
}  // namespace genkernels::som::cpu

#endif
