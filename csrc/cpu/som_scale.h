// The scale guard of the CPU SOM kernels (som.cpp, som_patch.cpp).
//
// Scale robustness, the rule of genkernels/som/ops.py (_scale_exponent) done here for the
// cpu backend, where a Python max-abs pass would cost more than a small op: when max |v|
// over x and the weights (NaN left out) is f 2^e, f in [0.5, 1), with e outside [lo, hi]
// -- D squared differences must stay below max / 16 and differences down to m 2^-digits
// must square to normal numbers -- both are scaled by 2^-e (exact), the kernel runs on the
// copies and distances / sums / trained weights are scaled back. Inside the range nothing
// changes: one vectorised max-abs pass over the inputs is the whole cost.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/som_cpu.h"

namespace genkernels::som::cpu {

// max |v| of p[0..n) with NaN skipped (a NaN compares false), kLanes lanes at a time
// (std::fmax would be a libm call per element).
template <typename T>
T max_abs(const T* p, int64_t n) {
  lanes_t<T> acc = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const lanes_t<T> t = abs_lanes<T>(load_lanes(p + i));
    acc = t > acc ? t : acc;
  }
  T m = T(0);
  for (int l = 0; l < kLanes; ++l) m = acc[l] > m ? acc[l] : m;
  for (; i < n; ++i) {
    const T t = std::abs(p[i]);
    m = t > m ? t : m;
  }
  return m;
}

// max |v| of p[0..n) and, in the same pass, whether every value is finite: v - v is 0 for
// a number and NaN for an Inf or a NaN, so their sum is 0 exactly when all are finite.
template <typename T>
T finite_max_abs(const T* p, int64_t n, bool* finite) {
  lanes_t<T> acc = {}, zero = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const lanes_t<T> v = load_lanes(p + i);
    const lanes_t<T> t = abs_lanes<T>(v);
    acc = t > acc ? t : acc;
    zero += v - v;
  }
  T m = T(0), z = combine_lanes<T>(zero);
  for (int l = 0; l < kLanes; ++l) m = acc[l] > m ? acc[l] : m;
  for (; i < n; ++i) {
    const T t = std::abs(p[i]);
    m = t > m ? t : m;
    z += p[i] - p[i];
  }
  *finite = z == T(0);
  return m;
}

// The exponent e the data must be scaled by (2^-e; 0: leave it) when max |v| = m, for D
// features.
template <typename T>
int scale_exponent_for(T m, int64_t D) {
  if (!(m > T(0)) || std::isinf(m)) return 0;
  int e = 0;
  std::frexp(m, &e);
  if (e >= -29 && e <= 31) return 0;  // inside every dtype's range for D < 2^40
  int log_d = 0;
  for (int64_t d = std::max<int64_t>(D, 1); d > 0; d >>= 1) ++log_d;
  const int emin = std::numeric_limits<T>::min_exponent - 1;  // tiny = 2^emin
  const int emax = std::numeric_limits<T>::max_exponent;      // max < 2^emax
  const int lo = (emin + 2 * std::numeric_limits<T>::digits) / 2 + 1;
  const int hi = (emax - 6 - log_d) / 2;
  return (e >= lo && e <= hi) ? 0 : e;
}

template <typename T>
int scale_exponent(const T* a, int64_t na, const T* b, int64_t nb, int64_t D) {
  return scale_exponent_for(std::max(max_abs(a, na), max_abs(b, nb)), D);
}

// t * 2^e elementwise (exact), a new contiguous tensor of t's dtype.
inline at::Tensor ldexp_copy(const at::Tensor& t, int e) {
  at::Tensor out = at::empty_like(t, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "ldexp_copy", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t n = t.numel();
    at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dst[i] = std::ldexp(src[i], e);
    });
  });
  return out;
}

inline int scale_exponent_of(const at::Tensor& xa, const at::Tensor& wa, int64_t D) {
  int e = 0;
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), "scale_exponent", [&] {
    e = scale_exponent(xa.data_ptr<scalar_t>(), xa.numel(), wa.data_ptr<scalar_t>(), wa.numel(), D);
  });
  return e;
}

}  // namespace genkernels::som::cpu
