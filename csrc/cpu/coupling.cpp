// CPU kernels of the affine coupling's elementwise part (schemas in csrc/genkernels.cpp, spec
// in genkernels/flows/coupling_reference.py): one pass over x, s, t and the mask per
// direction, the bounded scale, the scale-and-shift and the per-sample log-determinant
// together, forward and backward -- where eager PyTorch runs a chain of memory-bound kernels
// (tanh, exp, mul, add, where, sum: each a pass over the batch, most writing a temporary).
//
// With kept = mask != 0, sigma = b tanh(s / b) (b finite) or s (b = inf), sigma' = d sigma / ds
// = (1 - sigma / b)(1 + sigma / b), in the direction's sign e = exp(+-sigma):
//   forward  y = x e + t,          logdet = sum sigma        (over the transformed features)
//   inverse  y = (x - t) e,        logdet = -sum sigma
// and the kept features pass through. The VJP, with gy, gl the incoming gradients:
//   forward  gx = gy e, gt = gy,       gs = (gy x e + gl) sigma'
//   inverse  gx = gy e, gt = -gy e,    gs = (-gy (x - t) e - gl) sigma'
// (gx = gy, gs = gt = 0 on the kept features). float runs 8 features per vector (vec_math.h;
// a row's tail padded as kept features, which add nothing); double one at a time with the C
// library's tanh and exp. Rows may have any stride, features must be contiguous. logdet sums
// each row chunk in a fixed order and the chunks in row order: the result does not depend on
// the number of threads.
#include <ATen/ATen.h>
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

// Features per chunk (a thread's unit of work) and the elements below which one thread
// does it all (a pass over 2^16 floats is ~20 us).
constexpr int64_t kChunk = 4096;
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;

struct Rows {
  int64_t batch, features;
};

Rows check(const char* op, const at::Tensor& x, const at::Tensor& s, const at::Tensor& t, const at::Tensor& mask,
           double bound) {
  TORCH_CHECK_VALUE(x.dim() == 2 && s.dim() == 2 && t.dim() == 2, op, ": x, s and t must be (B, N); got ",
                    x.sizes(), ", ", s.sizes(), " and ", t.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  for (const at::Tensor* other : {&s, &t, &mask})
    TORCH_CHECK_TYPE(other->scalar_type() == x.scalar_type(), op, ": s, t and mask must have x's dtype ",
                     x.scalar_type(), "; got ", other->scalar_type());
  TORCH_CHECK_VALUE(s.sizes() == x.sizes() && t.sizes() == x.sizes(), op, ": s and t must be x's shape ", x.sizes(),
                    "; got ", s.sizes(), " and ", t.sizes());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == x.size(1), op, ": mask must be (", x.size(1), ",); got ",
                    mask.sizes());
  for (const at::Tensor* v : {&x, &s, &t, &mask})
    TORCH_CHECK_VALUE(v->size(-1) <= 1 || v->stride(-1) == 1, op, ": the features of x, s, t and mask must be ",
                      "contiguous; got strides ", v->strides());
  TORCH_CHECK_VALUE(bound > 0, op, ": bound must be > 0 (inf: no bound); got ", bound);
  return {x.size(0), x.size(1)};
}

// The per-element formulas, once for 8 float lanes and once for a double.
struct Lanes {
  f8 kept, x, s, t;  // kept: nonzero where the feature passes through
};

// -> sigma, with sigma' in *dsigma (when non-null)
inline f8 scale_f(f8 s, float bound, f8* dsigma) {
  if (std::isinf(bound)) {
    if (dsigma) *dsigma = V::splat(1.0f);
    return s;
  }
  const f8 r = V::vtanh(s * (1.0f / bound));
  if (dsigma) *dsigma = (1.0f - r) * (1.0f + r);
  return r * bound;
}

inline double scale_d(double s, double bound, double* dsigma) {
  if (std::isinf(bound)) {
    if (dsigma) *dsigma = 1.0;
    return s;
  }
  const double r = std::tanh(s / bound);
  if (dsigma) *dsigma = (1.0 - r) * (1.0 + r);
  return r * bound;
}

template <typename T>
struct Args {
  const T *x, *s, *t, *mask, *gy, *gl;
  int64_t sx, ss, st, sgy;
  T *y, *gx, *gs, *gt;  // outputs, contiguous (B, N)
  T bound;
  bool inverse;
};

// Row b, features [f0, f1): forward (y, returns the chunk's logdet sum) or, with gy non-null,
// backward (gx, gs, gt).
double chunk_f(const Args<float>& a, int64_t b, int64_t f0, int64_t f1, int64_t n) {
  const float* x = a.x + b * a.sx;
  const float* s = a.s + b * a.ss;
  const float* t = a.t + b * a.st;
  const float sign = a.inverse ? -1.0f : 1.0f;
  f8 acc{};
  const bool backward = a.gy != nullptr;
  const float gl = backward ? a.gl[b] : 0.0f;
  const float* gy = backward ? a.gy + b * a.sgy : nullptr;
  for (int64_t f = f0; f < f1; f += 8) {
    const int lanes = int(std::min<int64_t>(8, f1 - f));
    const bool full = lanes == 8;
    const f8 kept = full ? V::load(a.mask + f) : V::load(a.mask + f, lanes, 1.0f);
    const f8 xv = full ? V::load(x + f) : V::load(x + f, lanes, 0.0f);
    const f8 sv = full ? V::load(s + f) : V::load(s + f, lanes, 0.0f);
    const f8 tv = full ? V::load(t + f) : V::load(t + f, lanes, 0.0f);
    f8 dsigma;
    const f8 sigma = scale_f(sv, a.bound, backward ? &dsigma : nullptr);
    const f8 e = V::vexp(sign * sigma);
    const auto keep = kept != 0.0f;
    if (!backward) {
      const f8 y = keep ? xv : (a.inverse ? (xv - tv) * e : xv * e + tv);
      acc += keep ? f8{} : sigma;
      if (full) {
        V::store(a.y + b * n + f, y);
      } else {
        V::store(a.y + b * n + f, y, lanes);
      }
    } else {
      const f8 g = full ? V::load(gy + f) : V::load(gy + f, lanes, 0.0f);
      const f8 moved = a.inverse ? (xv - tv) * e : xv * e;
      const f8 gx = keep ? g : g * e;
      const f8 gt = keep ? f8{} : (a.inverse ? -g * e : g);
      const f8 gs = keep ? f8{} : (sign * (g * moved + gl)) * dsigma;
      float* ox = a.gx + b * n + f;
      float* os = a.gs + b * n + f;
      float* ot = a.gt + b * n + f;
      if (full) {
        V::store(ox, gx);
        V::store(os, gs);
        V::store(ot, gt);
      } else {
        V::store(ox, gx, lanes);
        V::store(os, gs, lanes);
        V::store(ot, gt, lanes);
      }
    }
  }
  return V::sum(acc);
}

double chunk_d(const Args<double>& a, int64_t b, int64_t f0, int64_t f1, int64_t n) {
  const double* x = a.x + b * a.sx;
  const double* s = a.s + b * a.ss;
  const double* t = a.t + b * a.st;
  const double sign = a.inverse ? -1.0 : 1.0;
  double acc = 0;
  const bool backward = a.gy != nullptr;
  const double gl = backward ? a.gl[b] : 0.0;
  for (int64_t f = f0; f < f1; ++f) {
    const bool keep = a.mask[f] != 0.0;
    double dsigma = 0;
    const double sigma = keep ? 0.0 : scale_d(s[f], a.bound, backward ? &dsigma : nullptr);
    const double e = keep ? 1.0 : std::exp(sign * sigma);
    if (!backward) {
      a.y[b * n + f] = keep ? x[f] : (a.inverse ? (x[f] - t[f]) * e : x[f] * e + t[f]);
      acc += sigma;
    } else {
      const double g = a.gy[b * a.sgy + f];
      const double moved = a.inverse ? (x[f] - t[f]) * e : x[f] * e;
      a.gx[b * n + f] = g * e;
      a.gt[b * n + f] = keep ? 0.0 : (a.inverse ? -g * e : g);
      a.gs[b * n + f] = keep ? 0.0 : sign * (g * moved + gl) * dsigma;
    }
  }
  return acc;
}

// Every (row, chunk) on the team; forward: logdet (B,) from the chunks' sums in row order.
template <typename T>
void run(const Args<T>& a, const Rows& r, T* logdet) {
  const int64_t per_row = std::max<int64_t>(1, (r.features + kChunk - 1) / kChunk);
  const int64_t chunks = r.batch * per_row;
  const int team = genkernels::cpu::team_size(
      std::min<int64_t>(chunks, std::max<int64_t>(1, r.batch * r.features / kMinWorkPerThread)));
  genkernels::cpu::SoloScope solo(team <= 1);
  std::vector<double> sums(chunks, 0.0);
  genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t c, int) {
    const int64_t b = c / per_row, f0 = (c % per_row) * kChunk, f1 = std::min(r.features, f0 + kChunk);
    if constexpr (std::is_same_v<T, float>) {
      sums[c] = chunk_f(a, b, f0, f1, r.features);
    } else {
      sums[c] = chunk_d(a, b, f0, f1, r.features);
    }
  });
  if (logdet != nullptr) {
    const double sign = a.inverse ? -1.0 : 1.0;
    for (int64_t b = 0; b < r.batch; ++b) {
      double total = 0;
      for (int64_t k = 0; k < per_row; ++k) total += sums[b * per_row + k];
      logdet[b] = T(sign * total);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affine_coupling_cpu(const at::Tensor& x, const at::Tensor& s, const at::Tensor& t,
                                                       const at::Tensor& mask, double bound, bool inverse) {
  const Rows r = check("affine_coupling", x, s, t, mask, bound);
  at::Tensor y = at::empty({r.batch, r.features}, x.options());
  at::Tensor logdet = at::zeros({r.batch}, x.options());
  if (y.numel() == 0) return {y, logdet};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling", [&] {
    Args<scalar_t> a{x.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                     mask.const_data_ptr<scalar_t>(), nullptr, nullptr, x.stride(0), s.stride(0), t.stride(0), 0,
                     y.mutable_data_ptr<scalar_t>(), nullptr, nullptr, nullptr, scalar_t(bound), inverse};
    run<scalar_t>(a, r, logdet.mutable_data_ptr<scalar_t>());
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& s,
    const at::Tensor& t, const at::Tensor& mask, double bound, bool inverse) {
  constexpr const char* op = "affine_coupling_backward";
  const Rows r = check(op, x, s, t, mask, bound);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": grad_y must be x's shape ", x.sizes(), "; got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_logdet.dim() == 1 && grad_logdet.size(0) == r.batch, op, ": grad_logdet must be (",
                    r.batch, ",); got ", grad_logdet.sizes());
  const at::Tensor gy = grad_y.to(x.scalar_type());
  const at::Tensor g = gy.size(-1) <= 1 || gy.stride(-1) == 1 ? gy : gy.contiguous();
  const at::Tensor gl = grad_logdet.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty({r.batch, r.features}, x.options());
  at::Tensor gs = at::empty_like(gx), gt = at::empty_like(gx);
  if (gx.numel() == 0) return {gx, gs, gt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_backward", [&] {
    Args<scalar_t> a{x.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                     mask.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), gl.const_data_ptr<scalar_t>(),
                     x.stride(0), s.stride(0), t.stride(0), g.stride(0), nullptr,
                     gx.mutable_data_ptr<scalar_t>(), gs.mutable_data_ptr<scalar_t>(),
                     gt.mutable_data_ptr<scalar_t>(), scalar_t(bound), inverse};
    run<scalar_t>(a, r, nullptr);
  });
  return {gx, gs, gt};
}

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_cpu);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cpu);
}

}  // namespace genkernels::flows::cpu
