// CPU kernels of the discretised logistic mixture log-likelihood (PixelCNN++; schemas in
// csrc/genkernels.cpp, spec in genkernels/autoregressive/mixture_reference.py): one pass over
// the pixels, each pixel's K components and C channels in registers-sized scratch, forward
// (log p per pixel) and backward (the gradient of every parameter, the pass recomputed) --
// no (B, K, C, H, W) intermediates, which the reference builds a dozen of.
//
// Per pixel, with x_c = 2 v_c / (L - 1) - 1 and h = 1 / (L - 1):
//   mu_kc = m_kc + sum_{c' < c} tanh(a_k,cc') x_c',  s = exp(max(l_kc, -7)),
//   u = (x_c - mu + h) / s, d = (x_c - mu - h) / s,
//   lp_kc = log sigma(u) (v = 0), log(1 - sigma(d)) (v = L - 1),
//           d + log expm1(u - d) - softplus(u) - softplus(d) otherwise;
//   z_k = sum_c lp_kc + log softmax(pi)_k,  log p = logsumexp_k z_k.
// Backward, r_k = exp(z_k - log p): d/dpi_k = r_k - softmax(pi)_k; with q = 1 / (1 - exp(-(u
// - d))): dlp/du = q - sigma(u), dlp/dd = 1 - q - sigma(d) (inner bins), sigma(-u) and 0 (v
// = 0), 0 and -sigma(d) (v = L - 1); d/dmu = -(dlp/du + dlp/dd) / s, d/dl = -(u dlp/du + d
// dlp/dd) where l >= -7 (0 below), d/da = d/dmu x_c' (1 - tanh^2). Arithmetic in the inputs'
// dtype (float or double; the Python side converts half and bfloat16). float runs 8 pixels
// at a time (block_f: the parameters gathered into lanes, every formula on 8-lane vectors
// with vec_math.h's branchless transcendentals, the three bin cases computed and selected); double runs one pixel at a time with the C library's functions.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/vec_math.h"

namespace genkernels::autoregressive::cpu {
namespace {

constexpr double kLogScaleMin = -7.0;
constexpr int64_t kPixelsPerChunk = 256;
// pixels x K x C below which one thread does it all
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;

template <typename T>
T softplus(T t) {
  return std::max(t, T(0)) + std::log1p(std::exp(-std::abs(t)));
}

template <typename T>
T sigmoid(T t) {
  return t >= 0 ? T(1) / (T(1) + std::exp(-t)) : std::exp(t) / (T(1) + std::exp(t));
}

template <typename T>
T log_expm1(T e) {
  return e > T(20) ? e + std::log1p(-std::exp(-e)) : std::log(std::expm1(e));
}

struct Shape {
  int64_t batch, channels, h, w, mixtures, levels, params;
  int64_t pairs() const { return channels * (channels - 1) / 2; }
};

Shape check(const char* op, const at::Tensor& params, const at::Tensor& v, int64_t mixtures, int64_t levels) {
  TORCH_CHECK_VALUE(params.dim() == 4 && v.dim() == 4, op, ": params must be (B, P, H, W) and v (B, C, H, W); got ",
                    params.sizes(), " and ", v.sizes());
  TORCH_CHECK_TYPE(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble, op,
                   ": params must be float32 or float64; got ", params.scalar_type());
  TORCH_CHECK_TYPE(v.scalar_type() == params.scalar_type(), op, ": v must have params' dtype; got ",
                   v.scalar_type());
  TORCH_CHECK_VALUE(mixtures >= 1 && levels >= 2, op, ": mixtures must be >= 1 and levels >= 2; got ", mixtures,
                    " and ", levels);
  Shape s{v.size(0), v.size(1), v.size(2), v.size(3), mixtures, levels, params.size(1)};
  TORCH_CHECK_VALUE(params.size(0) == s.batch && params.size(2) == s.h && params.size(3) == s.w, op,
                    ": params (", params.sizes(), ") and v (", v.sizes(), ") must share B, H and W");
  TORCH_CHECK_VALUE(s.params == mixtures * (1 + 2 * s.channels + s.pairs()), op, ": params must hold K (1 + 2C + ",
                    "C (C - 1) / 2) = ", mixtures * (1 + 2 * s.channels + s.pairs()), " channels for K = ", mixtures,
                    ", C = ", s.channels, "; got ", s.params);
  return s;
}

// One pixel: its parameters p[i * ps] and levels lv[c * vs]; writes log p, and with `grad`
// non-null the gradient g * d log p / d p into grad[i * gs]. scratch: 4 K C + 2 K values.
template <typename T>
T pixel(const Shape& s, const T* p, int64_t ps, const T* lv, int64_t vs, T g, T* grad, int64_t gs,
        std::vector<T>& scratch) {
  const int64_t K = s.mixtures, C = s.channels, pairs = s.pairs();
  const T half = T(1) / T(s.levels - 1), to_x = T(2) / T(s.levels - 1);
  T* u = scratch.data();
  T* d = u + K * C;
  T* inv = d + K * C;
  T* mu = inv + K * C;
  T* z = mu + K * C;
  T* sm = z + K;
  T pmax = -INFINITY;
  for (int64_t k = 0; k < K; ++k) pmax = std::max(pmax, p[k * ps]);
  T psum = 0;
  for (int64_t k = 0; k < K; ++k) psum += std::exp(p[k * ps] - pmax);
  const T plog = pmax + std::log(psum);
  T zmax = -INFINITY;
  for (int64_t k = 0; k < K; ++k) {
    T total = p[k * ps] - plog;
    sm[k] = std::exp(total);
    int64_t pair = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t kc = k * C + c;
      T m = p[(K + kc) * ps];
      for (int64_t e = 0; e < c; ++e, ++pair) m += std::tanh(p[(K + 2 * K * C + k * pairs + pair) * ps]) * (lv[e * vs] * to_x - T(1));
      const T ls = std::max(p[(K + K * C + kc) * ps], T(kLogScaleMin));
      const T x = lv[c * vs] * to_x - T(1);
      mu[kc] = m;
      inv[kc] = std::exp(-ls);
      u[kc] = (x - m + half) * inv[kc];
      d[kc] = (x - m - half) * inv[kc];
      const T level = lv[c * vs];
      total += level <= T(0) ? u[kc] - softplus(u[kc])
               : level >= T(s.levels - 1) ? -softplus(d[kc])
                                          : d[kc] + log_expm1(u[kc] - d[kc]) - softplus(u[kc]) - softplus(d[kc]);
    }
    z[k] = total;
    zmax = std::max(zmax, total);
  }
  T zsum = 0;
  for (int64_t k = 0; k < K; ++k) zsum += std::exp(z[k] - zmax);
  const T out = zmax + std::log(zsum);
  if (grad == nullptr) return out;
  for (int64_t i = 0; i < s.params; ++i) grad[i * gs] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T r = std::exp(z[k] - out);
    grad[k * gs] = g * (r - sm[k]);
    int64_t pair = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t kc = k * C + c;
      const T level = lv[c * vs];
      T du, dd;
      if (level <= T(0)) {
        du = sigmoid(-u[kc]);
        dd = 0;
      } else if (level >= T(s.levels - 1)) {
        du = 0;
        dd = -sigmoid(d[kc]);
      } else {
        const T q = -T(1) / std::expm1(-(u[kc] - d[kc]));
        du = q - sigmoid(u[kc]);
        dd = T(1) - q - sigmoid(d[kc]);
      }
      const T g_mu = -g * r * (du + dd) * inv[kc];
      grad[(K + kc) * gs] = g_mu;
      if (p[(K + K * C + kc) * ps] >= T(kLogScaleMin)) grad[(K + K * C + kc) * gs] = -g * r * (u[kc] * du + d[kc] * dd);
      for (int64_t e = 0; e < c; ++e, ++pair) {
        const T t = std::tanh(p[(K + 2 * K * C + k * pairs + pair) * ps]);
        grad[(K + 2 * K * C + k * pairs + pair) * gs] = g_mu * (lv[e * vs] * to_x - T(1)) * (T(1) - t * t);
      }
    }
  }
  return out;
}

// float, kLanes pixels at once. pix[j]: the j-th pixel's offset into params (p + pix[j]
// + i * ps is its i-th parameter), level (lv + vix[j] + c * vs); the block's results go to
// out[j] (forward) or, with g non-null, g[j] times d log p / d params into grad + gix[j] + i *
// gs. scratch: scratch_rows(s) vectors.
constexpr int kLanes = 8;
using genkernels::cpu::vec::f8;

int64_t scratch_rows(const Shape& s) {
  return s.params + 3 * s.mixtures * s.channels + 2 * s.channels + s.mixtures * s.pairs() + 2 * s.mixtures;
}

void block_f(const Shape& s, const float* p, const int64_t* pix, int64_t ps, const float* lv, const int64_t* vix,
             int64_t vs, const f8& g, float* out, float* grad, const int64_t* gix, int64_t gs, f8* scratch) {
  namespace V = genkernels::cpu::vec;
  const int64_t K = s.mixtures, C = s.channels, pairs = s.pairs(), P = s.params, KC = K * C;
  const float half = 1.0f / float(s.levels - 1), to_x = 2.0f / float(s.levels - 1), top = float(s.levels - 1);
  f8* prm = scratch;          // P parameters
  f8* u = prm + P;            // KC
  f8* d = u + KC;             // KC
  f8* inv = d + KC;           // KC
  f8* lvl = inv + KC;         // C levels
  f8* x = lvl + C;            // C values in [-1, 1]
  f8* tanh_a = x + C;         // K pairs
  f8* z = tanh_a + K * pairs;  // K
  f8* sm = z + K;             // K
  for (int64_t i = 0; i < P; ++i)
    for (int j = 0; j < kLanes; ++j) prm[i][j] = p[pix[j] + i * ps];
  for (int64_t c = 0; c < C; ++c) {
    for (int j = 0; j < kLanes; ++j) lvl[c][j] = lv[vix[j] + c * vs];
    x[c] = lvl[c] * to_x - 1.0f;
  }
  f8 zmax = prm[0];
  for (int64_t k = 1; k < K; ++k) zmax = V::vmax(zmax, prm[k]);
  f8 zsum{};
  for (int64_t k = 0; k < K; ++k) zsum += V::vexp(prm[k] - zmax);
  const f8 plog = zmax + V::vlog(zsum);  // log sum_k e^pi_k
  for (int64_t i = 0; i < K * pairs; ++i) tanh_a[i] = V::vtanh(prm[K + 2 * KC + i]);
  zmax = V::splat(-INFINITY);
  for (int64_t k = 0; k < K; ++k) {
    f8 total = prm[k] - plog;
    sm[k] = V::vexp(total);
    int64_t pair = k * pairs;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t kc = k * C + c;
      f8 m = prm[K + kc];
      for (int64_t e = 0; e < c; ++e, ++pair) m += tanh_a[pair] * x[e];
      const f8 iv = V::vexp(-V::vmax(prm[K + KC + kc], V::splat(float(kLogScaleMin))));
      const f8 uu = (x[c] - m + half) * iv, dd = (x[c] - m - half) * iv;
      const f8 spu = V::vsoftplus(uu), spd = V::vsoftplus(dd);
      const f8 diff = uu - dd;
      // log expm1(diff), diff > 0: diff + log1p(-e^-diff) past 20
      const f8 lem = diff > 20.0f ? diff + V::vlog1p(-V::vexp(-diff)) : V::vlog(V::vexpm1(diff));
      total += lvl[c] <= 0.0f ? uu - spu : (lvl[c] >= top ? -spd : dd + lem - spu - spd);
      inv[kc] = iv;
      u[kc] = uu;
      d[kc] = dd;
    }
    z[k] = total;
    zmax = V::vmax(zmax, total);
  }
  zsum = f8{};
  for (int64_t k = 0; k < K; ++k) zsum += V::vexp(z[k] - zmax);
  const f8 lpo = zmax + V::vlog(zsum);
  if (grad == nullptr) {
    for (int j = 0; j < kLanes; ++j) out[j] = lpo[j];
    return;
  }
  f8* gr = prm;  // the gradient overwrites the parameters, each read before it is written
  for (int64_t k = 0; k < K; ++k) {
    const f8 r = V::vexp(z[k] - lpo);
    gr[k] = g * (r - sm[k]);
    int64_t pair = k * pairs;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t kc = k * C + c;
      const f8 uu = u[kc], dd = d[kc], level = lvl[c];
      const f8 q = -1.0f / V::vexpm1(dd - uu);
      // sigma(u) and sigma(-u) from one exponential, each without cancellation
      const f8 eu = V::vexp(-V::vabs(uu)), su1 = 1.0f / (1.0f + eu);
      const f8 su = uu >= 0.0f ? su1 : eu * su1, sneg = uu >= 0.0f ? eu * su1 : su1;
      const f8 sd = V::vsigmoid(dd);
      const f8 du = level <= 0.0f ? sneg : (level >= top ? f8{} : q - su);
      const f8 ddv = level <= 0.0f ? f8{} : (level >= top ? -sd : 1.0f - q - sd);
      const f8 g_mu = -g * r * (du + ddv) * inv[kc];
      gr[K + kc] = g_mu;
      gr[K + KC + kc] = gr[K + KC + kc] >= float(kLogScaleMin) ? -g * r * (uu * du + dd * ddv) : f8{};
      for (int64_t e = 0; e < c; ++e, ++pair) gr[K + 2 * KC + pair] = g_mu * x[e] * (1.0f - tanh_a[pair] * tanh_a[pair]);
    }
  }
  for (int64_t i = 0; i < P; ++i)
    for (int j = 0; j < kLanes; ++j) grad[gix[j] + i * gs] = gr[i][j];
}

// Runs the pixels -- block_f for float, kLanes at a time (the last block's spare lanes repeat
// its last pixel, their results dropped), pixel() for double -- forward into out (B, H, W) or
// backward into grad_params.
template <typename T>
void run(const Shape& s, const at::Tensor& params, const at::Tensor& v, const at::Tensor* grad, at::Tensor& result) {
  const int64_t pixels = s.batch * s.h * s.w, hw = s.h * s.w;
  const T* p = params.const_data_ptr<T>();
  const T* lv = v.const_data_ptr<T>();
  const T* g = grad != nullptr ? grad->const_data_ptr<T>() : nullptr;
  T* r = result.mutable_data_ptr<T>();
  const auto ps = params.strides(), vs = v.strides();
  const auto gst = grad != nullptr ? grad->strides() : at::IntArrayRef();
  const auto rs = result.strides();
  const int64_t chunks = (pixels + kPixelsPerChunk - 1) / kPixelsPerChunk;
  const int team = genkernels::cpu::team_size(
      std::min<int64_t>(chunks, std::max<int64_t>(1, pixels * s.mixtures * s.channels / kMinWorkPerThread)));
  genkernels::cpu::SoloScope solo(team <= 1);
  constexpr bool vectorised = std::is_same_v<T, float>;
  std::vector<std::vector<T>> scratch(team, std::vector<T>(vectorised ? 0 : 4 * s.mixtures * s.channels + 2 * s.mixtures));
  std::vector<std::vector<f8>> lanes_scratch(team, std::vector<f8>(vectorised ? scratch_rows(s) : 0));
  genkernels::cpu::parallel_chunks(chunks, team, [&](int64_t chunk, int slot) {
    const int64_t end = std::min(pixels, (chunk + 1) * kPixelsPerChunk);
    if constexpr (vectorised) {
      int64_t pix[kLanes], vix[kLanes], gix[kLanes], rix[kLanes];
      f8 gl{};
      float out[kLanes];
      for (int64_t i0 = chunk * kPixelsPerChunk; i0 < end; i0 += kLanes) {
        const int lanes = int(std::min<int64_t>(kLanes, end - i0));
        for (int j = 0; j < kLanes; ++j) {
          const int64_t i = i0 + std::min(j, lanes - 1);
          const int64_t b = i / hw, y = (i % hw) / s.w, x = i % s.w;
          pix[j] = b * ps[0] + y * ps[2] + x * ps[3];
          vix[j] = b * vs[0] + y * vs[2] + x * vs[3];
          if (g == nullptr) {
            rix[j] = b * rs[0] + y * rs[1] + x * rs[2];
          } else {
            gl[j] = g[b * gst[0] + y * gst[1] + x * gst[2]];
            gix[j] = b * rs[0] + y * rs[2] + x * rs[3];
          }
        }
        if (g == nullptr) {
          block_f(s, p, pix, ps[1], lv, vix, vs[1], gl, out, nullptr, nullptr, 0, lanes_scratch[slot].data());
          for (int j = 0; j < lanes; ++j) r[rix[j]] = out[j];
        } else {
          // spare lanes repeat the last pixel and its gradient: they write the same values
          block_f(s, p, pix, ps[1], lv, vix, vs[1], gl, nullptr, r, gix, rs[1], lanes_scratch[slot].data());
        }
      }
    } else {
      for (int64_t i = chunk * kPixelsPerChunk; i < end; ++i) {
        const int64_t b = i / hw, y = (i % hw) / s.w, x = i % s.w;
        const T* pp = p + b * ps[0] + y * ps[2] + x * ps[3];
        const T* vp = lv + b * vs[0] + y * vs[2] + x * vs[3];
        if (g == nullptr) {
          r[b * rs[0] + y * rs[1] + x * rs[2]] = pixel<T>(s, pp, ps[1], vp, vs[1], T(0), nullptr, 0, scratch[slot]);
        } else {
          const T gi = g[b * gst[0] + y * gst[1] + x * gst[2]];
          pixel<T>(s, pp, ps[1], vp, vs[1], gi, r + b * rs[0] + y * rs[2] + x * rs[3], rs[1], scratch[slot]);
        }
      }
    }
  });
}

}  // namespace

at::Tensor logistic_mixture_log_prob_cpu(const at::Tensor& params, const at::Tensor& v, int64_t mixtures,
                                         int64_t levels) {
  const Shape s = check("logistic_mixture_log_prob", params, v, mixtures, levels);
  at::Tensor out = at::empty({s.batch, s.h, s.w}, params.options());
  if (out.numel() == 0) return out;
  if (params.scalar_type() == at::kDouble) {
    run<double>(s, params, v, nullptr, out);
  } else {
    run<float>(s, params, v, nullptr, out);
  }
  return out;
}

at::Tensor logistic_mixture_log_prob_backward_cpu(const at::Tensor& grad, const at::Tensor& params,
                                                  const at::Tensor& v, int64_t mixtures, int64_t levels) {
  constexpr const char* op = "logistic_mixture_log_prob_backward";
  const Shape s = check(op, params, v, mixtures, levels);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == s.batch && grad.size(1) == s.h && grad.size(2) == s.w, op,
                    ": grad must be (", s.batch, ", ", s.h, ", ", s.w, "); got ", grad.sizes());
  const at::Tensor g = grad.to(params.scalar_type());
  at::Tensor result = at::empty(params.sizes(), params.options());
  if (result.numel() == 0) return result;
  if (params.scalar_type() == at::kDouble) {
    run<double>(s, params, v, &g, result);
  } else {
    run<float>(s, params, v, &g, result);
  }
  return result;
}

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("logistic_mixture_log_prob", &logistic_mixture_log_prob_cpu);
  m.impl("logistic_mixture_log_prob_backward", &logistic_mixture_log_prob_backward_cpu);
}

}  // namespace genkernels::autoregressive::cpu
