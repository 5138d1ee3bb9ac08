// CPU kernels of the affine coupling's elementwise part (schemas in csrc/genkernels.cpp, spec
// in genkernels/flows/coupling_reference.py): one pass over x, the conditioner's output and
// the mask per direction -- the bounded scale, the scale-and-shift and the per-sample
// log-determinant together, forward and backward -- where eager PyTorch runs a chain of
// memory-bound kernels (tanh, exp, mul, add, where, sum: each a pass over the batch, most
// writing a temporary).
//
// params (B, 2N) holds each row's raw log-scales s (columns [0, N)) then shifts t ([N, 2N)):
// a conditioner's (B, 2C, H, W) or (B, 2D) output flattened, read in place, and its gradient
// written in one (B, 2N) tensor (no concatenation of two halves' gradients afterwards).
// With kept = mask != 0, sigma = b tanh(s / b) (b finite) or s (b = inf), sigma' =
// d sigma / ds = (1 - sigma / b)(1 + sigma / b), e = exp(+-sigma) in the direction's sign:
//   forward  y = x e + t,          logdet = sum sigma        (over the transformed features)
//   inverse  y = (x - t) e,        logdet = -sum sigma
// and the kept features pass through. The forward pass also returns sigma (bounded only;
// zero on the kept features), which the backward reads instead of recomputing tanh. The VJP,
// with gy, gl the incoming gradients:
//   forward  gx = gy e, gt = gy,       gs = (gy x e + gl) sigma'
//   inverse  gx = gy e, gt = -gy e,    gs = (-gy (x - t) e - gl) sigma'
// (gx = gy, gs = gt = 0 on the kept features). The scale is computed only where it is used:
// a vector of 8 kept features (a half or channel mask's runs) passes through, and two vectors
// whose lanes alternate kept and transformed (a checkerboard's rows) have their 8 transformed
// features gathered into one vector, computed once and put back -- a compiled formula
// computes tanh and exp for every feature and selects after. float runs 8 features per vector (vec_math.h;
// tanh as 1 - 2 / (1 + e^2a) for bounds up to 8 (tanh_f); rows under 8 features 8 elements
// of the flattened problem per vector, longer ones a vector per 8 features, a tail padded as kept
// features, which add nothing); double one at a time with the C library's tanh and exp.
// Rows may have any stride, features must be contiguous. logdet sums each row chunk in a
// fixed order (in double) and the chunks in row order: the result does not depend on the
// thread count.
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
#include "cpu/spec_vjp.h"
#include "cpu/vec_math.h"

namespace genkernels::flows::cpu {
namespace {

namespace V = genkernels::cpu::vec;
using V::f8;

// Features per chunk (a thread's unit of work) and the elements below which one thread
// does it all (a pass over 2^16 floats takes tens of microseconds).
constexpr int64_t kChunk = 4096;
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;
// float rows shorter than this run 8 elements of the flattened problem per vector (rows_f):
// a row per vector would leave lanes idle (fw, 262144 elements, 1 thread: 1 feature 22.6 ->
// 7.2 ms, 2 features 11.7 -> 3.5 ms, 4 features 6.0 -> 3.7 ms; from 8 features on the
// gathers cost more than the idle lanes: 8 features 2.5 ms a row per vector, 3.4 ms gathered)
constexpr int64_t kShortRow = 8;

struct Rows {
  int64_t batch, features;
};

bool features_contiguous(const at::Tensor& v) { return v.size(-1) <= 1 || v.stride(-1) == 1; }

Rows check(const char* op, const at::Tensor& x, const at::Tensor& params, const at::Tensor& mask, double bound) {
  TORCH_CHECK_VALUE(x.dim() == 2 && params.dim() == 2, op, ": x must be (B, N) and params (B, 2N); got ", x.sizes(),
                    " and ", params.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64; got ", x.scalar_type());
  for (const at::Tensor* other : {&params, &mask})
    TORCH_CHECK_TYPE(other->scalar_type() == x.scalar_type(), op, ": params and mask must have x's dtype ",
                     x.scalar_type(), "; got ", other->scalar_type());
  TORCH_CHECK_VALUE(params.size(0) == x.size(0) && params.size(1) == 2 * x.size(1), op, ": params must be (",
                    x.size(0), ", ", 2 * x.size(1), ") for x ", x.sizes(), "; got ", params.sizes());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == x.size(1), op, ": mask must be (", x.size(1), ",); got ",
                    mask.sizes());
  for (const at::Tensor* v : {&x, &params, &mask})
    TORCH_CHECK_VALUE(features_contiguous(*v), op, ": the features of x, params and mask must be contiguous; got ",
                      "strides ", v->strides());
  TORCH_CHECK_VALUE(bound > 0, op, ": bound must be > 0 (inf: no bound); got ", bound);
  return {x.size(0), x.size(1)};
}

template <typename T>
struct Args {
  const T *x, *params, *mask, *sigma_in, *gy, *gl;
  int64_t sx, sp, ssig, sgy;
  T *y, *sigma_out, *gx, *gp;  // outputs, contiguous: y, sigma, gx (B, N), gp (B, 2N)
  T bound;
  bool inverse, bounded;
};

// tanh(a) for sigma = bound tanh(s / bound): absolutely within 1.8e-7 (one exponential) for a
// bound up to 8, relatively within 3 ulp (vtanh) above, where a small absolute error times
// the bound would show (bound 1000: 1.5e-4 off)
inline f8 tanh_f(f8 a, float bound) { return bound <= 8.0f ? V::vtanh_abs(a) : V::vtanh(a); }

// The arithmetic of the transformed features, shared by every float path (a vector, a pair of
// alternating vectors gathered into one, short rows): the kept features' selects stay with
// the callers.
// sigma from what the pass reads (the raw s; the bounded backward reads the forward's sigma)
inline f8 sigma_f(const Args<float>& a, f8 read, bool backward) {
  return a.bounded && !backward ? a.bound * tanh_f(read / a.bound, a.bound) : read;
}
// e = exp(+-sigma); a bounded sigma (|sigma| < bound <= 80) needs no overflow handling
inline f8 exp_f(const Args<float>& a, f8 sigma) {
  const f8 v = a.inverse ? -sigma : sigma;
  return a.bounded && a.bound <= 80.0f ? V::vexp_bounded(v) : V::vexp(v);
}
// y = x e + t (inverse: (x - t) e)
inline f8 moved_f(const Args<float>& a, f8 x, f8 t, f8 e) { return a.inverse ? (x - t) * e : x * e + t; }
// the VJP: gx = g e, and the gradients of s and t (t is read by the inverse only)
struct GradsF {
  f8 gx, gs, gt;
};
inline GradsF grads_f(const Args<float>& a, f8 x, f8 t, f8 sigma, f8 e, f8 g, f8 gl) {
  f8 dsigma = V::splat(1.0f);
  if (a.bounded) {
    const f8 r = sigma * (1.0f / a.bound);
    dsigma = (1.0f - r) * (1.0f + r);
  }
  const f8 moved = a.inverse ? (x - t) * e : x * e;
  const float sign = a.inverse ? -1.0f : 1.0f;
  return {g * e, (sign * (g * moved + gl)) * dsigma, a.inverse ? -g * e : g};
}

// Two vectors whose lanes alternate kept and transformed (a checkerboard's row, W even): their
// eight transformed features gathered into one vector (compact), computed once, and put back
// (expand) -- half the tanh and exp of computing both vectors whole. Odd: the vector's
// transformed lanes are the odd ones (its kept ones the even).
template <bool Odd0, bool Odd1>
inline f8 compact(f8 v0, f8 v1) {
  if constexpr (Odd0 && Odd1) return __builtin_shufflevector(v0, v1, 1, 3, 5, 7, 9, 11, 13, 15);
  else if constexpr (Odd0) return __builtin_shufflevector(v0, v1, 1, 3, 5, 7, 8, 10, 12, 14);
  else if constexpr (Odd1) return __builtin_shufflevector(v0, v1, 0, 2, 4, 6, 9, 11, 13, 15);
  else return __builtin_shufflevector(v0, v1, 0, 2, 4, 6, 8, 10, 12, 14);
}

// v with its transformed lanes replaced by c's lanes [Base, Base + 4), in order
template <bool Odd, int Base>
inline f8 expand(f8 v, f8 c) {
  if constexpr (Odd) return __builtin_shufflevector(v, c, 0, 8 + Base, 2, 9 + Base, 4, 10 + Base, 6, 11 + Base);
  else return __builtin_shufflevector(v, c, 8 + Base, 1, 9 + Base, 3, 10 + Base, 5, 11 + Base, 7);
}

// Row b, features [f0, f1): forward (y and sigma; returns the chunk's sum of sigma) or, with
// gy non-null, backward (gx and the row's gradient of params).
double chunk_f(const Args<float>& a, int64_t b, int64_t f0, int64_t f1, int64_t n) {
  const float* x = a.x + b * a.sx;
  const float* s = a.params + b * a.sp;
  const float* t = s + n;
  const bool backward = a.gy != nullptr;
  const float gl = backward ? a.gl[b] : 0.0f;
  const float* gy = backward ? a.gy + b * a.sgy : nullptr;
  // sigma: computed (forward; backward when unbounded: s itself) or read (bounded backward)
  const float* sig_in = backward && a.bounded ? a.sigma_in + b * a.ssig : s;
  V::DoubleSum acc;
  // features [f, f + 16) of alternating lanes, Odd0 / Odd1 as compact's
  const auto pair = [&](int64_t f, auto odd0, auto odd1) {
    constexpr bool O0 = decltype(odd0)::value, O1 = decltype(odd1)::value;
    const auto both = [&](const float* p) { return compact<O0, O1>(V::load(p + f), V::load(p + f + 8)); };
    const auto put2 = [&](float* p, f8 keep0, f8 keep1, f8 c) {
      V::store(p + f, expand<O0, 0>(keep0, c));
      V::store(p + f + 8, expand<O1, 4>(keep1, c));
    };
    const f8 x0 = V::load(x + f), x1 = V::load(x + f + 8);
    const f8 xs = compact<O0, O1>(x0, x1);
    const f8 sigma = sigma_f(a, both(sig_in), backward);
    const f8 e = exp_f(a, sigma);
    if (!backward) {
      put2(a.y + b * n, x0, x1, moved_f(a, xs, both(t), e));
      if (a.bounded) put2(a.sigma_out + b * n, f8{}, f8{}, sigma);
      acc.add(sigma);
    } else {
      const f8 g0 = V::load(gy + f), g1 = V::load(gy + f + 8);
      const GradsF gr = grads_f(a, xs, a.inverse ? both(t) : f8{}, sigma, e, compact<O0, O1>(g0, g1), V::splat(gl));
      float* gp = a.gp + b * 2 * n;
      put2(a.gx + b * n, g0, g1, gr.gx);
      put2(gp, f8{}, f8{}, gr.gs);
      put2(gp + n, f8{}, f8{}, gr.gt);
    }
  };
  // features [f, f + 16), every one transformed: the two vectors' chains (tanh's exponential
  // and division, then the scale's exponential) side by side, so that one's latency hides
  // the other's (a vector at a time waited on its chain: the bounded forward took twice the
  // backward's time)
  const auto two = [&](int64_t f) {
    const f8 x0 = V::load(x + f), x1 = V::load(x + f + 8);
    const f8 s0 = sigma_f(a, V::load(sig_in + f), backward), s1 = sigma_f(a, V::load(sig_in + f + 8), backward);
    const f8 e0 = exp_f(a, s0), e1 = exp_f(a, s1);
    if (!backward) {
      V::store(a.y + b * n + f, moved_f(a, x0, V::load(t + f), e0));
      V::store(a.y + b * n + f + 8, moved_f(a, x1, V::load(t + f + 8), e1));
      if (a.bounded) {
        V::store(a.sigma_out + b * n + f, s0);
        V::store(a.sigma_out + b * n + f + 8, s1);
      }
      acc.add(s0);
      acc.add(s1);
    } else {
      const f8 g0 = V::load(gy + f), g1 = V::load(gy + f + 8), glv = V::splat(gl);
      const GradsF r0 = grads_f(a, x0, a.inverse ? V::load(t + f) : f8{}, s0, e0, g0, glv);
      const GradsF r1 = grads_f(a, x1, a.inverse ? V::load(t + f + 8) : f8{}, s1, e1, g1, glv);
      float* gp = a.gp + b * 2 * n;
      V::store(a.gx + b * n + f, r0.gx);
      V::store(a.gx + b * n + f + 8, r1.gx);
      V::store(gp + f, r0.gs);
      V::store(gp + f + 8, r1.gs);
      V::store(gp + n + f, r0.gt);
      V::store(gp + n + f + 8, r1.gt);
    }
  };
  using Even = std::false_type;
  using Odd = std::true_type;
  for (int64_t f = f0; f < f1; f += 8) {
    if (f + 16 <= f1) {
      const int m0 = V::lane_bits(V::load(a.mask + f) != 0.0f), m1 = V::lane_bits(V::load(a.mask + f + 8) != 0.0f);
      if (m0 == 0 && m1 == 0) {
        two(f);
        f += 8;   // and 8 more at the loop's step
        continue;
      }
      if ((m0 == 0x55 || m0 == 0xaa) && (m1 == 0x55 || m1 == 0xaa)) {   // kept lanes even (0x55) or odd
        if (m0 == 0x55) {
          m1 == 0x55 ? pair(f, Odd{}, Odd{}) : pair(f, Odd{}, Even{});
        } else {
          m1 == 0x55 ? pair(f, Even{}, Odd{}) : pair(f, Even{}, Even{});
        }
        f += 8;   // and 8 more at the loop's step
        continue;
      }
    }
    const int lanes = int(std::min<int64_t>(8, f1 - f));
    const bool full = lanes == 8;
    const auto get = [&](const float* p, float fill) { return full ? V::load(p + f) : V::load(p + f, lanes, fill); };
    const auto put = [&](float* p, f8 v) {
      if (full) {
        V::store(p + f, v);
      } else {
        V::store(p + f, v, lanes);
      }
    };
    const auto keep = get(a.mask, 1.0f) != 0.0f;
    const f8 xv = get(x, 0.0f);
    if (V::all_lanes(keep)) {   // eight kept features (a half or channel mask's): no scale to compute
      if (!backward) {
        put(a.y + b * n, xv);
        if (a.bounded) put(a.sigma_out + b * n, f8{});
      } else {
        float* gp = a.gp + b * 2 * n;
        put(a.gx + b * n, get(gy, 0.0f));
        put(gp, f8{});
        put(gp + n, f8{});
      }
      continue;
    }
    const f8 sigma = keep ? f8{} : sigma_f(a, get(sig_in, 0.0f), backward);
    const f8 e = exp_f(a, sigma);
    if (!backward) {
      put(a.y + b * n, keep ? xv : moved_f(a, xv, get(t, 0.0f), e));
      if (a.bounded) put(a.sigma_out + b * n, sigma);
      acc.add(sigma);
    } else {
      const f8 g = get(gy, 0.0f);
      const GradsF gr = grads_f(a, xv, a.inverse ? get(t, 0.0f) : f8{}, sigma, e, g, V::splat(gl));
      float* gp = a.gp + b * 2 * n;
      put(a.gx + b * n, keep ? g : gr.gx);
      put(gp, keep ? f8{} : gr.gs);
      put(gp + n, keep ? f8{} : gr.gt);
    }
  }
  return acc.total();
}

// Rows [b0, b1) of fewer than kShortRow features each, 8 consecutive elements of the
// flattened (B, N) problem per vector (a row's features, then the next row's): a lane's row
// and feature are stepped along, its inputs gathered, y, sigma and grad_x stored whole (they
// are contiguous (B, N)), grad_params scattered. Each row's sum of sigma goes to sums[b]
// (the lanes added in feature order).
void rows_f(const Args<float>& a, int64_t b0, int64_t b1, int64_t n, double* sums) {
  const bool backward = a.gy != nullptr;
  const int64_t end = (b1 - b0) * n;
  int64_t row = b0, col = 0;
  for (int64_t b = b0; b < b1; ++b) sums[b] = 0.0;
  for (int64_t e = 0; e < end; e += 8) {
    const int lanes = int(std::min<int64_t>(8, end - e));
    int64_t rows[8], cols[8];
    alignas(32) float km[8] = {}, xs[8] = {}, ss[8] = {}, ts[8] = {}, gs8[8] = {}, gls[8] = {};
    for (int j = 0; j < 8; ++j) {
      rows[j] = row;
      cols[j] = col;
      if (j < lanes) {
        km[j] = a.mask[col];
        xs[j] = a.x[row * a.sx + col];
        const float* p = a.params + row * a.sp;
        ss[j] = backward && a.bounded ? a.sigma_in[row * a.ssig + col] : p[col];
        ts[j] = p[n + col];
        if (backward) {
          gs8[j] = a.gy[row * a.sgy + col];
          gls[j] = a.gl[row];
        }
        if (++col == n) {
          col = 0;
          ++row;
        }
      } else {
        km[j] = 1.0f;
        xs[j] = ss[j] = ts[j] = gs8[j] = gls[j] = 0.0f;
      }
    }
    const f8 keepf = V::load(km), xv = V::load(xs), sv = V::load(ss), tv = V::load(ts);
    const f8 g = V::load(gs8), gl = V::load(gls);
    const auto keep = keepf != 0.0f;
    const f8 sigma = keep ? f8{} : sigma_f(a, sv, backward);
    const f8 e8 = exp_f(a, sigma);
    const int64_t out = b0 * n + e;
    if (!backward) {
      V::store(a.y + out, keep ? xv : moved_f(a, xv, tv, e8), lanes);
      if (a.bounded) V::store(a.sigma_out + out, sigma, lanes);
      for (int j = 0; j < lanes; ++j) sums[rows[j]] += sigma[j];
    } else {
      const GradsF gr = grads_f(a, xv, tv, sigma, e8, g, gl);
      V::store(a.gx + out, keep ? g : gr.gx, lanes);
      const f8 gs = keep ? f8{} : gr.gs;
      const f8 gt = keep ? f8{} : gr.gt;
      for (int j = 0; j < lanes; ++j) {
        float* gp = a.gp + rows[j] * 2 * n + cols[j];
        gp[0] = gs[j];
        gp[n] = gt[j];
      }
    }
  }
}

double chunk_d(const Args<double>& a, int64_t b, int64_t f0, int64_t f1, int64_t n) {
  const double* x = a.x + b * a.sx;
  const double* s = a.params + b * a.sp;
  const double* t = s + n;
  const double sign = a.inverse ? -1.0 : 1.0;
  const bool backward = a.gy != nullptr;
  const double gl = backward ? a.gl[b] : 0.0;
  const double* sig_in = backward && a.bounded ? a.sigma_in + b * a.ssig : s;
  double acc = 0;
  for (int64_t f = f0; f < f1; ++f) {
    const bool keep = a.mask[f] != 0.0;
    double sigma = sig_in[f];
    if (a.bounded && !backward) sigma = a.bound * std::tanh(sigma / a.bound);
    if (keep) sigma = 0.0;
    const double e = std::exp(sign * sigma);
    if (!backward) {
      a.y[b * n + f] = keep ? x[f] : (a.inverse ? (x[f] - t[f]) * e : x[f] * e + t[f]);
      if (a.bounded) a.sigma_out[b * n + f] = sigma;
      acc += sigma;
    } else {
      const double g = a.gy[b * a.sgy + f];
      const double moved = a.inverse ? (x[f] - t[f]) * e : x[f] * e;
      const double r = a.bounded ? sigma / a.bound : 0.0;
      double* gp = a.gp + b * 2 * n;
      a.gx[b * n + f] = keep ? g : g * e;
      gp[f] = keep ? 0.0 : sign * (g * moved + gl) * (1.0 - r) * (1.0 + r);
      gp[n + f] = keep ? 0.0 : (a.inverse ? -g * e : g);
    }
  }
  return acc;
}

// Runs body(c, slot) for c in [0, chunks) on `team` threads (parallel_chunks), or as a plain
// loop on one (the bodies call no BLAS, start no team and cannot throw, so parallel_chunks'
// BLAS and thread settings -- microseconds a call -- buy nothing there).
template <typename Body>
void for_chunks(int64_t chunks, int team, const Body& body) {
  if (team <= 1) {
    for (int64_t c = 0; c < chunks; ++c) body(c, 0);
  } else {
    genkernels::cpu::parallel_chunks(chunks, team, body);
  }
}

int team_for(int64_t chunks, int64_t elements) {
  return genkernels::cpu::team_size(std::min<int64_t>(chunks, std::max<int64_t>(1, elements / kMinWorkPerThread)));
}

// float rows shorter than kShortRow: groups of rows (kChunk elements) per chunk, rows_f.
void run_short_rows(const Args<float>& a, const Rows& r, float* logdet) {
  const int64_t per_chunk = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, r.features));
  const int64_t chunks = (r.batch + per_chunk - 1) / per_chunk;
  std::vector<double> sums(r.batch, 0.0);
  for_chunks(chunks, team_for(chunks, r.batch * r.features), [&](int64_t c, int) {
    rows_f(a, c * per_chunk, std::min(r.batch, (c + 1) * per_chunk), r.features, sums.data());
  });
  if (logdet != nullptr)
    for (int64_t b = 0; b < r.batch; ++b) logdet[b] = float(a.inverse ? -sums[b] : sums[b]);
}

// Every (row, chunk) on the team; forward: logdet (B,) from the chunks' sums in row order.
template <typename T>
void run(const Args<T>& a, const Rows& r, T* logdet) {
  if constexpr (std::is_same_v<T, float>) {
    if (r.features < kShortRow) {
      run_short_rows(a, r, logdet);
      return;
    }
  }
  const int64_t per_row = std::max<int64_t>(1, (r.features + kChunk - 1) / kChunk);
  const int64_t chunks = r.batch * per_row;
  const int team = team_for(chunks, r.batch * r.features);
  std::vector<double> sums(chunks, 0.0);
  const auto body = [&](int64_t c, int) {
    const int64_t b = c / per_row, f0 = (c % per_row) * kChunk, f1 = std::min(r.features, f0 + kChunk);
    if constexpr (std::is_same_v<T, float>) {
      sums[c] = chunk_f(a, b, f0, f1, r.features);
    } else {
      sums[c] = chunk_d(a, b, f0, f1, r.features);
    }
  };
  for_chunks(chunks, team, body);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_cpu(const at::Tensor& x, const at::Tensor& params,
                                                                   const at::Tensor& mask, double bound, bool inverse) {
  const Rows r = check("affine_coupling", x, params, mask, bound);
  const bool bounded = !std::isinf(bound);
  at::Tensor y = at::empty({r.batch, r.features}, x.options());
  at::Tensor logdet = at::zeros({r.batch}, x.options());
  at::Tensor sigma = bounded ? at::empty({r.batch, r.features}, x.options()) : at::empty({0}, x.options());
  if (y.numel() == 0) return {y, logdet, sigma};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling", [&] {
    Args<scalar_t> a{x.const_data_ptr<scalar_t>(), params.const_data_ptr<scalar_t>(),
                     mask.const_data_ptr<scalar_t>(), nullptr, nullptr, nullptr, x.stride(0), params.stride(0), 0, 0,
                     y.mutable_data_ptr<scalar_t>(), bounded ? sigma.mutable_data_ptr<scalar_t>() : nullptr, nullptr,
                     nullptr, scalar_t(bound), inverse, bounded};
    run<scalar_t>(a, r, logdet.mutable_data_ptr<scalar_t>());
  });
  return {y, logdet, sigma};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cpu(const at::Tensor& grad_y,
                                                                const at::Tensor& grad_logdet, const at::Tensor& x,
                                                                const at::Tensor& params, const at::Tensor& sigma,
                                                                const at::Tensor& mask, double bound, bool inverse) {
  constexpr const char* op = "affine_coupling_backward";
  const Rows r = check(op, x, params, mask, bound);
  const bool bounded = !std::isinf(bound);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), op, ": grad_y must be x's shape ", x.sizes(), "; got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_logdet.dim() == 1 && grad_logdet.size(0) == r.batch, op, ": grad_logdet must be (",
                    r.batch, ",); got ", grad_logdet.sizes());
  if (bounded) {
    TORCH_CHECK_VALUE(sigma.sizes() == x.sizes() && features_contiguous(sigma), op,
                      ": sigma (the forward's third output) must be x's shape ", x.sizes(),
                      " with contiguous features; got ", sigma.sizes());
    TORCH_CHECK_TYPE(sigma.scalar_type() == x.scalar_type(), op, ": sigma must have x's dtype");
  }
  const at::Tensor gy = grad_y.to(x.scalar_type());
  const at::Tensor g = features_contiguous(gy) ? gy : gy.contiguous();
  const at::Tensor gl = grad_logdet.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty({r.batch, r.features}, x.options());
  at::Tensor gp = at::empty({r.batch, 2 * r.features}, x.options());
  if (gx.numel() == 0) return {gx, gp};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_backward", [&] {
    Args<scalar_t> a{x.const_data_ptr<scalar_t>(), params.const_data_ptr<scalar_t>(),
                     mask.const_data_ptr<scalar_t>(), bounded ? sigma.const_data_ptr<scalar_t>() : nullptr,
                     g.const_data_ptr<scalar_t>(), gl.const_data_ptr<scalar_t>(), x.stride(0), params.stride(0),
                     bounded ? sigma.stride(0) : 0, g.stride(0), nullptr, nullptr, gx.mutable_data_ptr<scalar_t>(),
                     gp.mutable_data_ptr<scalar_t>(), scalar_t(bound), inverse, bounded};
    run<scalar_t>(a, r, nullptr);
  });
  return {gx, gp};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using CouplingSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, double, bool);
using CouplingBackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&, double, bool);

// The spec (coupling_reference.affine_coupling) in differentiable ATen ops: the backward's
// path when a double backward is asked for (create_graph), so second derivatives are exact.
std::tuple<at::Tensor, at::Tensor> reference(const at::Tensor& x, const at::Tensor& params, const at::Tensor& mask,
                                             double bound, bool inverse) {
  const int64_t n = x.size(1);
  const at::Tensor s = params.narrow(1, 0, n), t = params.narrow(1, n, n);
  const at::Tensor kept = mask.to(at::kBool), zero = at::zeros({}, x.options());
  const at::Tensor inner = at::where(kept, zero, s);   // a kept feature's s never enters tanh
  const at::Tensor sigma = at::where(kept, zero, std::isinf(bound) ? inner : at::tanh(inner / bound) * bound);
  const at::Tensor moved = inverse ? (x - t) * at::exp(-sigma) : x * at::exp(sigma) + t;
  const at::Tensor logdet = sigma.sum(1);
  return {at::where(kept, x, moved), inverse ? -logdet : logdet};
}

// Autograd of affine_coupling on the CPU, in C++: a Python autograd function cost about
// 0.2 ms a call -- more than the op itself at a vector flow's sizes. sigma (the third
// output) is saved, not differentiable; an unused output's gradient is never formed.
class CouplingFunction : public torch::autograd::Function<CouplingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& params,
                               const at::Tensor& mask, double bound, bool inverse) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::affine_coupling", "")
                               .typed<CouplingSignature>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet, sigma] = op.call(x, params, mask, bound, inverse);
    ctx->save_for_backward({x, params, sigma, mask});
    ctx->saved_data["bound"] = bound;
    ctx->saved_data["inverse"] = inverse;
    ctx->mark_non_differentiable({sigma});
    ctx->set_materialize_grads(false);
    return {y, logdet, sigma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("genkernels::affine_coupling_backward", "")
                               .typed<CouplingBackwardSignature>();
    variable_list result(5);
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &params = saved[1], &sigma = saved[2], &mask = saved[3];
    const double bound = ctx->saved_data["bound"].toDouble();
    const bool inverse = ctx->saved_data["inverse"].toBool();
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const at::Tensor gl = grads[1].defined() ? grads[1] : at::zeros({x.size(0)}, x.options());
    if (at::GradMode::is_enabled())   // create_graph: the spec's VJP, itself differentiable
      return genkernels::cpu::spec_vjp(ctx, saved, 2, 5, gy, gl,
                                       [&] { return reference(x, params, mask, bound, inverse); });
    auto [gx, gp] = op.call(gy, gl, x, params, sigma, mask, bound, inverse);
    if (ctx->needs_input_grad(0)) result[0] = gx;
    if (ctx->needs_input_grad(1)) result[1] = gp;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_autograd(const at::Tensor& x, const at::Tensor& params,
                                                                        const at::Tensor& mask, double bound,
                                                                        bool inverse) {
  const variable_list out = CouplingFunction::apply(x, params, mask, bound, inverse);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) { m.impl("affine_coupling", &affine_coupling_autograd); }

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_cpu);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cpu);
}

}  // namespace genkernels::flows::cpu
