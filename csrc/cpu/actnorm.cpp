// CPU kernels of ActNorm's map (schemas in csrc/genkernels.cpp, spec in
// genkernels/flows/actnorm_reference.py): x (B, C, P) -- vectors are (B, C, 1), images
// (B, C, H W) -- and a bias b and log-scale s per channel; with e = exp(s),
//   forward  y = (x + b) e,   logdet = P sum s
//   inverse  y = x / e - b,   logdet = -P sum s
// both written y = (x + a) m + z per channel (forward a = b, m = e, z = 0; inverse a = 0,
// m = exp(-s), z = -b: the same roundings as the spec). Eager PyTorch runs an add, an exp,
// a multiply and the log-determinant's sum -- each a pass or a kernel, each an autograd node
// with its own backward (the bias and scale gradients reduce the broadcast): at a vector
// flow's sizes those nodes cost more than the arithmetic.
//
// The backward is one pass: gx = gy m, and per channel the two sums the parameters need,
// S_g = sum gy and S_gx = sum gy x (over rows and positions), from which
//   forward  gb = e S_g,   gs = e (S_gx + b S_g) + P G
//   inverse  gb = -S_g,    gs = -S_gx / e - P G        (G = sum of the logdet gradient).
// The sums are in double (float inputs: each 64 positions of a channel summed in float
// first, 8 terms a lane). The work is split into chunks fixed by the shape alone (groups of
// rows, or one row's channels in groups when a row is large), each chunk's sums kept apart and
// added in chunk order afterwards: the result does not depend on the thread count. Rows may
// have any stride; each row's (C, P) block is contiguous.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/simd.h"
#include "cpu/spec_vjp.h"

namespace genkernels::flows::cpu {
namespace {

using genkernels::cpu::simd_load;
using genkernels::cpu::simd_t;

// Elements per chunk (a thread's unit of work), and the elements below which one thread does
// it all (a pass over 2^16 floats takes tens of microseconds).
constexpr int64_t kChunk = int64_t(1) << 14;
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;
// Row chunks at most: the backward keeps 2 C doubles of sums per row chunk (wide vectors, one
// row a chunk, would otherwise need four times x's memory).
constexpr int64_t kMaxRowChunks = 256;

struct Shape {
  int64_t batch, channels, positions, row_stride;
};

// The chunks: rows [r0, r1) x channels [c0, c1) for chunk (rk, ck).
struct Chunks {
  int64_t rows, chans, n_rows, n_chans;
  explicit Chunks(const Shape& s) {
    const int64_t row = std::max<int64_t>(1, s.channels * s.positions);
    // at most kMaxRowChunks row chunks (their per-channel sums are kept apart: 2 C doubles each)
    rows = std::max({int64_t(1), kChunk / row, (s.batch + kMaxRowChunks - 1) / kMaxRowChunks});
    chans = row > kChunk ? std::max<int64_t>(1, kChunk / std::max<int64_t>(1, s.positions)) : s.channels;
    chans = std::max<int64_t>(1, std::min(chans, s.channels));
    n_rows = (s.batch + rows - 1) / rows;
    n_chans = (s.channels + chans - 1) / chans;
  }
  int64_t count() const { return n_rows * n_chans; }
};

Shape check(const char* op, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (B, C, P); got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  const int64_t c = x.size(1);
  for (const auto& [name, v] : {std::pair<const char*, const at::Tensor*>{"bias", &bias}, {"log_scale", &log_scale}}) {
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == c, op, ": ", name, " must be (", c, ",); got ", v->sizes());
    TORCH_CHECK_TYPE(v->scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                     "; got ", v->scalar_type());
  }
  return {x.size(0), c, x.size(2), x.stride(0)};
}

// x with each row's (C, P) block contiguous (rows any stride): x itself when it is.
at::Tensor rows_contiguous(const at::Tensor& x) {
  const bool ok = (x.size(2) <= 1 || x.stride(2) == 1) && (x.size(1) <= 1 || x.stride(1) == x.size(2));
  return ok ? x : x.contiguous();
}

int team_for(const Chunks& k, int64_t elements) {
  return genkernels::cpu::team_size(std::min<int64_t>(k.count(), std::max<int64_t>(1, elements / kMinWorkPerThread)));
}

template <typename Body>
void for_chunks(int64_t chunks, int team, const Body& body) {
  if (team <= 1) {
    for (int64_t c = 0; c < chunks; ++c) body(c, 0);
  } else {
    genkernels::cpu::parallel_chunks(chunks, team, body);
  }
}

// Per channel: y = (x + a) m + z, the (a, m, z) of the direction (see the top).
template <typename T>
struct Coeffs {
  std::vector<T> a, m, z;
  Coeffs(const T* b, const T* s, int64_t c, bool inverse) : a(c), m(c), z(c) {
    for (int64_t i = 0; i < c; ++i) {
      a[i] = inverse ? T(0) : b[i];
      m[i] = std::exp(inverse ? -s[i] : s[i]);
      z[i] = inverse ? -b[i] : T(0);
    }
  }
};

// One channel's n contiguous positions: out = g m, and the sums of g and g x added into
// sg, sgx (double). double: four chains of 4 lanes. float: 64-element blocks summed in two
// chains of 8 float lanes (8 terms a lane), each block's sums then added in double -- the
// float-to-double conversions per element cost more than the pass (measured 2x).
inline void channel_run(const double* __restrict__ g, const double* __restrict__ x, double* __restrict__ out,
                        double m, int64_t n, double& sg, double& sgx) {
  using D4 = simd_t<double, 4>;
  D4 a[4] = {}, b[4] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const D4 gv = simd_load<D4>(g + i + 4 * k);
      genkernels::cpu::simd_store(out + i + 4 * k, gv * m);
      a[k] += gv;
      b[k] += gv * simd_load<D4>(x + i + 4 * k);
    }
  }
  const D4 av = (a[0] + a[1]) + (a[2] + a[3]), bv = (b[0] + b[1]) + (b[2] + b[3]);
  double ta = (av[0] + av[1]) + (av[2] + av[3]), tb = (bv[0] + bv[1]) + (bv[2] + bv[3]);
  for (; i < n; ++i) {
    out[i] = g[i] * m;
    ta += g[i];
    tb += g[i] * x[i];
  }
  sg += ta;
  sgx += tb;
}

inline void channel_run(const float* __restrict__ g, const float* __restrict__ x, float* __restrict__ out, float m,
                        int64_t n, double& sg, double& sgx) {
  using F8 = simd_t<float, 8>;
  using D4 = simd_t<double, 4>;
  using F4 = simd_t<float, 4>;
  D4 ad = {}, bd = {};
  const auto fold = [&](F8 a, F8 b) {   // 8 float lanes into the 4 double lanes
    ad += __builtin_convertvector(F4{a[0], a[1], a[2], a[3]}, D4) + __builtin_convertvector(F4{a[4], a[5], a[6], a[7]}, D4);
    bd += __builtin_convertvector(F4{b[0], b[1], b[2], b[3]}, D4) + __builtin_convertvector(F4{b[4], b[5], b[6], b[7]}, D4);
  };
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    F8 a0 = {}, a1 = {}, b0 = {}, b1 = {};
#pragma GCC unroll 4
    for (int k = 0; k < 64; k += 16) {
      const F8 g0 = simd_load<F8>(g + i + k), g1 = simd_load<F8>(g + i + k + 8);
      genkernels::cpu::simd_store(out + i + k, g0 * m);
      genkernels::cpu::simd_store(out + i + k + 8, g1 * m);
      a0 += g0;
      a1 += g1;
      b0 += g0 * simd_load<F8>(x + i + k);
      b1 += g1 * simd_load<F8>(x + i + k + 8);
    }
    fold(a0 + a1, b0 + b1);
  }
  double ta = (ad[0] + ad[1]) + (ad[2] + ad[3]), tb = (bd[0] + bd[1]) + (bd[2] + bd[3]);
  for (; i < n; ++i) {
    out[i] = g[i] * m;
    ta += double(g[i]);
    tb += double(g[i]) * double(x[i]);
  }
  sg += ta;
  sgx += tb;
}

template <typename T>
void forward_chunks(const T* x, T* y, const Coeffs<T>& k, const Shape& s, const Chunks& ch) {
  const int64_t p = s.positions, per_row = s.channels * p;
  const auto body = [&](int64_t id, int) {
    const int64_t rk = id / ch.n_chans, ck = id % ch.n_chans;
    const int64_t r1 = std::min(s.batch, (rk + 1) * ch.rows), c0 = ck * ch.chans;
    const int64_t c1 = std::min(s.channels, c0 + ch.chans);
    const T *a = k.a.data(), *m = k.m.data(), *z = k.z.data();
    for (int64_t r = rk * ch.rows; r < r1; ++r) {
      const T* xr = x + r * s.row_stride;
      T* yr = y + r * per_row;
      if (p == 1) {
        for (int64_t c = c0; c < c1; ++c) yr[c] = (xr[c] + a[c]) * m[c] + z[c];
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          const T ac = a[c], mc = m[c], zc = z[c];
          const T* xi = xr + c * p;
          T* yi = yr + c * p;
          for (int64_t i = 0; i < p; ++i) yi[i] = (xi[i] + ac) * mc + zc;
        }
      }
    }
  };
  for_chunks(ch.count(), team_for(ch, s.batch * per_row), body);
}

// One row of a vector batch (P = 1), channels [c0, c1): gx = g m and the channels' sums
// (restrict: the loop vectorises across channels).
template <typename T>
inline void vector_row(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ out,
                       const T* __restrict__ m, double* __restrict__ sg, double* __restrict__ sgx, int64_t c0,
                       int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    const double gd = double(g[c]);
    out[c] = g[c] * m[c];
    sg[c] += gd;
    sgx[c] += gd * double(x[c]);
  }
}

// gx = g m, and each row chunk's sums S_g, S_gx per channel into part[(rk, 0 | 1, c)].
template <typename T>
void backward_chunks(const T* g, int64_t g_stride, const T* x, T* gx, const T* m, const Shape& s, const Chunks& ch,
                     double* part) {
  const int64_t p = s.positions, per_row = s.channels * p, c_all = s.channels;
  const auto body = [&](int64_t id, int) {
    const int64_t rk = id / ch.n_chans, ck = id % ch.n_chans;
    const int64_t r1 = std::min(s.batch, (rk + 1) * ch.rows), c0 = ck * ch.chans;
    const int64_t c1 = std::min(s.channels, c0 + ch.chans);
    double* sg = part + rk * 2 * c_all;
    double* sgx = sg + c_all;
    for (int64_t c = c0; c < c1; ++c) sg[c] = sgx[c] = 0;
    for (int64_t r = rk * ch.rows; r < r1; ++r) {
      const T* gr = g + r * g_stride;
      const T* xr = x + r * s.row_stride;
      T* out = gx + r * per_row;
      if (p == 1) {
        vector_row(gr, xr, out, m, sg, sgx, c0, c1);
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          channel_run(gr + c * p, xr + c * p, out + c * p, m[c], p, sg[c], sgx[c]);
        }
      }
    }
  };
  for_chunks(ch.count(), team_for(ch, s.batch * per_row), body);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> actnorm_cpu(const at::Tensor& x_in, const at::Tensor& bias,
                                               const at::Tensor& log_scale, bool inverse) {
  const Shape shape0 = check("actnorm", x_in, bias, log_scale);
  const at::Tensor x = rows_contiguous(x_in);
  const Shape s{shape0.batch, shape0.channels, shape0.positions, x.stride(0)};
  at::Tensor y = at::empty({s.batch, s.channels, s.positions}, x.options());
  at::Tensor logdet = at::empty({s.batch}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actnorm", [&] {
    const at::Tensor b = bias.contiguous(), ls = log_scale.contiguous();
    const scalar_t* sp = ls.const_data_ptr<scalar_t>();
    double total = 0;
    for (int64_t c = 0; c < s.channels; ++c) total += double(sp[c]);
    logdet.fill_(scalar_t((inverse ? -total : total) * double(s.positions)));
    if (y.numel() == 0) return;
    const Coeffs<scalar_t> k(b.const_data_ptr<scalar_t>(), sp, s.channels, inverse);
    forward_chunks<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), k, s, Chunks(s));
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward_cpu(const at::Tensor& grad_y,
                                                                    const at::Tensor& grad_logdet,
                                                                    const at::Tensor& x_in, const at::Tensor& bias,
                                                                    const at::Tensor& log_scale, bool inverse) {
  constexpr const char* op = "actnorm_backward";
  const Shape shape0 = check(op, x_in, bias, log_scale);
  TORCH_CHECK_VALUE(grad_y.sizes() == x_in.sizes(), op, ": grad_y must be x's shape ", x_in.sizes(), "; got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_logdet.dim() == 1 && grad_logdet.size(0) == shape0.batch, op, ": grad_logdet must be (",
                    shape0.batch, ",); got ", grad_logdet.sizes());
  const at::Tensor x = rows_contiguous(x_in);
  const at::Tensor g = rows_contiguous(grad_y.to(x.scalar_type()));
  const Shape s{shape0.batch, shape0.channels, shape0.positions, x.stride(0)};
  at::Tensor gx = at::empty({s.batch, s.channels, s.positions}, x.options());
  at::Tensor gb = at::empty({s.channels}, x.options());
  at::Tensor gs = at::empty({s.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actnorm_backward", [&] {
    const at::Tensor b = bias.contiguous(), ls = log_scale.contiguous();
    const at::Tensor gl = grad_logdet.to(x.scalar_type());   // any stride (an expanded gradient's is 0)
    const scalar_t* glp = gl.const_data_ptr<scalar_t>();
    double big_g = 0;
    for (int64_t r = 0; r < s.batch; ++r) big_g += double(glp[r * gl.stride(0)]);
    const Coeffs<scalar_t> k(b.const_data_ptr<scalar_t>(), ls.const_data_ptr<scalar_t>(), s.channels, inverse);
    const Chunks ch(s);
    std::vector<double> part(static_cast<size_t>(ch.n_rows * 2 * s.channels), 0.0);
    if (gx.numel() > 0)
      backward_chunks<scalar_t>(g.const_data_ptr<scalar_t>(), g.stride(0), x.const_data_ptr<scalar_t>(),
                                gx.mutable_data_ptr<scalar_t>(), k.m.data(), s, ch, part.data());
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* sp = ls.const_data_ptr<scalar_t>();
    scalar_t* gbp = gb.mutable_data_ptr<scalar_t>();
    scalar_t* gsp = gs.mutable_data_ptr<scalar_t>();
    const double pg = double(s.positions) * big_g;
    for (int64_t c = 0; c < s.channels; ++c) {
      double sg = 0, sgx = 0;
      for (int64_t rk = 0; rk < ch.n_rows; ++rk) {   // chunk order: the same at any thread count
        sg += part[rk * 2 * s.channels + c];
        sgx += part[rk * 2 * s.channels + s.channels + c];
      }
      const double e = std::exp(double(sp[c]));
      if (inverse) {
        gbp[c] = scalar_t(-sg);
        gsp[c] = scalar_t(-sgx / e - pg);
      } else {
        gbp[c] = scalar_t(e * sg);
        gsp[c] = scalar_t(e * (sgx + double(bp[c]) * sg) + pg);
      }
    }
  });
  return {gx, gb, gs};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ActNormSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                            bool);
using ActNormBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);

// The spec (actnorm_reference.actnorm) in differentiable ATen ops: the backward's path under
// a double backward (create_graph), so second derivatives are exact.
std::tuple<at::Tensor, at::Tensor> reference(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale,
                                             bool inverse) {
  const at::Tensor b = bias.unsqueeze(1), s = log_scale.unsqueeze(1);
  const at::Tensor y = inverse ? x * at::exp(-s) - b : (x + b) * at::exp(s);
  const at::Tensor total = log_scale.sum() * double(x.size(2));
  return {y, (inverse ? -total : total).expand({x.size(0)})};
}

// Autograd of actnorm on the CPU, in C++ (a Python autograd function costs more than the
// op at a vector flow's sizes); an unused output's gradient is never formed.
class ActNormFunction : public torch::autograd::Function<ActNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& log_scale, bool inverse) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("genkernels::actnorm", "").typed<ActNormSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = op.call(x, bias, log_scale, inverse);
    ctx->save_for_backward({x, bias, log_scale});
    ctx->saved_data["inverse"] = inverse;
    ctx->set_materialize_grads(false);
    return {y, logdet};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::actnorm_backward", "")
                               .typed<ActNormBackwardSignature>();
    variable_list result(4);
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &bias = saved[1], &log_scale = saved[2];
    const bool inverse = ctx->saved_data["inverse"].toBool();
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor gl = grads[1].defined() ? grads[1] : at::zeros({x.size(0)}, x.options());
    if (at::GradMode::is_enabled())   // create_graph: the spec's VJP, itself differentiable
      return genkernels::cpu::spec_vjp(ctx, saved, 3, 4, gy, gl,
                                       [&] { return reference(x, bias, log_scale, inverse); });
    auto [gx, gb, gs] = op.call(gy, gl, x, bias, log_scale, inverse);
    if (ctx->needs_input_grad(0)) result[0] = gx;
    if (ctx->needs_input_grad(1)) result[1] = gb;
    if (ctx->needs_input_grad(2)) result[2] = gs;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> actnorm_autograd(const at::Tensor& x, const at::Tensor& bias,
                                                    const at::Tensor& log_scale, bool inverse) {
  const variable_list out = ActNormFunction::apply(x, bias, log_scale, inverse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) { m.impl("actnorm", &actnorm_autograd); }

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("actnorm", &actnorm_cpu);
  m.impl("actnorm_backward", &actnorm_backward_cpu);
}

}  // namespace genkernels::flows::cpu
