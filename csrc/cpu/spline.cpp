// CPU kernels of the rational-quadratic spline (schemas in csrc/genkernels.cpp, spec in
// genkernels/flows/spline_reference.py): per element one pass -- the softmaxes of the widths
// and heights, the knots, the bin search, the spline (or its inverse) and its log-derivative
// -- where eager PyTorch runs some forty kernels over (B, N, K)-sized temporaries; the
// backward recomputes them and backpropagates by hand in the same pass (nothing but the
// inputs is saved).
//
// Shapes: x (B, N), params (B, N, 3K - 1) (per feature K widths, K heights, K - 1 interior
// derivatives), mask (N,) 1 = kept. Per transformed element inside [-bound, bound], with the
// bin k found among the knots (of x, or of y for the inverse), its edges x0, x1, y0, y1, its
// knot derivatives d0, d1, W = x1 - x0, H = y1 - y0, s = H / W and theta in [0, 1]:
//   y = y0 + H Q, Q = (s theta^2 + d0 t) / D, t = theta (1 - theta), D = s + (d0 + d1 - 2s) t
//   ld = log f'(x) = log(s^2 P) - 2 log D, P = d1 theta^2 + 2 s t + d0 (1 - theta)^2
// The VJP of gy y + gl ld (forward) or gy x - gl ld (inverse, with theta the root of the
// quadratic): the forward differentiates Q and ld in theta, s, d0, d1 (and theta = (x - x0) /
// W); the inverse by implicit differentiation -- dtheta = (dy - dy(theta fixed)) / (W f'),
// so the gradient reaching y through theta is lambda = (gy W - gl ld_theta) / (W f') and the
// edges see -lambda times y's partials, plus x = x0 + W theta's own. The edges' gradients
// then pass through the cumulative sums (the knot j, 0 < j < K, is 2 bound (w_0 + ... +
// w_(j-1)) - bound: w_l collects 2 bound (g_x0 [l < k] + g_x1 [l <= k])), the softmax
// (grad_u_l = (1 - K MIN_BIN) sm_l (g_l - sum_i sm_i g_i)) and the softplus of the two
// derivatives the bin reads (its slope, torch's: 1 above 20). Kept features and elements
// outside [-bound, bound] are the identity: log-derivative 0, grad_x = grad_y, params'
// gradient 0 (a kept feature's parameters are never read: NaN there changes nothing).
// The inverse clamps its root into [0, 1]: it differs from the reference only where rounding
// pushed the reference's root out of the bin or made it 0 / 0 (float with extreme
// parameters), where the reference's x leaves the bin or its logdet is NaN.
//
// The arithmetic follows the reference's order (softmax as exp(u - max) times the
// reciprocal of the sum, the knots' cumulative sum accumulated in double, as torch's CPU
// cumsum does for float, softplus(u) = u above 20): uniform parameters give the same knots
// bit for bit, so a value placed on a knot falls into the reference's bin.
// float runs 8 elements per vector (vec_math.h): 8 consecutive elements of a chunk (a row's
// features, then the next row's), their parameters transposed into lanes on the way in and
// their gradients back on the way out, the bin's quantities picked by selects over the
// knots; double runs one element at a time with the C library's functions.
// Chunks are fixed by the shape alone (whole rows, or a long row's features in pieces),
// each row's log-derivatives summed in double in element order and a long row's pieces in
// order: the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/vec_math.h"

namespace genkernels::flows::cpu {
namespace {

namespace V = genkernels::cpu::vec;
using V::f8;

constexpr double kMinBin = 1e-3;
constexpr double kMinDerivative = 1e-3;
// torch's softplus (threshold 20) returns u itself above this, and its slope is then 1
constexpr double kSoftplusLinear = 20.0;

// Elements per chunk (a thread's unit of work: K = 8, about 45 microseconds in float) and
// the work (elements times parameters per element) below which one thread does it all
// (2^16: K = 8, 2,850 elements, about 130 microseconds).
constexpr int64_t kChunk = 1024;
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;

struct Shape {
  int64_t batch, features, bins, per_feature;  // B, N, K, 3K - 1
};

Shape check(const char* op, const at::Tensor& x, const at::Tensor& params, const at::Tensor& mask, double bound) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be (B, N); got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK_TYPE(params.scalar_type() == x.scalar_type(), op, ": params must have x's dtype ", x.scalar_type(),
                   "; got ", params.scalar_type());
  TORCH_CHECK_TYPE(mask.scalar_type() == x.scalar_type(), op, ": mask must have x's dtype ", x.scalar_type(),
                   "; got ", mask.scalar_type());
  TORCH_CHECK_VALUE(params.dim() == 3 && params.size(0) == x.size(0) && params.size(1) == x.size(1), op,
                    ": params must be (", x.size(0), ", ", x.size(1), ", 3K - 1) for x ", x.sizes(), "; got ",
                    params.sizes());
  const int64_t last = params.size(2);
  TORCH_CHECK_VALUE(last >= 2 && (last + 1) % 3 == 0, op,
                    ": params' last dimension must be 3K - 1 (K widths, K heights, K - 1 derivatives) with K >= 1; "
                    "got ", last);
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == x.size(1), op, ": mask must be (", x.size(1), ",); got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(std::isfinite(bound) && bound > 0, op, ": bound must be a finite number > 0; got ", bound);
  return {x.size(0), x.size(1), (last + 1) / 3, last};
}

// Rows of any stride with contiguous features (x, grad_y), or the tensor made so.
at::Tensor rows_of(const at::Tensor& v) { return v.size(1) <= 1 || v.stride(1) == 1 ? v : v.contiguous(); }

// params with each row's (N, 3K - 1) block contiguous (rows of any stride), or made so.
at::Tensor param_rows_of(const at::Tensor& p) {
  const bool inner = p.stride(2) == 1 && (p.size(1) <= 1 || p.stride(1) == p.size(2));
  return inner ? p : p.contiguous();
}

template <typename T>
struct Args {
  const T *x, *params, *mask, *gy, *gl;  // gy, gl: backward only
  int64_t sx, sp, sgy;                   // row strides
  T *y, *gx, *gp;                        // outputs, contiguous: y, gx (B, N), gp (B, N, 3K - 1)
  double bound;
  bool inverse;
};

// ---------------------------------------------------------------- lanes
// The element arithmetic is written once for L = double (one element) and L = f8 (8
// elements, T = float per lane).
template <class L>
struct Lane;
template <>
struct Lane<double> {
  using T = double;
  static double splat(double v) { return v; }
  static double exp(double v) { return std::exp(v); }
  static double exp_nonpositive(double v) { return std::exp(v); }
  static double log(double v) { return std::log(v); }
  static double log1p(double v) { return std::log1p(v); }
  static double sqrt(double v) { return std::sqrt(v); }
  static double max(double a, double b) { return a > b ? a : b; }
  static double min(double a, double b) { return a < b ? a : b; }
};
template <>
struct Lane<f8> {
  using T = float;
  static f8 splat(float v) { return V::splat(v); }
  static f8 exp(f8 v) { return V::vexp(v); }
  // e^v for v <= 0 (a softmax's): below -87.3 it gives e^-87.3 (~1e-38) instead of 0
  static f8 exp_nonpositive(f8 v) { return V::vexp_bounded(v); }
  static f8 log(f8 v) { return V::vlog(v); }
  static f8 log1p(f8 v) { return V::vlog1p(v); }
  static f8 sqrt(f8 v) {
#ifdef __AVX__
    return (f8)_mm256_sqrt_ps((__m256)v);
#else
    for (int j = 0; j < 8; ++j) v[j] = std::sqrt(v[j]);
    return v;
#endif
  }
  static f8 max(f8 a, f8 b) { return V::vmax(a, b); }
  static f8 min(f8 a, f8 b) { return V::vmin(a, b); }
};

// A running sum of the bin fractions kept in double, returned rounded to the lane type
// (torch's CPU cumsum accumulates float in double).
struct CumSumD {
  double total = 0;
  double add(double v) { return total += v; }
};
struct CumSumF {
  V::d4 lo{}, hi{};
  f8 add(f8 v) {
    using f4 = float __attribute__((vector_size(16)));
    lo += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), V::d4);
    hi += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), V::d4);
    const f4 a = __builtin_convertvector(lo, f4), b = __builtin_convertvector(hi, f4);
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7);
  }
};

// v rounded to its type where it stands: the compiler may not fuse the product it holds into
// the next addition (an FMA rounds once where the reference, an op at a time, rounds twice;
// the knots must come out as the reference's, to the bit, where its arithmetic is exact)
template <class L>
GENKERNELS_VEC_INLINE L rounded(L v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#else
  asm("" : "+m"(v));
#endif
  return v;
}

template <class L>
struct Constants {
  using T = typename Lane<L>::T;
  int64_t bins;
  T bound, two_bound, scale, min_bin, min_derivative;  // scale = 1 - K MIN_BIN
  bool inverse;
  Constants(int64_t k, double b, bool inv)
      : bins(k), bound(T(b)), two_bound(T(2.0 * b)), scale(T(1.0 - kMinBin * double(k))), min_bin(T(kMinBin)),
        min_derivative(T(kMinDerivative)), inverse(inv) {}
};

// raw[0, K) unnormalised bin sizes -> sm[0, K) their softmax, knot[0, K] from -bound to bound
template <class L>
inline void knots(const Constants<L>& c, const L* raw, L* sm, L* knot) {
  using F = Lane<L>;
  using T = typename F::T;
  const int64_t k = c.bins;
  L top = raw[0];
  for (int64_t j = 1; j < k; ++j) top = F::max(top, raw[j]);
  L sum = F::splat(0);
  for (int64_t j = 0; j < k; ++j) {
    sm[j] = F::exp_nonpositive(raw[j] - top);
    sum = sum + sm[j];
  }
  const L inv = T(1) / sum;
  for (int64_t j = 0; j < k; ++j) sm[j] = sm[j] * inv;
  std::conditional_t<std::is_same_v<L, double>, CumSumD, CumSumF> cum;
  knot[0] = F::splat(-c.bound);
  for (int64_t j = 0; j + 1 < k; ++j) {
    knot[j + 1] = rounded<L>(cum.add(rounded<L>(c.scale * sm[j]) + c.min_bin) * c.two_bound) - c.bound;
  }
  knot[k] = F::splat(c.bound);
}

// The per-element work space: the two softmaxes and the two knot vectors.
template <class L>
struct Scratch {
  std::vector<L> space;
  L *sm_w, *sm_h, *xk, *yk;
  explicit Scratch(int64_t k) : space(4 * k + 2) {
    sm_w = space.data();
    sm_h = sm_w + k;
    xk = sm_h + k;
    yk = xk + k + 1;
  }
};

// One element (or 8): raw its 3K - 1 parameters, v the point (x, or y for the inverse).
// Forward: out and ld (log dy/dx at the point, before the inverse's sign). kBackward: gv and
// graw[0, 3K - 1) from the incoming gradients gy (of out) and gl (of the logdet).
template <class L, bool kBackward>
inline void element(const Constants<L>& c, const L* raw, L v, Scratch<L>& s, L& out, L& ld, L gy, L gl, L& gv,
                    L* graw) {
  using F = Lane<L>;
  using T = typename F::T;
  constexpr bool kScalar = std::is_same_v<L, double>;
  const int64_t k = c.bins;
  knots(c, raw, s.sm_w, s.xk);
  knots(c, raw + k, s.sm_h, s.yk);
  const L* edges = c.inverse ? s.yk : s.xk;
  const L* u = raw + 2 * k;
  const L one = F::splat(1), zero = F::splat(0);

  // the bin: the number of interior edges <= v; its edges and the raw derivatives at its
  // ends (d0 from u[bin - 1] where bin >= 1, d1 from u[bin] where bin <= K - 2; else 1)
  L x0, x1, y0, y1, u0 = zero, u1 = zero;
  std::conditional_t<kScalar, int64_t, f8> bin{};
  std::conditional_t<kScalar, bool, V::i8> has0, has1;
  if constexpr (kScalar) {
    for (int64_t j = 1; j < k; ++j) bin += edges[j] <= v;
    x0 = s.xk[bin], x1 = s.xk[bin + 1], y0 = s.yk[bin], y1 = s.yk[bin + 1];
    has0 = bin >= 1;
    has1 = bin + 1 < k;
    if (has0) u0 = u[bin - 1];
    if (has1) u1 = u[bin];
  } else {
    for (int64_t j = 1; j < k; ++j) bin += edges[j] <= v ? one : zero;
    x0 = s.xk[0], x1 = s.xk[1], y0 = s.yk[0], y1 = s.yk[1];
    for (int64_t j = 1; j < k; ++j) {
      const auto at = bin == T(j);
      x0 = at ? s.xk[j] : x0;
      x1 = at ? s.xk[j + 1] : x1;
      y0 = at ? s.yk[j] : y0;
      y1 = at ? s.yk[j + 1] : y1;
      u0 = at ? u[j - 1] : u0;
    }
    for (int64_t j = 0; j + 1 < k; ++j) u1 = bin == T(j) ? u[j] : u1;
    has0 = bin >= T(1);
    has1 = bin <= T(k - 2);
  }
  // d = MIN_DERIVATIVE + softplus(u), softplus(u) = log1p(e^u) (u above 20: u itself)
  const T linear = T(kSoftplusLinear);
  const L z0 = F::exp(u0), z1 = F::exp(u1);
  const L d0 = has0 ? (u0 > linear ? u0 : F::log1p(z0)) + c.min_derivative : one;
  const L d1 = has1 ? (u1 > linear ? u1 : F::log1p(z1)) + c.min_derivative : one;

  const L width = x1 - x0, height = y1 - y0;
  const L slope = height / width;
  const L e = d0 + d1 - 2 * slope;
  L theta;
  if (c.inverse) {
    const L dy = v - y0;
    const L qa = height * (slope - d0) + dy * e;
    const L qb = height * d0 - dy * e;
    const L qc = -slope * dy;
    const L disc = F::max(qb * qb - 4 * qa * qc, zero);
    // clamped into the bin: rounding (float, extreme parameters) can push the root out of
    // [0, 1], or make it 0 / 0 (then 0: c = 0 means y = y0), where log f' would be NaN
    theta = (2 * qc) / (-qb - F::sqrt(disc));
    theta = F::min(F::max(theta, zero), one);
    out = x0 + theta * width;
  } else {
    theta = (v - x0) / width;
  }
  const L omt = 1 - theta;
  const L t1 = theta * omt;
  const L den = slope + e * t1;
  const L num = slope * theta * theta + d0 * t1;
  if (!c.inverse) out = y0 + height * num / den;
  const L poly = d1 * theta * theta + 2 * slope * t1 + d0 * omt * omt;
  const L dnum = slope * slope * poly;
  if constexpr (kScalar) {
    ld = F::log(dnum) - 2 * F::log(den);
  } else {
    ld = F::log(dnum / (den * den));  // one logarithm: float's rounding either way
  }
  if constexpr (kBackward) {
    const L inv_den = 1 / den, inv_poly = 1 / poly;
    const L q = num * inv_den;
    const L fprime = dnum * inv_den * inv_den;  // dy/dx
    const L omt2 = 1 - 2 * theta;
    // partials of Q (y = y0 + H Q) and of ld in s, d0, d1 (theta fixed), and of ld in theta
    const L q_s = (theta * theta - q * (1 - 2 * t1)) * inv_den;
    const L q_d0 = t1 * (1 - q) * inv_den;
    const L q_d1 = -q * t1 * inv_den;
    const L ld_theta = 2 * (d1 * theta + slope * omt2 - d0 * omt) * inv_poly - 2 * e * omt2 * inv_den;
    const L ld_s = 2 / slope + 2 * t1 * inv_poly - 2 * (1 - 2 * t1) * inv_den;
    const L ld_d0 = omt * omt * inv_poly - 2 * t1 * inv_den;
    const L ld_d1 = theta * theta * inv_poly - 2 * t1 * inv_den;
    // gy_spline: the gradient reaching y = y0 + H Q with theta held; g_x0, g_w: x0's and W's
    // through theta = (x - x0) / W (forward) or x = x0 + W theta (inverse)
    L gl_ld, gy_spline, g_x0, g_w;
    if (c.inverse) {
      gl_ld = -gl;
      const L lambda = (gy * width + gl_ld * ld_theta) / (width * fprime);
      gv = lambda;
      gy_spline = -lambda;
      g_x0 = gy;
      g_w = gy * theta;
    } else {
      gl_ld = gl;
      const L g_theta = gy * width * fprime + gl_ld * ld_theta;
      gv = g_theta / width;
      gy_spline = gy;
      g_x0 = -gv;
      g_w = -gv * theta;
    }
    const L g_slope = gy_spline * height * q_s + gl_ld * ld_s;
    const L g_d0 = gy_spline * height * q_d0 + gl_ld * ld_d0;
    const L g_d1 = gy_spline * height * q_d1 + gl_ld * ld_d1;
    const L g_h = gy_spline * q + g_slope / width;
    g_w = g_w - g_slope * slope / width;
    const L g_y0 = gy_spline - g_h;
    // the interior edges only (the ends are the constants -bound, bound)
    const L gx_lo = has0 ? g_x0 - g_w : zero, gx_hi = has1 ? g_w : zero;
    const L gy_lo = has0 ? g_y0 : zero, gy_hi = has1 ? g_h : zero;
    // the knots' cumulative sums and the softmaxes: w_l receives 2 bound (g_lo + g_hi) for
    // l < bin, 2 bound g_hi for l = bin, nothing above
    const auto softmax_grad = [&](const L* sm, L lo, L hi, L* g) {
      const L below = c.two_bound * (lo + hi), at = c.two_bound * hi;
      L dot = zero;
      for (int64_t l = 0; l < k; ++l) {
        g[l] = bin > T(l) ? below : (bin == T(l) ? at : zero);
        dot = dot + sm[l] * g[l];
      }
      for (int64_t l = 0; l < k; ++l) g[l] = c.scale * sm[l] * (g[l] - dot);
    };
    softmax_grad(s.sm_w, gx_lo, gx_hi, graw);
    softmax_grad(s.sm_h, gy_lo, gy_hi, graw + k);
    // softplus' slope: e^u / (e^u + 1) (1 above 20)
    const L gu0 = has0 ? g_d0 * (u0 > linear ? one : z0 / (z0 + 1)) : zero;
    const L gu1 = has1 ? g_d1 * (u1 > linear ? one : z1 / (z1 + 1)) : zero;
    L* gu = graw + 2 * k;
    for (int64_t j = 0; j + 1 < k; ++j) gu[j] = bin == T(j + 1) ? gu0 : (bin == T(j) ? gu1 : zero);
  }
}

// Elements [f0, f1) of rows [b0, b1) (every element of a row before the next row's): y, or
// gx and gp; forward: each row's sum of log-derivatives into sums[b - b0].
template <bool kBackward>
void chunk_d(const Args<double>& a, const Shape& sh, int64_t b0, int64_t b1, int64_t f0, int64_t f1, double* sums) {
  const Constants<double> c(sh.bins, a.bound, a.inverse);
  Scratch<double> s(sh.bins);
  const int64_t p = sh.per_feature, n = sh.features;
  for (int64_t b = b0; b < b1; ++b) {
    const double* x = a.x + b * a.sx;
    double total = 0;
    for (int64_t f = f0; f < f1; ++f) {
      const double v = x[f];
      const bool active = a.mask[f] == 0.0 && v >= -c.bound && v <= c.bound;
      const double* raw = a.params + b * a.sp + f * p;
      double out = v, ld = 0.0, gv = 0.0;
      if constexpr (kBackward) {
        const double g = a.gy[b * a.sgy + f];
        double* gp = a.gp + (b * n + f) * p;
        if (active) {
          element<double, true>(c, raw, v, s, out, ld, g, a.gl[b], gv, gp);
        } else {
          gv = g;
          std::fill(gp, gp + p, 0.0);
        }
        a.gx[b * n + f] = gv;
      } else {
        if (active) {
          element<double, false>(c, raw, v, s, out, ld, 0.0, 0.0, gv, nullptr);
          total += ld;
        }
        a.y[b * n + f] = out;
      }
    }
    if (!kBackward) sums[b - b0] = total;
  }
}

// The 3K - 1 parameters of 8 elements (row, column), transposed: raw[i] holds parameter i of
// each lane's element; 0 on the inactive lanes (a kept feature's parameters, NaN say, never
// enter the arithmetic). Lane by lane: AVX2's gathers measured slower on AMD EPYC (K = 8: 45
// -> 65 ns an element forward).
void gather_params(const float* params, int64_t sp, int64_t p, const int64_t* rows, const int64_t* cols,
                   const int32_t* act, f8* raw) {
  for (int j = 0; j < 8; ++j) {
    if (act[j]) {
      const float* src = params + rows[j] * sp + cols[j] * p;
      for (int64_t i = 0; i < p; ++i) raw[i][j] = src[i];
    } else {
      for (int64_t i = 0; i < p; ++i) raw[i][j] = 0.0f;
    }
  }
}

// As chunk_d, 8 elements per vector.
template <bool kBackward>
void chunk_f(const Args<float>& a, const Shape& sh, int64_t b0, int64_t b1, int64_t f0, int64_t f1, double* sums) {
  const Constants<f8> c(sh.bins, a.bound, a.inverse);
  Scratch<f8> s(sh.bins);
  const int64_t p = sh.per_feature, n = sh.features, per_row = f1 - f0;
  std::vector<f8> raw(p), graw(kBackward ? p : 0);
  const int64_t end = (b1 - b0) * per_row;
  if (!kBackward) std::fill(sums, sums + (b1 - b0), 0.0);
  int64_t row = b0, col = f0;
  for (int64_t e = 0; e < end; e += 8) {
    const int lanes = int(std::min<int64_t>(8, end - e));
    int64_t rows[8], cols[8];
    alignas(32) float xs[8], gys[8], gls[8];
    alignas(32) int32_t act[8];
    for (int j = 0; j < 8; ++j) {
      rows[j] = row;
      cols[j] = col;
      bool active = false;
      if (j < lanes) {
        xs[j] = a.x[row * a.sx + col];
        active = a.mask[col] == 0.0f && xs[j] >= -c.bound && xs[j] <= c.bound;
        if (kBackward) {
          gys[j] = a.gy[row * a.sgy + col];
          gls[j] = a.gl[row];
        }
        if (++col == f1) {
          col = f0;
          ++row;
        }
      } else {
        xs[j] = gys[j] = gls[j] = 0.0f;
      }
      act[j] = active ? -1 : 0;
    }
    V::i8 active;
    __builtin_memcpy(&active, act, sizeof(active));
    gather_params(a.params, a.sp, p, rows, cols, act, raw.data());
    const f8 xv = V::load(xs);
    const f8 v = active ? xv : f8{};
    f8 out, ld, gv;
    if constexpr (kBackward) {
      const f8 g = V::load(gys);
      element<f8, true>(c, raw.data(), v, s, out, ld, g, V::load(gls), gv, graw.data());
      const f8 gx = active ? gv : g;
      for (int j = 0; j < lanes; ++j) {
        a.gx[rows[j] * n + cols[j]] = gx[j];
        float* dst = a.gp + (rows[j] * n + cols[j]) * p;
        if (act[j]) {
          for (int64_t i = 0; i < p; ++i) dst[i] = graw[i][j];
        } else {
          std::fill(dst, dst + p, 0.0f);
        }
      }
    } else {
      element<f8, false>(c, raw.data(), v, s, out, ld, f8{}, f8{}, gv, nullptr);
      const f8 y = active ? out : xv;
      for (int j = 0; j < lanes; ++j) {
        a.y[rows[j] * n + cols[j]] = y[j];
        if (act[j]) sums[rows[j] - b0] += double(ld[j]);
      }
    }
  }
}

template <typename Body>
void for_chunks(int64_t chunks, int team, const Body& body) {
  if (team <= 1) {
    for (int64_t c = 0; c < chunks; ++c) body(c, 0);
  } else {
    genkernels::cpu::parallel_chunks(chunks, team, body);
  }
}

// Chunks of whole rows (kChunk elements or one row), or of one row's features in pieces of
// kChunk where a row is longer; forward: logdet (B,) from the pieces' sums in row order.
template <typename T, bool kBackward>
void run(const Args<T>& a, const Shape& sh, T* logdet) {
  const int64_t n = sh.features;
  const int64_t per_row = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  const int64_t rows_per_chunk = per_row > 1 ? 1 : std::max<int64_t>(1, kChunk / std::max<int64_t>(1, n));
  const int64_t chunks = per_row > 1 ? sh.batch * per_row : (sh.batch + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t piece = per_row > 1 ? kChunk : n;
  const int64_t work = sh.batch * n * sh.per_feature;
  const int team =
      genkernels::cpu::team_size(std::min<int64_t>(chunks, std::max<int64_t>(1, work / kMinWorkPerThread)));
  // sums[b * per_row + q]: row b's piece q
  std::vector<double> sums(kBackward ? 0 : sh.batch * per_row, 0.0);
  for_chunks(chunks, team, [&](int64_t c, int) {
    int64_t b0, b1, f0, f1;
    if (per_row > 1) {
      b0 = c / per_row, b1 = b0 + 1, f0 = (c % per_row) * piece, f1 = std::min(n, f0 + piece);
    } else {
      b0 = c * rows_per_chunk, b1 = std::min(sh.batch, b0 + rows_per_chunk), f0 = 0, f1 = n;
    }
    double* out = kBackward ? nullptr : sums.data() + b0 * per_row + (per_row > 1 ? c % per_row : 0);
    if constexpr (std::is_same_v<T, float>) {
      chunk_f<kBackward>(a, sh, b0, b1, f0, f1, out);
    } else {
      chunk_d<kBackward>(a, sh, b0, b1, f0, f1, out);
    }
  });
  if constexpr (!kBackward) {
    const double sign = a.inverse ? -1.0 : 1.0;
    for (int64_t b = 0; b < sh.batch; ++b) {
      double total = 0;
      for (int64_t q = 0; q < per_row; ++q) total += sums[b * per_row + q];
      logdet[b] = T(sign * total);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rq_spline_cpu(const at::Tensor& x, const at::Tensor& params, const at::Tensor& mask,
                                                 double bound, bool inverse) {
  const Shape sh = check("rq_spline", x, params, mask, bound);
  at::Tensor y = at::empty({sh.batch, sh.features}, x.options());
  at::Tensor logdet = at::zeros({sh.batch}, x.options());
  if (y.numel() == 0) return {y, logdet};
  const at::Tensor xr = rows_of(x), pr = param_rows_of(params), m = mask.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_spline", [&] {
    Args<scalar_t> a{xr.const_data_ptr<scalar_t>(), pr.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
                     nullptr, nullptr, xr.stride(0), pr.stride(0), 0, y.mutable_data_ptr<scalar_t>(), nullptr,
                     nullptr, bound, inverse};
    run<scalar_t, false>(a, sh, logdet.mutable_data_ptr<scalar_t>());
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> rq_spline_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                                          const at::Tensor& x, const at::Tensor& params,
                                                          const at::Tensor& mask, double bound, bool inverse) {
  constexpr const char* op = "rq_spline_backward";
  const Shape sh = check(op, x, params, mask, bound);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": grad_y must be x's shape ", x.sizes(), "; got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_logdet.dim() == 1 && grad_logdet.size(0) == sh.batch, op, ": grad_logdet must be (",
                    sh.batch, ",); got ", grad_logdet.sizes());
  at::Tensor gx = at::empty({sh.batch, sh.features}, x.options());
  at::Tensor gp = at::empty({sh.batch, sh.features, sh.per_feature}, x.options());
  if (gx.numel() == 0) return {gx, gp};
  const at::Tensor g = rows_of(grad_y.to(x.scalar_type()));
  const at::Tensor gl = grad_logdet.to(x.scalar_type()).contiguous();
  const at::Tensor xr = rows_of(x), pr = param_rows_of(params), m = mask.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_spline_backward", [&] {
    Args<scalar_t> a{xr.const_data_ptr<scalar_t>(), pr.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
                     g.const_data_ptr<scalar_t>(), gl.const_data_ptr<scalar_t>(), xr.stride(0), pr.stride(0),
                     g.stride(0), nullptr, gx.mutable_data_ptr<scalar_t>(), gp.mutable_data_ptr<scalar_t>(), bound,
                     inverse};
    run<scalar_t, true>(a, sh, nullptr);
  });
  return {gx, gp};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using SplineSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           double, bool);
using SplineVjpSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&, double, bool);

// Autograd of rq_spline on the CPU, in C++: a Python autograd function cost about 0.2 ms a
// call. Only the inputs are saved (the backward recomputes the bins); an unused output's
// gradient is never formed; under a double backward the VJP runs through the spec
// (rq_spline_vjp, a differentiable Python kernel), so second derivatives are exact.
class SplineFunction : public torch::autograd::Function<SplineFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                               const at::Tensor& mask, double bound, bool inverse) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::rq_spline", "").typed<SplineSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = op.call(x, params, mask, bound, inverse);
    ctx->save_for_backward({x, params, mask});
    ctx->saved_data["bound"] = bound;
    ctx->saved_data["inverse"] = inverse;
    ctx->set_materialize_grads(false);
    return {y, logdet};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(5);
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &params = saved[1], &mask = saved[2];
    const double bound = ctx->saved_data["bound"].toDouble();
    const bool inverse = ctx->saved_data["inverse"].toBool();
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor gl = grads[1].defined() ? grads[1] : at::zeros({x.size(0)}, x.options());
    static const auto fused = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("genkernels::rq_spline_backward", "")
                                  .typed<SplineVjpSignature>();
    static const auto spec =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::rq_spline_vjp", "").typed<SplineVjpSignature>();
    auto [gx, gp] = (at::GradMode::is_enabled() ? spec : fused).call(gy, gl, x, params, mask, bound, inverse);
    if (ctx->needs_input_grad(0)) result[0] = gx;
    if (ctx->needs_input_grad(1)) result[1] = gp;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> rq_spline_autograd(const at::Tensor& x, const at::Tensor& params,
                                                      const at::Tensor& mask, double bound, bool inverse) {
  const variable_list out = SplineFunction::apply(x, params, mask, bound, inverse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) { m.impl("rq_spline", &rq_spline_autograd); }

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("rq_spline", &rq_spline_cpu);
  m.impl("rq_spline_backward", &rq_spline_backward_cpu);
}

}  // namespace genkernels::flows::cpu
