// CPU kernels of the SOM ops (schemas in csrc/genkernels.cpp, spec in
// genkernels/som/reference.py):
//
//   som_bmu        euclidean, k <= 32: the fused register-tiled micro-kernel with an exact
//                  recheck of near-ties (som_bmu_kernel.h, AVX-512 or AVX2 picked at run
//                  time); at large D the same filter and recheck over dot products from
//                  at::mm on tiles of rows (gemm_euclidean); every other case: the direct
//                  path, exact distances from their definition for blocks of rows against
//                  L1/L2-sized tiles of nodes.
//   som_node_sums  BMU (k = 1) then a per-node sum in sample order, parallel over nodes
//                  (samples at a NaN distance counted nowhere).
// Every op runs data outside the safe range on power-of-two-scaled copies (scale guard).
//   som_online     Kohonen's sequential rule, parallel over maps; each step is one pass over
//                  the map that applies step t's update to a node and at once measures its
//                  distance to step t+1's sample (fp32 euclidean: an AVX-512 pass picked at
//                  run time, som_online_avx512.cpp).
//
// Accumulation runs in fp32 (fp64 for fp64 input): fp16/bf16 inputs are converted once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include <atomic>
#include <string_view>
#include <thread>

#if defined(__SSE__)
#include <immintrin.h>
#include <xmmintrin.h>
#endif

#include "cpu/parallel_region.h"
#include "cpu/som_cpu.h"
#include "cpu/som_scale.h"
#include "aten/som_names.h"

namespace genkernels::som::cpu {
namespace {

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---------------------------------------------------------------------------------- BMU
// One sample as the direct path sees it: with ignore_nan, NaN features replaced by 0 and
// `present` (1/0 per feature) set, exactly the reference's where(present, x, 0) and
// w * present.
template <typename T>
struct Sample {
  const T* x;          // D features (NaN-free copy when masked)
  const T* present;    // nullptr: every feature present
  int64_t n_present;
  T norm;              // |x| over the present features (cosine)
};

template <typename T>
T masked_squared_distance(const T* x, const T* w, const T* present, int64_t D) {
  T acc[kLanes] = {};
  for (int64_t d = 0; d < D; ++d) {
    const T t = x[d] - w[d] * present[d];
    acc[d % kLanes] += t * t;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
T masked_abs_sum(const T* x, const T* w, const T* present, int64_t D) {
  T acc[kLanes] = {};
  for (int64_t d = 0; d < D; ++d) acc[d % kLanes] += std::abs(x[d] - w[d] * present[d]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
T masked_abs_max(const T* x, const T* w, const T* present, int64_t D) {
  T m = 0;
  for (int64_t d = 0; d < D; ++d) m = std::max(m, std::abs(x[d] - w[d] * present[d]));
  return m;
}

// Distance of one sample to node w (definitions in reference.paired_distances).
template <typename T>
T direct_distance(Metric metric, const Sample<T>& s, const T* w, T w_norm, int64_t D) {
  if (s.present == nullptr) {
    switch (metric) {
      case Metric::Euclidean: return std::sqrt(squared_distance(s.x, w, D));
      case Metric::Manhattan: return abs_distance_sum(s.x, w, D);
      case Metric::Chebyshev: return abs_distance_max(s.x, w, D);
      case Metric::Cosine: return T(1) - dot(s.x, w, D) / (s.norm * w_norm + T(kCosineEps));
    }
  }
  if (s.n_present == 0) return std::numeric_limits<T>::infinity();
  const T rescale = T(D) / T(s.n_present);
  switch (metric) {
    case Metric::Euclidean: return std::sqrt(masked_squared_distance(s.x, w, s.present, D) * rescale);
    case Metric::Manhattan: return masked_abs_sum(s.x, w, s.present, D) * rescale;
    case Metric::Chebyshev: return masked_abs_max(s.x, w, s.present, D);
    case Metric::Cosine: {
      T num[kLanes] = {}, ww[kLanes] = {};
      for (int64_t d = 0; d < D; ++d) {
        const T wm = w[d] * s.present[d];
        num[d % kLanes] += s.x[d] * wm;
        ww[d % kLanes] += wm * wm;
      }
      const T num_sum = ((num[0] + num[1]) + (num[2] + num[3])) + ((num[4] + num[5]) + (num[6] + num[7]));
      const T ww_sum = ((ww[0] + ww[1]) + (ww[2] + ww[3])) + ((ww[4] + ww[5]) + (ww[6] + ww[7]));
      return T(1) - num_sum / (s.norm * std::sqrt(ww_sum) + T(kCosineEps));
    }
  }
  return T(0);
}

// Direct path: exact distances of blocks of kRowBlock samples against tiles of nodes sized
// to stay in L1/L2 while every sample of the block reuses them, into a per-thread (block,
// K) buffer, then a top-k selection per row. Rows: `rows[0..n_rows)` or, when rows is
// nullptr, 0..n_rows.
template <typename T>
void direct_bmu(const T* x, const int64_t* rows, int64_t n_rows, const T* w, int64_t K, int64_t D, int64_t k,
                Metric metric, bool ignore_nan, int64_t* out_idx, T* out_dist) {
  constexpr int64_t kRowBlock = 8;
  const int64_t tile = std::max<int64_t>(16, (int64_t(32) << 10) / int64_t(sizeof(T) * std::max<int64_t>(D, 1)));
  std::vector<T> w_norm(metric == Metric::Cosine ? K : 0);
  for (int64_t j = 0; j < int64_t(w_norm.size()); ++j) w_norm[j] = std::sqrt(dot(w + j * D, w + j * D, D));
  const int64_t n_blocks = (n_rows + kRowBlock - 1) / kRowBlock;

  struct Scratch {
    std::vector<T> values, clean, present;
    std::vector<int64_t> order;
  };
  const int team = genkernels::cpu::team_size(bmu_threads_for(n_rows, K, D));
  std::vector<Scratch> states(team);
  genkernels::cpu::parallel_chunks(n_blocks, team, [&](int64_t blk, int slot) {
    Scratch& st = states[slot];
    if (st.values.empty()) {
      st.values.resize(kRowBlock * K);
      st.clean.resize(kRowBlock * D);
      st.present.resize(kRowBlock * D);
    }
    std::vector<T>&values = st.values, &clean = st.clean, &present = st.present;
    std::vector<int64_t>& order = st.order;
    Sample<T> samples[kRowBlock];
    int64_t row_of[kRowBlock];
    {
      const int rb = int(std::min<int64_t>(kRowBlock, n_rows - blk * kRowBlock));
      for (int i = 0; i < rb; ++i) {
        const int64_t r = rows ? rows[blk * kRowBlock + i] : blk * kRowBlock + i;
        row_of[i] = r;
        const T* xr = x + r * D;
        Sample<T>& s = samples[i];
        s = {xr, nullptr, D, T(0)};
        if (ignore_nan && std::any_of(xr, xr + D, [](T v) { return std::isnan(v); })) {
          T* c = clean.data() + i * D;
          T* p = present.data() + i * D;
          int64_t n_present = 0;
          for (int64_t d = 0; d < D; ++d) {
            const bool ok = !std::isnan(xr[d]);
            c[d] = ok ? xr[d] : T(0);
            p[d] = ok ? T(1) : T(0);
            n_present += ok;
          }
          s = {c, p, n_present, T(0)};
        }
        if (metric == Metric::Cosine) s.norm = std::sqrt(dot(s.x, s.x, D));
      }
      for (int64_t j0 = 0; j0 < K; j0 += tile) {
        const int64_t j1 = std::min(K, j0 + tile);
        for (int i = 0; i < rb; ++i)
          for (int64_t j = j0; j < j1; ++j)
            values[i * K + j] = direct_distance(metric, samples[i], w + j * D,
                                                w_norm.empty() ? T(0) : w_norm[j], D);
      }
      for (int i = 0; i < rb; ++i)
        select_topk(values.data() + i * K, K, k, out_idx + row_of[i] * k, out_dist + row_of[i] * k, order);
    }
  });
}

// GENKERNELS_CPU_ISA=avx2 keeps the AVX2 micro-kernel on an AVX-512 machine (use_avx512_kernel).
template <typename T>
void fast_euclidean(const T* x, int64_t n, const T* w, int64_t K, int64_t D, int64_t k, int64_t* idx, T* dist) {
  if (use_avx512_kernel())
    bmu_euclidean_avx512(x, n, w, K, D, k, idx, dist);
  else
    bmu_euclidean_avx2(x, n, w, K, D, k, idx, dist);
}

// Scan one row of BLAS dot products g_j = x.w_j: e_j = |w_j|^2 - 2 g_j into the candidate
// list (the micro-kernel's filter), kLanes nodes per vector compare; then the exact finish.
template <typename T>
void scan_gemm_row(const T* g, const T* norms, int64_t K, Candidates<T>& c) {
  int64_t j = 0;
  for (; j + 2 * kLanes <= K; j += 2 * kLanes) {
    const lanes_t<T> e0 = load_lanes(norms + j) - T(2) * load_lanes(g + j);
    const lanes_t<T> e1 = load_lanes(norms + j + kLanes) - T(2) * load_lanes(g + j + kLanes);
    const auto m = (e0 <= c.thr) | (e1 <= c.thr);
    bool any = false;
    for (int l = 0; l < kLanes; ++l) any |= m[l] != 0;
    if (!any) continue;
    for (int l = 0; l < kLanes; ++l) c.push(e0[l], j + l);
    for (int l = 0; l < kLanes; ++l) c.push(e1[l], j + kLanes + l);
  }
  for (; j < K; ++j) c.push(norms[j] - T(2) * g[j], j);
}

// Euclidean BMU for large D: the dot products of a tile of rows against every node come
// from at::mm (MKL) into a bounded (tile, K) buffer per thread, then each row is filtered
// and rechecked exactly as in the micro-kernel (Candidates, finish_candidates): the same
// contract (exact distances, (distance, index) order) whatever BLAS's summation order,
// kernel choice or thread split -- the margin bounds the expansion's error for any order.
// Each OpenMP thread runs its own single-threaded at::mm (BLAS runs serially inside a
// parallel region) on whole tiles and scans them while they are in its cache. Measured on
// 2 cores (10,000 x 784 against 1,600 nodes, fp32, k = 1): this 71 ms; one 2-thread
// at::mm per tile then a parallel scan 73-82 ms; tiles of 64 / 128 / 256 / 512 / 1,024 rows
// 85 / 79 / 72 / 71 / 70 ms; the whole torch.mm alone 82-88 ms.
constexpr int64_t kGemmRows = 256;
constexpr int64_t kGemmMaxBufferBytes = int64_t(16) << 20;

template <typename T>
void gemm_euclidean(const T* x, int64_t n, const T* w, int64_t K, int64_t D, int64_t k, int64_t* out_idx,
                    T* out_dist) {
  std::vector<T> norms(K);
  T max_norm = 0;
  for (int64_t j = 0; j < K; ++j) {
    norms[j] = dot(w + j * D, w + j * D, D);
    max_norm = std::max(max_norm, norms[j]);
  }
  const T margin_scale = euclidean_margin_scale<T>(D);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor wt = at::from_blob(const_cast<T*>(w), {K, D}, opts).t();
  // Rows per tile: kGemmRows, fewer where K is large (a bounded buffer) or n is small
  // (every thread gets a tile).
  const int64_t threads = omp_get_max_threads();
  const int64_t tile = std::max<int64_t>(1, std::min({kGemmRows, std::max<int64_t>(16, kGemmMaxBufferBytes / int64_t(sizeof(T) * K)),
                                                      (n + threads - 1) / threads}));
  const int64_t n_tiles = (n + tile - 1) / tile;
  struct Scratch {
    at::Tensor buf;
    std::vector<T> scratch;
    std::vector<int64_t> order;
    Candidates<T> c;
  };
  const int team = genkernels::cpu::team_size(bmu_threads_for(n, K, D));
  std::vector<Scratch> states(team);
  genkernels::cpu::parallel_chunks(n_tiles, team, [&](int64_t t, int slot) {
    Scratch& st = states[slot];
    if (!st.buf.defined()) st.buf = at::empty({std::min(tile, n), K}, opts);
    at::Tensor& buf = st.buf;
    std::vector<T>& scratch = st.scratch;
    std::vector<int64_t>& order = st.order;
    Candidates<T>& c = st.c;
    {
      const int64_t r0 = t * tile, rows = std::min(tile, n - r0);
      at::Tensor g = buf.narrow(0, 0, rows);
      at::mm_out(g, at::from_blob(const_cast<T*>(x + r0 * D), {rows, D}, opts), wt);
      const T* gp = g.data_ptr<T>();
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t r = r0 + i;
        const T* xr = x + r * D;
        c.reset(int(k), margin_scale * (dot(xr, xr, D) + max_norm));
        scan_gemm_row(gp + i * K, norms.data(), K, c);
        finish_candidates(xr, w, K, D, k, c, out_idx + r * k, out_dist + r * k, scratch, order);
      }
    }
  });
}

// Whether at::mm computes fp32 products in fp32: a reduced-precision matmul (bf16/tf32 via
// oneDNN, torch.backends.mkldnn.matmul.fp32_precision) has errors far beyond the margin.
bool blas_fp32_exact() {
  const auto p = at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
  return p != at::Float32Precision::BF16 && p != at::Float32Precision::TF32;
}

// The BLAS-tiled path wins where the micro-kernel's weights no longer fit the L2 cache it
// streams them from (K D sizeof(T) >= 2 MiB) or, in fp32, from D = 256 on; it loses at
// small D at any K (a GEMM with a short inner dimension, and the scan costs as much as
// the products). Measured on 2 cores, 10,000 (fp64: 4,000) rows, k = 1, time of the BLAS
// path / the micro-kernel: fp32 K = 1,600: D = 64 1.27, 128 1.18, 192 1.09, 256 1.02,
// 320 0.83, 384 0.70; K = 400: D = 128 1.14, 256 1.00, 384 0.99; K = 100: D = 192 0.96,
// 1,024 0.75; K = 4,096: D = 64 1.50, 128 0.91; K = 8,192, D = 64 1.16. fp64 K = 1,600:
// D = 128 1.29, 160 1.02, 192 0.86, 256 0.69; K = 2,500, D = 128 0.91; K = 4,096, D = 64
// 1.36; K = 100, D = 1,024 1.22. GENKERNELS_CPU_GEMM=0 / 1 forces it off / on (tests).
template <typename T>
bool use_gemm_path(int64_t K, int64_t D) {
  if (!std::is_same_v<T, double> && !blas_fp32_exact()) return false;
  if (const char* force = std::getenv("GENKERNELS_CPU_GEMM")) {
    if (std::string_view(force) == "0") return false;
    if (std::string_view(force) == "1") return true;
  }
  if (D < 128) return false;
  return K * D * int64_t(sizeof(T)) >= (int64_t(2) << 20) || (std::is_same_v<T, float> && D >= 256);
}

// BMU of every row of x (n, D) against w (K, D), both contiguous in the accumulation type.
template <typename T>
void bmu_rows(const T* x, int64_t n, const T* w, int64_t K, int64_t D, int64_t k, Metric metric, bool ignore_nan,
              int64_t* idx, T* dist) {
  const bool fast = metric == Metric::Euclidean && k <= kFastMaxK && D > 0 &&
                    (have_avx512_kernel() || have_avx2_kernel());
  if (!fast) {
    direct_bmu(x, nullptr, n, w, K, D, k, metric, ignore_nan, idx, dist);
    return;
  }
  if (use_gemm_path<T>(K, D))
    gemm_euclidean(x, n, w, K, D, k, idx, dist);
  else
    fast_euclidean(x, n, w, K, D, k, idx, dist);
  if (!ignore_nan) return;
  // NaN-free rows are unchanged by ignore_nan (the rescale is D / D = 1); rows with a
  // NaN are redone on the masked direct path.
  std::vector<int64_t> nan_rows;
  for (int64_t r = 0; r < n; ++r)
    if (std::any_of(x + r * D, x + (r + 1) * D, [](T v) { return std::isnan(v); })) nan_rows.push_back(r);
  if (!nan_rows.empty())
    direct_bmu(x, nan_rows.data(), int64_t(nan_rows.size()), w, K, D, k, metric, true, idx, dist);
}

std::tuple<at::Tensor, at::Tensor> som_bmu_cpu(const at::Tensor& x, const at::Tensor& weights, int64_t k,
                                                c10::string_view metric_name, bool ignore_nan) {
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  TORCH_CHECK(x.dim() == 2 && weights.dim() == 2 && x.size(1) == weights.size(1),
              "som_bmu: x (N, D) and weights (K, D) expected; got ", x.sizes(), " and ", weights.sizes());
  const int64_t n = x.size(0), K = weights.size(0), D = x.size(1);
  TORCH_CHECK(k >= 1 && k <= K, "som_bmu: k must be in [1, ", K, "]; got ", k);
  const auto acc = acc_type(x.scalar_type());
  at::Tensor xa = x.to(acc).contiguous();
  at::Tensor wa = weights.to(acc).contiguous();
  at::Tensor idx = at::empty({n, k}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({n, k}, x.options().dtype(acc));
  const int e = n > 0 ? scale_exponent_of(xa, wa, D) : 0;
  if (e != 0) {
    xa = ldexp_copy(xa, -e);
    wa = ldexp_copy(wa, -e);
  }
  if (n > 0) {
    if (acc == at::kDouble)
      bmu_rows(xa.data_ptr<double>(), n, wa.data_ptr<double>(), K, D, k, metric, ignore_nan,
               idx.data_ptr<int64_t>(), dist.data_ptr<double>());
    else
      bmu_rows(xa.data_ptr<float>(), n, wa.data_ptr<float>(), K, D, k, metric, ignore_nan,
               idx.data_ptr<int64_t>(), dist.data_ptr<float>());
  }
  if (e != 0 && metric != Metric::Cosine) dist = ldexp_copy(dist, e);  // cosine is scale-free
  return {idx, dist.to(x.scalar_type())};
}

// ---------------------------------------------------------------------------- node sums
// After the BMU pass, samples are bucketed by winner (a stable counting sort), and every
// node sums its own samples in increasing sample order: a fixed reduction order that does
// not depend on the thread count, with no atomics and O(N + K D) extra memory.
// A sample whose winning distance is NaN (a NaN feature without ignore_nan, or NaN in
// every node) goes to the extra bucket K: counted nowhere (the ops' NaN rule).
template <typename T>
void node_sums(const T* x, int64_t n, int64_t K, int64_t D, const int64_t* winner, const T* dist,
               bool ignore_nan, T* sums, T* counts) {
  std::vector<int64_t> start(K + 2, 0), members(n);
  auto bucket = [&](int64_t i) { return std::isnan(dist[i]) ? K : winner[i]; };
  for (int64_t i = 0; i < n; ++i) ++start[bucket(i) + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) members[fill[bucket(i)]++] = i;
  }
  // nodes claimed 8 at a time, on a team sized by the samples summed
  constexpr int64_t kNodesPerChunk = 8;
  const int team = genkernels::cpu::team_size(std::max<int64_t>(1, n * D / (int64_t(1) << 18)));
  genkernels::cpu::parallel_chunks((K + kNodesPerChunk - 1) / kNodesPerChunk, team, [&](int64_t chunk, int) {
  for (int64_t j = chunk * kNodesPerChunk; j < std::min(K, (chunk + 1) * kNodesPerChunk); ++j) {
    T* s = sums + j * D;
    std::fill(s, s + D, T(0));
    if (ignore_nan) {
      T* c = counts + j * D;
      std::fill(c, c + D, T(0));
      for (int64_t q = start[j]; q < start[j + 1]; ++q) {
        const T* xr = x + members[q] * D;
        for (int64_t d = 0; d < D; ++d) {
          const bool ok = !std::isnan(xr[d]);
          s[d] += ok ? xr[d] : T(0);
          c[d] += ok ? T(1) : T(0);
        }
      }
    } else {
      for (int64_t q = start[j]; q < start[j + 1]; ++q) {
        const T* xr = x + members[q] * D;
        for (int64_t d = 0; d < D; ++d) s[d] += xr[d];
      }
      counts[j] = T(start[j + 1] - start[j]);
    }
  }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> som_node_sums_cpu(const at::Tensor& x, const at::Tensor& weights,
                                                                 c10::string_view metric_name, bool ignore_nan) {
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  TORCH_CHECK(x.dim() == 2 && weights.dim() == 2 && x.size(1) == weights.size(1),
              "som_node_sums: x (N, D) and weights (K, D) expected; got ", x.sizes(), " and ", weights.sizes());
  const int64_t n = x.size(0), K = weights.size(0), D = x.size(1);
  const auto acc = acc_type(x.scalar_type());
  at::Tensor xa = x.to(acc).contiguous();
  at::Tensor wa = weights.to(acc).contiguous();
  const int e = n > 0 && K > 0 ? scale_exponent_of(xa, wa, D) : 0;
  if (e != 0) {
    xa = ldexp_copy(xa, -e);
    wa = ldexp_copy(wa, -e);
  }
  at::Tensor sums = at::zeros({K, D}, x.options().dtype(acc));
  at::Tensor counts = ignore_nan ? at::zeros({K, D}, x.options().dtype(acc)) : at::zeros({K}, x.options().dtype(acc));
  at::Tensor idx = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({n}, x.options().dtype(acc));
  double distance_sum = 0.0;
  if (n > 0 && K > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "som_node_sums_cpu", [&] {
      bmu_rows(xa.data_ptr<scalar_t>(), n, wa.data_ptr<scalar_t>(), K, D, 1, metric, ignore_nan,
               idx.data_ptr<int64_t>(), dist.data_ptr<scalar_t>());
      node_sums(xa.data_ptr<scalar_t>(), n, K, D, idx.data_ptr<int64_t>(), dist.data_ptr<scalar_t>(), ignore_nan,
                sums.data_ptr<scalar_t>(), counts.data_ptr<scalar_t>());
    });
    // The reference sums the distances as som_bmu returns them (rounded to x's dtype).
    const at::Tensor d64 = dist.to(x.scalar_type()).to(at::kDouble);
    const double* dp = d64.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i)
      if (std::isfinite(dp[i])) distance_sum += dp[i];
    if (e != 0) {
      sums = ldexp_copy(sums, e);
      if (metric != Metric::Cosine) distance_sum = std::ldexp(distance_sum, e);
    }
  }
  return {sums, counts, at::scalar_tensor(distance_sum, x.options().dtype(at::kDouble))};
}

// ------------------------------------------------------------------------------- online
template <typename T>
struct OnlineProblem {
  const T* x;
  int64_t D;
  int64_t K;
  int64_t steps;
  const T* coords;
  T period_0, period_1;
  Neighborhood neighborhood;
  Rule rule;
  Metric metric;
  bool avx512;  // the AVX-512 fused pass (fp32 euclidean) runs
};

// Ranking key of the BMU search: the squared sum for euclidean (sqrt is monotonic; the
// reference's argmin of sqrt values differs only where sqrt rounds two sums together),
// the distance itself otherwise.
template <typename T, Metric M>
inline T online_key(const T* s, const T* w, int64_t D, T s_norm) {
  if constexpr (M == Metric::Euclidean) return squared_distance(s, w, D);
  if constexpr (M == Metric::Manhattan) return abs_distance_sum(s, w, D);
  if constexpr (M == Metric::Chebyshev) return abs_distance_max(s, w, D);
  if constexpr (M == Metric::Cosine) return T(1) - dot(s, w, D) / (s_norm * std::sqrt(dot(w, w, D)) + T(kCosineEps));
}

// One pass over the map: node j first takes step t's update w_j += (lr h_j) (s - w_j)
// (skipped where lr h_j == 0, e.g. outside a bubble), then, while its row is in L1,
// its key for step t+1's sample `next` goes to key[j]: one sweep of the map per step
// instead of two. Returns step t+1's winner (the first minimum). `s` or `next` may be
// nullptr (first / last step).
template <typename T>
inline void update_node(T* wj, const T* s, T eh, int64_t D) {
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    const lanes_t<T> wv = load_lanes(wj + d);
    store_lanes(wj + d, wv + eh * (load_lanes(s + d) - wv));
  }
  for (; d < D; ++d) wj[d] += eh * (s[d] - wj[d]);
}

// First index of the minimum of key[0..K) (NaN keys are outside the op's contract): a
// lane-wise minimum with independent accumulators, then a scan for its first occurrence,
// instead of a scalar compare chain whose latency bounds a K-long loop.
template <typename T>
int64_t first_argmin(const T* key, int64_t K) {
  T best = key[0];
  int64_t j = 0;
  if (K >= 2 * kLanes) {
    lanes_t<T> m0 = load_lanes(key), m1 = load_lanes(key + kLanes);
    for (j = 2 * kLanes; j + 2 * kLanes <= K; j += 2 * kLanes) {
      const lanes_t<T> a = load_lanes(key + j), b = load_lanes(key + j + kLanes);
      m0 = a < m0 ? a : m0;
      m1 = b < m1 ? b : m1;
    }
    m0 = m1 < m0 ? m1 : m0;
    for (int l = 0; l < kLanes; ++l) best = std::min(best, m0[l]);
  }
  for (; j < K; ++j) best = std::min(best, key[j]);
  for (j = 0; j < K; ++j)
    if (key[j] == best) return j;
  return 0;
}

template <typename T, Metric M>
int64_t fused_pass(T* w, int64_t K, int64_t D, const T* s, const T* h, T lr, const T* next, T next_norm, T* key) {
  int64_t j0 = 0;
  if constexpr (M == Metric::Euclidean) {
    // Groups of kLanes nodes swept together, feature chunk by feature chunk: each weight
    // vector is loaded once, updated, stored and measured against the next sample; the
    // kLanes nodes give kLanes independent FMA chains (hiding FMA latency) and their lane
    // sums are combined together by one shuffle tree. Per node the arithmetic is
    // update_node's and squared_distance's.
    if (next != nullptr) {
      for (; j0 + kLanes <= K; j0 += kLanes) {
        T* wg = w + j0 * D;
        T eh[kLanes] = {};
        bool moves = false;
        if (s != nullptr)
          for (int q = 0; q < kLanes; ++q) {
            eh[q] = lr * h[j0 + q];
            moves |= eh[q] != T(0);
          }
        lanes_t<T> acc[kLanes] = {};
        int64_t d = 0;
        if (moves) {
          // update and distance in one sweep of the group's rows; a node with eh = 0 is
          // rewritten unchanged (w + 0 (s - w) = w for finite data)
          // two halves of the group, so accumulators, rates and operands fit in 16 ymm
          int64_t d_end = 0;
#pragma GCC unroll 2
          for (int half = 0; half < kLanes; half += kLanes / 2) {
            for (d = 0; d + kLanes <= D; d += kLanes) {
              const lanes_t<T> xv = load_lanes(next + d), sv = load_lanes(s + d);
#pragma GCC unroll 8
              for (int q = half; q < half + kLanes / 2; ++q) {
                lanes_t<T> wv = load_lanes(wg + q * D + d);
                wv += eh[q] * (sv - wv);
                store_lanes(wg + q * D + d, wv);
                const lanes_t<T> t = xv - wv;
                acc[q] += t * t;
              }
            }
            d_end = d;
          }
          d = d_end;
          if (d < D) {
            for (int q = 0; q < kLanes; ++q)
              for (int64_t e = d; e < D; ++e) wg[q * D + e] += eh[q] * (s[e] - wg[q * D + e]);
          }
        } else {
          for (; d + kLanes <= D; d += kLanes) {
            const lanes_t<T> xv = load_lanes(next + d);
#pragma GCC unroll 8
            for (int q = 0; q < kLanes; ++q) {
              const lanes_t<T> t = xv - load_lanes(wg + q * D + d);
              acc[q] += t * t;
            }
          }
        }
        if (d < D) {
          const lanes_t<T> xv = load_lanes_partial(next + d, D - d);
          for (int q = 0; q < kLanes; ++q) {
            const lanes_t<T> t = xv - load_lanes_partial(wg + q * D + d, D - d);
            acc[q] += t * t;
          }
        }
        store_lanes(key + j0, combine_lanes_x8<T>(acc));
      }
    }
  }
  for (int64_t j = j0; j < K; ++j) {
    T* wj = w + j * D;
    if (s != nullptr) {
      const T eh = lr * h[j];
      if (eh != T(0)) update_node(wj, s, eh, D);
    }
    if (next != nullptr) key[j] = online_key<T, M>(next, wj, D, next_norm);
  }
  return next != nullptr ? first_argmin(key, K) : 0;
}

// Flush-to-zero while a map trains: far from the winner the Gaussian neighbourhood decays
// through the subnormal range, and every subnormal product lr * h * (s - w) costs a
// microcode assist (~100 cycles) -- measured as half of all the time of a 32x32 map. The
// flushed updates are below 1e-38, far under an ulp of any weight they would be added to.
struct FlushToZero {
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  FlushToZero() { _mm_setcsr(saved | _MM_FLUSH_ZERO_ON); }
  ~FlushToZero() { _mm_setcsr(saved); }
#endif
};

// Calls f(std::integral_constant<Neighborhood, kind>{}).
template <typename F>
void with_neighborhood(Neighborhood kind, F&& f) {
  switch (kind) {
    case Neighborhood::Gaussian: f(std::integral_constant<Neighborhood, Neighborhood::Gaussian>{}); break;
    case Neighborhood::Bubble: f(std::integral_constant<Neighborhood, Neighborhood::Bubble>{}); break;
    case Neighborhood::MexicanHat: f(std::integral_constant<Neighborhood, Neighborhood::MexicanHat>{}); break;
    case Neighborhood::Triangle: f(std::integral_constant<Neighborhood, Neighborhood::Triangle>{}); break;
  }
}

// The values a lattice axis takes (sorted, distinct) and each node's index into them: on
// rectangular and hexagonal grids a handful (rows, 2 x rows, cols), so a separable
// neighbourhood needs one factor per distinct value and step instead of one exp per node.
template <typename T>
struct AxisTable {
  std::vector<T> values;
  std::vector<int32_t> index;
  explicit AxisTable(const std::vector<T>& pos) : values(pos), index(pos.size()) {
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    for (size_t j = 0; j < pos.size(); ++j)
      index[j] = int32_t(std::lower_bound(values.begin(), values.end(), pos[j]) - values.begin());
  }
};

// One axis's factor of a separable neighbourhood at offset dx >= 0: gaussian
// exp(-dx^2 / 2 sigma^2), bubble [dx < sigma], triangle max(0, 1 - dx / sigma). The
// product of the two axes' factors is neighborhood_with_exp's value: bit for bit for the
// bubble and the triangle (the same product), within an ulp or two of the one exp for the
// gaussian (exp(a) exp(b) against exp(a + b); each factor is a libm exp here).
template <typename T>
inline T axis_factor(Neighborhood kind, T dx, T sigma) {
  switch (kind) {
    case Neighborhood::Gaussian: return dx == T(0) ? T(1) : std::exp(-(dx * dx) / (T(2) * sigma * sigma));
    case Neighborhood::Bubble: return dx < sigma ? T(1) : T(0);
    case Neighborhood::Triangle: return std::fmax(T(0), T(1) - dx / sigma);
    case Neighborhood::MexicanHat: break;
  }
  return T(0);
}

// The per-step exchange of a team: each thread publishes its range's minimum in its own
// cache line (a slot of the step's parity, so a fast thread's next step cannot overwrite
// a slot still being read) and raises its step counter; the others spin on the counters.
// Measured on 2 cores (32x32 map, D = 64): about 0.1 us/step less than an OpenMP
// barrier (wta 2.27 -> 2.15, bubble 2.88 -> 2.74 us/step). After a while of spinning a
// waiting thread yields, so a thread that the OS descheduled on a loaded machine gets its
// core back.
//
// A busy neighbour: when another process holds a core, the thread waiting at the exchange
// waits a scheduler time slice for its partner, step after step (an epoch of 20,000 steps
// measured 33x slower than alone). A waiting thread that has waited longer than
// kLateWaitNs at kLateExchanges exchanges, or in waits longer than 256 spins for a quarter
// of the time since the team began, asks for the team to end (`solo`, published with its next
// minimum); every thread reads the request at that same exchange, the others
// leave, and thread 0 trains all the nodes alone from the next step -- the same
// arithmetic per node, so the same map -- and later calls start alone for a while
// (parallel_region.h's back-off).
constexpr int64_t kLateWaitNs = 200'000;
constexpr int kLateExchanges = 3;

template <typename T>
struct alignas(64) TeamSlot {
  std::atomic<int64_t> step{-1};
  T key[2];
  int64_t idx[2];
  bool solo[2];
};

inline void spin_pause() {
#if defined(__SSE2__)
  _mm_pause();
#endif
}

// One map trained by a team of threads that split its nodes into contiguous ranges (whole
// groups of kLanes), fixed for the whole epoch so each range stays in its core's cache.
// Each thread computes the neighbourhood, the update and the next distances of its own
// nodes only; the one exchange per step is each range's minimum, combined in range order
// -- the first minimum overall, as with one thread.
template <typename T, Metric M>
void online_map(const OnlineProblem<T>& pb, T* w, const int64_t* order, const T* lr, const T* sigma, int team) {
  const int64_t K = pb.K, D = pb.D;
  std::vector<T> h(K, T(0)), key(K), eh(K, T(0));
  std::unique_ptr<TeamSlot<T>[]> slots(new TeamSlot<T>[std::max(team, 1)]);
  // lattice positions per axis, contiguous for the vectorised neighbourhood loop
  std::vector<T> axis0(K), axis1(K);
  for (int64_t j = 0; j < K; ++j) {
    axis0[j] = pb.coords[2 * j];
    axis1[j] = pb.coords[2 * j + 1];
  }
  // separable neighbourhoods from per-axis factor tables instead of one exp per node:
  // measured (gaussian, 32x32, D = 64, AVX-512 pass) 9.4 -> 6.0 us/step on one thread,
  // 5.5 -> 3.7 on two. The Mexican hat is not separable; scattered coordinates (more
  // distinct values than K / 2) keep the per-node formula.
  const bool finite_coords = std::all_of(axis0.begin(), axis0.end(), [](T v) { return std::isfinite(v); }) &&
                             std::all_of(axis1.begin(), axis1.end(), [](T v) { return std::isfinite(v); });
  const AxisTable<T> tab0(finite_coords ? axis0 : std::vector<T>()), tab1(finite_coords ? axis1 : std::vector<T>());
  const bool separable = finite_coords && pb.rule == Rule::Som && pb.neighborhood != Neighborhood::MexicanHat &&
                         int64_t(tab0.values.size() + tab1.values.size()) <= std::max<int64_t>(K / 2, 16);
  const bool use_avx512 = std::is_same_v<T, float> && M == Metric::Euclidean && pb.avx512;
  auto sample = [&](int64_t t) { return pb.x + order[t] * D; };
  auto norm = [&](const T* s) { return M == Metric::Cosine && s ? std::sqrt(dot(s, s, D)) : T(0); };
  std::atomic<bool> went_solo{false};
#pragma omp parallel num_threads(team) if (team > 1)
  {
    const FlushToZero ftz;
    int nth = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    const int64_t groups = (K + kLanes - 1) / kLanes;
    int64_t j0 = std::min(K, groups * tid / nth * kLanes);
    int64_t j1 = std::min(K, groups * (tid + 1) / nth * kLanes);
    int64_t nk = j1 - j0;
    std::vector<T> f0(tab0.values.size()), f1(tab1.values.size());
    int64_t exchange = 0;
    int late_exchanges = 0;
    int64_t slow_wait_ns = 0;  // time spent in waits longer than 256 spins
    const int64_t started = genkernels::cpu::team_health::now_ns();
    bool leave = false;  // the team ended and this thread is not the one that goes on
    // Update the own nodes with step sample s, measure them against `next` and return
    // the map's winner for `next`.
    auto pass = [&](const T* s, T lr_t, const T* next) -> int64_t {
      int64_t local = 0;
      if (nk > 0) {
        bool done = false;
        if constexpr (std::is_same_v<T, float> && M == Metric::Euclidean) {
          if (use_avx512 && next != nullptr) {
            if (s != nullptr)
              for (int64_t j = j0; j < j1; ++j) eh[j] = lr_t * h[j];
            online_pass_euclidean_avx512(w + j0 * D, nk, D, s, eh.data() + j0, next, key.data() + j0);
            local = first_argmin(key.data() + j0, nk);
            done = true;
          }
        }
        if (!done)
          local = fused_pass<T, M>(w + j0 * D, nk, D, s, h.data() + j0, lr_t, next, norm(next), key.data() + j0);
      }
      if (next == nullptr) return 0;
      if (nth == 1) return j0 + local;
      const int parity = int(exchange & 1);
      TeamSlot<T>& mine = slots[tid];
      mine.key[parity] = nk > 0 ? key[j0 + local] : std::numeric_limits<T>::infinity();
      mine.idx[parity] = j0 + local;
      mine.solo[parity] = late_exchanges >= kLateExchanges;
      mine.step.store(exchange, std::memory_order_release);
      int64_t best = -1;
      T best_key = T(0);
      bool solo = false;
      for (int q = 0; q < nth; ++q) {
        const TeamSlot<T>& other = slots[q];
        int64_t waiting_since = 0, last = 0;
        for (int spins = 0; other.step.load(std::memory_order_acquire) < exchange; ++spins) {
          spin_pause();
          if ((spins & 255) == 255) {
            // a long wait (a few microseconds): time it (the clock is read only here)
            const int64_t now = genkernels::cpu::team_health::now_ns();
            if (waiting_since == 0) {
              waiting_since = last = now;
            } else {
              slow_wait_ns += now - last;
              last = now;
              if (now - waiting_since > kLateWaitNs) {
                ++late_exchanges;
                waiting_since = INT64_MAX / 2;  // counted once per exchange
              }
              // or many shorter waits: a quarter of the time since the team began
              if (now - started > kLateWaitNs * 10 && 4 * slow_wait_ns > now - started)
                late_exchanges = kLateExchanges;
            }
            if (spins >= 4096) {
              std::this_thread::yield();
              spins = 0;
            }
          }
        }
        solo = solo || other.solo[parity];
        if (best < 0 || other.key[parity] < best_key) {
          best_key = other.key[parity];
          best = other.idx[parity];
        }
      }
      ++exchange;
      if (solo) {  // every thread saw the same request at this exchange: the team ends here
        if (tid == 0) {
          nth = 1;
          j0 = 0;
          j1 = K;
          nk = K;
          went_solo.store(true, std::memory_order_relaxed);
        } else {
          leave = true;
        }
      }
      return best;
    };
    int64_t winner = pass(nullptr, T(0), sample(0));
    for (int64_t t = 0; t < pb.steps && !leave; ++t) {
      const T sig = sigma[t];
      switch (pb.rule) {
        case Rule::Som: {
          const T cb0 = axis0[winner], cb1 = axis1[winner];
          const T p0 = pb.period_0, p1 = pb.period_1;
          if (separable) {
            for (size_t u = 0; u < f0.size(); ++u)
              f0[u] = axis_factor(pb.neighborhood, lattice_delta(tab0.values[u], cb0, p0), sig);
            for (size_t u = 0; u < f1.size(); ++u)
              f1[u] = axis_factor(pb.neighborhood, lattice_delta(tab1.values[u], cb1, p1), sig);
            const int32_t* i0 = tab0.index.data();
            const int32_t* i1 = tab1.index.data();
            const T* g0 = f0.data();
            const T* g1 = f1.data();
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) h[j] = g0[i0[j]] * g1[i1[j]];
            break;
          }
          // the kind as a compile-time constant: the switch folds away and the loop vectorises
          with_neighborhood(pb.neighborhood, [&](auto kind) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j)
              h[j] = neighborhood_with_exp(decltype(kind)::value, lattice_delta(axis0[j], cb0, p0),
                                           lattice_delta(axis1[j], cb1, p1), sig, VectorExp{});
          });
          break;
        }
        case Rule::Wta:
          std::fill(h.begin() + j0, h.begin() + j1, T(0));
          if (winner >= j0 && winner < j1) h[winner] = T(1);
          break;
        case Rule::Wtm:
          with_neighborhood(pb.neighborhood, [&](auto kind) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) {
              const T rho = M == Metric::Euclidean ? std::sqrt(key[j]) : key[j];
              h[j] = neighborhood_with_exp(decltype(kind)::value, rho, T(0), sig, VectorExp{});
            }
          });
          break;
      }
      winner = pass(sample(t), lr[t], t + 1 < pb.steps ? sample(t + 1) : nullptr);
    }
  }
  if (went_solo.load()) genkernels::cpu::team_health::report(true);
}

// Maps train in parallel, one thread each. A single map is split over a team of threads
// when a step's work outweighs the per-step barrier (about half a microsecond). Measured
// on 2 cores, gaussian rule, us/step with 1 thread vs 2: K*D = 512 (8x8, D=8) 0.47 vs
// 0.78; 1,600 (10x10, D=16) 0.75 vs 0.94; 8,192 (16x16, D=32) 2.12 vs 1.68; 65,536
// (32x32, D=64) 10.3 vs 6.2. With the AVX-512 pass and the separable neighbourhood:
// 8,192 (16x16, D=32) 0.99 vs 0.93; 16,384 (16x16, D=64) 1.67 vs 1.19; 65,536 6.1 vs 3.7.
constexpr int64_t kTeamMinElements = 8192;

template <typename T>
void online_maps(const OnlineProblem<T>& pb, T* w, int64_t M, const int64_t* order, const T* lr, const T* sigma) {
  const int threads = omp_get_max_threads();
  const int team = (M == 1 && threads > 1 && pb.K * pb.D >= kTeamMinElements)
                       ? genkernels::cpu::team_size(std::min<int64_t>(threads, pb.K / kLanes))
                       : 1;
  auto run = [&](int64_t m, int map_team) {
    auto go = [&](auto metric_tag) {
      constexpr Metric kMetric = decltype(metric_tag)::value;
      online_map<T, kMetric>(pb, w + m * pb.K * pb.D, order + m * pb.steps, lr + m * pb.steps, sigma + m * pb.steps,
                             map_team);
    };
    switch (pb.metric) {
      case Metric::Euclidean: go(std::integral_constant<Metric, Metric::Euclidean>{}); break;
      case Metric::Cosine: go(std::integral_constant<Metric, Metric::Cosine>{}); break;
      case Metric::Manhattan: go(std::integral_constant<Metric, Metric::Manhattan>{}); break;
      case Metric::Chebyshev: go(std::integral_constant<Metric, Metric::Chebyshev>{}); break;
    }
  };
  if (team > 1) {
    // not inside the maps' parallel region: a nested team would count as oversubscribed,
    // and libgomp then sleeps in its barriers instead of spinning
    run(0, team);
    return;
  }
  genkernels::cpu::parallel_chunks(M, genkernels::cpu::team_size(M), [&](int64_t m, int) { run(m, 1); });
}

at::Tensor som_online_cpu(const at::Tensor& weights, const at::Tensor& x, const at::Tensor& order,
                          const at::Tensor& lr, const at::Tensor& sigma, const at::Tensor& coords, double period_0,
                          double period_1, c10::string_view neighborhood_name, c10::string_view rule_name,
                          c10::string_view metric_name) {
  const Neighborhood nb = parse_neighborhood(std::string_view(neighborhood_name.data(), neighborhood_name.size()));
  const Rule rule = parse_rule(std::string_view(rule_name.data(), rule_name.size()));
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  TORCH_CHECK(weights.dim() == 3 && x.dim() == 2 && x.size(1) == weights.size(2),
              "som_online: weights (M, K, D) and x (N, D) expected; got ", weights.sizes(), " and ", x.sizes());
  const int64_t M = weights.size(0), K = weights.size(1), D = weights.size(2);
  TORCH_CHECK(order.dim() == 2 && order.size(0) == M && lr.sizes() == order.sizes() && sigma.sizes() == order.sizes(),
              "som_online: order, lr and sigma must be (M, T) with M = ", M);
  TORCH_CHECK(coords.dim() == 2 && coords.size(0) == K && coords.size(1) == 2, "som_online: coords must be (K, 2)");
  const auto acc = acc_type(weights.scalar_type());
  at::Tensor w = weights.to(acc).clone(at::MemoryFormat::Contiguous);
  const int64_t steps = order.size(1);
  if (M == 0 || K == 0 || steps == 0) return w.to(weights.scalar_type());
  at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor oa = order.to(at::kLong).contiguous();
  const at::Tensor la = lr.to(acc).contiguous();
  at::Tensor sa = sigma.to(acc).contiguous();
  const at::Tensor ca = coords.to(acc).contiguous();
  // the rule is linear in (x, w): out-of-range data trains scaled, the result is scaled
  // back; winner-takes-most's kernel reads distances over sigma, so sigma scales too
  // (kept >= genkernels.som.ops.sigma_min: 2^-42 in fp32, 2^-341 in fp64)
  const int e = scale_exponent_of(xa, w, D);
  if (e != 0) {
    xa = ldexp_copy(xa, -e);
    w = ldexp_copy(w, -e);
    if (rule == Rule::Wtm) {
      sa = ldexp_copy(sa, -e);
      sa.clamp_min_(acc == at::kDouble ? std::ldexp(1.0, -341) : std::ldexp(1.0, -42));
    }
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "som_online_cpu", [&] {
    // GENKERNELS_CPU_ISA=avx2 keeps the AVX2 pass on an AVX-512 machine (read per call)
    const char* isa = std::getenv("GENKERNELS_CPU_ISA");
    const bool avx2_only = isa != nullptr && std::string_view(isa) == "avx2";
    const OnlineProblem<scalar_t> pb{xa.data_ptr<scalar_t>(), D, K, steps, ca.data_ptr<scalar_t>(),
                                     scalar_t(period_0), scalar_t(period_1), nb, rule, metric,
                                     have_avx512_kernel() && !avx2_only};
    online_maps(pb, w.data_ptr<scalar_t>(), M, oa.data_ptr<int64_t>(), la.data_ptr<scalar_t>(),
                sa.data_ptr<scalar_t>());
  });
  if (e != 0) w = ldexp_copy(w, e);
  return w.to(weights.scalar_type());
}

}  // namespace
}  // namespace genkernels::som::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("som_bmu", &genkernels::som::cpu::som_bmu_cpu);
  m.impl("som_node_sums", &genkernels::som::cpu::som_node_sums_cpu);
  m.impl("som_online", &genkernels::som::cpu::som_online_cpu);
}
