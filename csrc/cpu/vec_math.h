// Float transcendentals on 8-lane GCC/Clang vectors (vector_size(32): one AVX2 register; the
// compiler splits it where the target has narrower registers): straight-line arithmetic,
// integer bit operations and vector selects, for kernels that keep 8 independent values in
// flight where std::exp, std::log1p and std::expm1 would be 8 scalar library calls.
// Accuracy (measured against double over millions of points): vexp and vlog within 1 ulp
// over the normal range (Cephes' single-precision polynomials, a two-part ln 2), vlog1p,
// vexpm1, vtanh, vsigmoid and vsoftplus within 3 ulp, full relative precision near 0
// (vlog1p by Goldberg's correction, vexpm1 by its Taylor series below 0.5).
// Range: vexp(x) is 0 below -103.97 (subnormal results down to there) and +inf above 88.72;
// vlog(0) = -inf, vlog(x < 0) = NaN, vlog(+inf) = +inf, subnormal inputs are rescaled; NaN in,
// NaN out.
#pragma once

#include <cstdint>
#include <limits>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define GENKERNELS_VEC_INLINE inline __attribute__((always_inline))

namespace genkernels::cpu::vec {

using f8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
using d4 = double __attribute__((vector_size(32)));

// A float sum kept in double lanes (a long row's log-determinant: fp32 lanes lose ~1e-5 of
// a 10^4-term sum)
struct DoubleSum {
  d4 lo{}, hi{};
  GENKERNELS_VEC_INLINE void add(f8 v) {
    lo += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), d4);
    hi += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), d4);
  }
  GENKERNELS_VEC_INLINE double total() const {
    const d4 t = lo + hi;
    return (t[0] + t[2]) + (t[1] + t[3]);
  }
};

GENKERNELS_VEC_INLINE f8 splat(float x) { return f8{} + x; }
GENKERNELS_VEC_INLINE f8 vmax(f8 a, f8 b) { return a > b ? a : b; }
GENKERNELS_VEC_INLINE f8 vmin(f8 a, f8 b) { return a < b ? a : b; }
GENKERNELS_VEC_INLINE f8 vabs(f8 a) { return a < 0.0f ? -a : a; }

// 8 floats from p (any alignment); n < 8 of them with the rest `fill`
GENKERNELS_VEC_INLINE f8 load(const float* p) {
  f8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
// (AVX2: masked loads and stores; elsewhere a loop GCC must not turn into a memcpy call, which
// costs more than the vector's arithmetic on a short row)
#ifdef __AVX2__
GENKERNELS_VEC_INLINE __m256i first_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
GENKERNELS_VEC_INLINE f8 load(const float* p, int n, float fill) {
  const __m256i m = first_lanes(n);
  return (f8)_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
GENKERNELS_VEC_INLINE void store(float* p, f8 v, int n) { _mm256_maskstore_ps(p, first_lanes(n), (__m256)v); }
#else
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline f8 load(const float* p, int n, float fill) {
  f8 v = splat(fill);
  for (int j = 0; j < n; ++j) v[j] = p[j];
  return v;
}
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void store(float* p, f8 v, int n) {
  for (int j = 0; j < n; ++j) p[j] = v[j];
}
#endif
GENKERNELS_VEC_INLINE void store(float* p, f8 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// a comparison's result as 8 bits (bit j: lane j true)
GENKERNELS_VEC_INLINE int lane_bits(i8 m) {
#ifdef __AVX2__
  return _mm256_movemask_ps((__m256)m);
#else
  int bits = 0;
  for (int j = 0; j < 8; ++j) bits |= (m[j] != 0) << j;
  return bits;
#endif
}
// whether every lane of a comparison's result is true
GENKERNELS_VEC_INLINE bool all_lanes(i8 m) { return lane_bits(m) == 0xff; }

GENKERNELS_VEC_INLINE f8 vfloor(f8 x) {
  const f8 t = __builtin_convertvector(__builtin_convertvector(x, i8), f8);  // toward zero
  return t > x ? t - 1.0f : t;
}

GENKERNELS_VEC_INLINE f8 pow2(i8 n) {  // 2^n for n in [-126, 127]
  return (f8)((n + 127) << 23);
}

// e^xc = 2^n e^r for an argument already clamped: n = round(xc / ln 2), r = xc - n ln 2 (ln 2
// in two parts), e^r by Cephes' single-precision polynomial -> (e^r, n)
GENKERNELS_VEC_INLINE f8 exp_reduced(f8 xc, f8* n_out) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const f8 n = vfloor(xc * kLog2e + 0.5f);
  const f8 r = xc - n * kLn2Hi - n * kLn2Lo;
  f8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  *n_out = n;
  return p * r * r + r + 1.0f;
}

GENKERNELS_VEC_INLINE f8 vexp(f8 x) {
  constexpr float kLow = -103.972084f, kHigh = 88.7228394f;  // e^x rounds to 0 / overflows past these
  f8 n;
  const f8 p = exp_reduced(vmin(vmax(x, splat(kLow)), splat(kHigh)), &n);
  // 2^n (n in [-150, 128]) as two normal powers of two, 2^(n/2) 2^(n - n/2), so that
  // subnormal results and e^x just below the overflow threshold both come out right
  const i8 ni = __builtin_convertvector(n, i8);
  const i8 n1 = ni / 2;
  const f8 y = p * pow2(n1) * pow2(ni - n1);
  const f8 inf = splat(std::numeric_limits<float>::infinity());
  return x < kLow ? f8{} : (x > kHigh ? inf : (x == x ? y : x));
}

// e^x for |x| <= 87 (inputs outside are clamped to +-87.3: no inf, no 0), NaN in -> NaN out:
// vexp without its range selects and second scale, for arguments known to be bounded
GENKERNELS_VEC_INLINE f8 vexp_bounded(f8 x) {
  f8 n;
  const f8 p = exp_reduced(vmin(vmax(x, splat(-87.3f)), splat(87.3f)), &n);
  return (x == x ? p * pow2(__builtin_convertvector(n, i8)) : x);
}

GENKERNELS_VEC_INLINE f8 vlog(f8 x) {
  constexpr float kSqrtHalf = 0.707106781186547524f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const i8 tiny = x < 1.17549435e-38f;  // subnormal (or 0, negative): scaled by 2^25 first
  const f8 xs = tiny ? x * 33554432.0f : x;
  const i8 bits = (i8)xs;
  f8 e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, f8) - (tiny ? splat(25.0f) : f8{});
  f8 m = (f8)((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const i8 low = m < kSqrtHalf;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const f8 z = m * m;
  f8 p = splat(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  f8 y = p * m * z;
  y += e * kLn2Lo;
  y -= 0.5f * z;
  const f8 out = m + y + e * kLn2Hi;
  const f8 inf = splat(std::numeric_limits<float>::infinity());
  const f8 nan = splat(std::numeric_limits<float>::quiet_NaN());
  return x > 0.0f ? (x == inf ? x : out) : (x == 0.0f ? -inf : nan);
}

// log(1 + y) for y > -1, exact to rounding near 0 (log(u) y / (u - 1) with u = 1 + y rounded)
GENKERNELS_VEC_INLINE f8 vlog1p(f8 y) {
  const f8 u = 1.0f + y;
  const f8 d = u - 1.0f;
  const f8 safe = d == 0.0f ? splat(1.0f) : d;
  return d == 0.0f ? y : vlog(u) * (y / safe);
}

// exp(x) - 1, relative precision kept near 0 (Taylor series to x^8 / 8! where |x| < 0.5)
GENKERNELS_VEC_INLINE f8 vexpm1(f8 x) {
  f8 p = splat(1.0f / 40320.0f);
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const f8 series = (p * x + 1.0f) * x;
  return (x > -0.5f && x < 0.5f) ? series : vexp(x) - 1.0f;
}

// softplus(t) = log(1 + e^t), no overflow
GENKERNELS_VEC_INLINE f8 vsoftplus(f8 t) {
  return vmax(t, f8{}) + vlog1p(vexp(-vabs(t)));
}

// 1 / (1 + e^-t), no overflow
GENKERNELS_VEC_INLINE f8 vsigmoid(f8 t) {
  const f8 e = vexp(-vabs(t));
  const f8 s = 1.0f / (1.0f + e);
  return t >= 0.0f ? s : e * s;
}

// tanh(a) = -expm1(-2|a|) / (2 + expm1(-2|a|)) with a's sign: full relative precision at 0
GENKERNELS_VEC_INLINE f8 vtanh(f8 a) {
  const f8 m = vexpm1(-2.0f * vabs(a));
  const f8 t = -m / (2.0f + m);
  return a < 0.0f ? -t : t;
}

// tanh(a) = 1 - 2 / (1 + e^2a): one exponential, within 1.8e-7 of tanh absolutely (not
// relatively: near 0 use vtanh)
GENKERNELS_VEC_INLINE f8 vtanh_abs(f8 a) { return 1.0f - 2.0f / (1.0f + vexp_bounded(2.0f * a)); }

}  // namespace genkernels::cpu::vec
