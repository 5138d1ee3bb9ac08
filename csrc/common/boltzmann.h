// Per-unit arithmetic of sequential Gibbs sweeps in general Boltzmann machines, shared by
// csrc/cpu/boltzmann.cpp and csrc/cuda/boltzmann.cu (spec: genkernels/boltzmann/
// bm_reference.py, unit_probability and gibbs).
//
// A visited, unclamped unit with field h turns on at temperature T iff
//   u < p,  p = 1 / (1 + exp(-(h / T)))
// with every operation rounded in the fields' dtype, in this order: h / T, negate, exp,
// 1 + e, 1 / that; u is the fp32 uniform converted to that dtype. Division and addition
// round correctly on both sides (nvcc without --use_fast_math), so the kernels agree
// wherever their exponentials do:
//   * host: std::exp, the C library's (glibc: expf within 0.502 ulp, exp within 0.511
//     ulp), which is what torch.exp of a CPU scalar calls, so the cpu kernel equals the
//     reference;
//   * device, fp32: CUDA's expf is only within 2 ulp, so the float result is rounded from
//     the double exp (within 1 ulp of double): the correctly rounded expf but where e^x
//     lies within ~2^-29 float ulp of a rounding midpoint. glibc's expf is that value but
//     for 6.3e-4 of arguments (31,398 of 5e7 uniform x in [-20, 20], glibc 2.36), where it
//     is one ulp off; a draw then differs only if u equals p to the last bit (~6e-8), so
//     about one draw in 3e10;
//   * device, fp64: CUDA's exp (within 1 ulp). Where it and the host's differ by one ulp
//     a draw can still only differ if u, a float with 24 significant bits, lies between
//     the two doubles -- about 2^-29 per such pair.
#pragma once
#include <cmath>

#include "common/hd.h"

namespace genkernels::boltzmann {

GK_HD float unit_exp(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(::exp(static_cast<double>(x)));
#else
  return std::exp(x);
#endif
}

GK_HD double unit_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// p = 1 / (1 + exp(-(h / T))), the probability that the unit turns on.
template <typename Scalar>
GK_HD Scalar unit_probability(Scalar field, Scalar temperature) {
  return Scalar(1) / (Scalar(1) + unit_exp(-(field / temperature)));
}

// The Gibbs draw: 1 iff the uniform u (tl.rand's fp32 value) is below p.
template <typename Scalar>
GK_HD bool unit_turns_on(Scalar field, Scalar temperature, float uniform) {
  return static_cast<Scalar>(uniform) < unit_probability(field, temperature);
}

}  // namespace genkernels::boltzmann
