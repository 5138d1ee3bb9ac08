// Shared pieces of the CPU SOM kernels (csrc/cpu/som*.cpp): exact per-pair distances in a
// fixed summation order, top-k selection with the library's tie rule, and the entry points
// of the ISA-specific euclidean BMU micro-kernels (som_bmu_avx2.cpp, som_bmu_avx512.cpp).
//
// Include this header before any `#pragma GCC target`: its inline functions must be
// compiled for the baseline ISA in every translation unit (one definition per symbol).
#pragma once
#include "cpu/parallel_region.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <string_view>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/som.h"

// lanes_t<double> is a 64-byte vector: GCC notes that passing it by value would follow a
// different ABI under AVX-512. These helpers are inline and compiled for the baseline ISA
// in every translation unit, so every caller sees the same convention.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "cpu/simd.h"

namespace genkernels::som::cpu {

// 64-byte aligned scratch array (packed weight panels are read with aligned vector loads).
template <typename T>
struct AlignedBuffer {
  struct Free {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<T[], Free> data;
  explicit AlignedBuffer(int64_t n)
      : data(static_cast<T*>(::operator new[](sizeof(T) * std::max<int64_t>(n, 1), std::align_val_t(64)))) {}
  T* get() const { return data.get(); }
};

// Lanes of the fixed-order reductions below. Every sum over D runs as kLanes interleaved
// partial sums (lane l takes features d = l mod kLanes) combined by one fixed tree, written
// with GCC vector types so it compiles to SIMD in every translation unit while the
// arithmetic per lane stays the same: a pair's distance is bit-identical in every kernel
// that calls these (the recheck of the fast BMU path and the direct path must agree on
// duplicated nodes to keep ties exact), and independent of the thread count.
constexpr int kLanes = 8;

template <typename T>
using lanes_t = genkernels::cpu::simd_t<T, kLanes>;

template <typename T>
inline lanes_t<T> load_lanes(const T* p) {
  return genkernels::cpu::simd_load<lanes_t<T>>(p);
}

template <typename T>
inline void store_lanes(T* p, lanes_t<T> v) {
  genkernels::cpu::simd_store(p, v);
}

// The first n (< kLanes) features, the rest zero. With AVX2 (the x86 build's baseline) by
// masked loads, which read no lane past n: filling the vector lane by lane made GCC store
// the lanes one at a time and reload the vector whole, a store-forwarding stall in every
// tail of a sum over D -- 34 ns a row of som_bmu at K = 112, D = 25 (against D = 24) on a
// 2-core AMD EPYC. The lanes hold the same values either way.
template <typename T>
inline lanes_t<T> load_lanes_partial(const T* p, int64_t n) {
  lanes_t<T> v = {};
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 r = _mm256_maskload_ps(p, mask);
    __builtin_memcpy(&v, &r, sizeof(v));
    return v;
  } else if constexpr (std::is_same_v<T, double>) {
    const __m256i count = _mm256_set1_epi64x(n);
    const __m256d lo = _mm256_maskload_pd(p, _mm256_cmpgt_epi64(count, _mm256_setr_epi64x(0, 1, 2, 3)));
    __builtin_memcpy(&v, &lo, sizeof(lo));
    if (n > 4) {
      const __m256d hi = _mm256_maskload_pd(p + 4, _mm256_cmpgt_epi64(count, _mm256_setr_epi64x(4, 5, 6, 7)));
      __builtin_memcpy(reinterpret_cast<char*>(&v) + sizeof(hi), &hi, sizeof(hi));
    }
    return v;
  }
#endif
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
  return v;
}

template <typename T>
inline T combine_lanes(lanes_t<T> a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// combine_lanes of eight lane vectors at once: r[i] = combine_lanes(a[i]), the same
// addition tree done with shuffles across vectors instead of per-vector extracts.
template <typename T>
inline lanes_t<T> combine_lanes_x8(const lanes_t<T>* a) {
  auto pair_sum = [](lanes_t<T> u, lanes_t<T> v) {
    return __builtin_shufflevector(u, v, 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(u, v, 1, 3, 5, 7, 9, 11, 13, 15);
  };
  return pair_sum(pair_sum(pair_sum(a[0], a[1]), pair_sum(a[2], a[3])),
                  pair_sum(pair_sum(a[4], a[5]), pair_sum(a[6], a[7])));
}

template <typename T>
inline lanes_t<T> abs_lanes(lanes_t<T> a) {
  return a < T(0) ? -a : a;
}

// Lane partial sums of sum_d (x_d - w_d)^2 (combine_lanes gives the sum).
template <typename T>
inline lanes_t<T> squared_distance_lanes(const T* x, const T* w, int64_t d_features) {
  lanes_t<T> acc = {};
  int64_t d = 0;
  for (; d + kLanes <= d_features; d += kLanes) {
    const lanes_t<T> t = load_lanes(x + d) - load_lanes(w + d);
    acc += t * t;
  }
  if (d < d_features) {
    const lanes_t<T> t = load_lanes_partial(x + d, d_features - d) - load_lanes_partial(w + d, d_features - d);
    acc += t * t;
  }
  return acc;
}

// sum_d (x_d - w_d)^2
template <typename T>
inline T squared_distance(const T* x, const T* w, int64_t d_features) {
  return combine_lanes<T>(squared_distance_lanes(x, w, d_features));
}

// sum_d x_d * w_d
template <typename T>
inline T dot(const T* x, const T* w, int64_t d_features) {
  lanes_t<T> acc = {};
  int64_t d = 0;
  for (; d + kLanes <= d_features; d += kLanes) acc += load_lanes(x + d) * load_lanes(w + d);
  if (d < d_features) acc += load_lanes_partial(x + d, d_features - d) * load_lanes_partial(w + d, d_features - d);
  return combine_lanes<T>(acc);
}

// sum_d |x_d - w_d|
template <typename T>
inline T abs_distance_sum(const T* x, const T* w, int64_t d_features) {
  lanes_t<T> acc = {};
  int64_t d = 0;
  for (; d + kLanes <= d_features; d += kLanes) acc += abs_lanes<T>(load_lanes(x + d) - load_lanes(w + d));
  if (d < d_features)
    acc += abs_lanes<T>(load_lanes_partial(x + d, d_features - d) - load_lanes_partial(w + d, d_features - d));
  return combine_lanes<T>(acc);
}

// max_d |x_d - w_d| (0 for D = 0, as the reference)
template <typename T>
inline T abs_distance_max(const T* x, const T* w, int64_t d_features) {
  lanes_t<T> acc = {};
  int64_t d = 0;
  for (; d + kLanes <= d_features; d += kLanes) {
    const lanes_t<T> t = abs_lanes<T>(load_lanes(x + d) - load_lanes(w + d));
    acc = t > acc ? t : acc;
  }
  if (d < d_features) {
    const lanes_t<T> t =
        abs_lanes<T>(load_lanes_partial(x + d, d_features - d) - load_lanes_partial(w + d, d_features - d));
    acc = t > acc ? t : acc;
  }
  T m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, acc[l]);
  return m;
}

// exp for the neighbourhood of a whole map, branch-free so loops over nodes vectorise
// (a scalar libm call per node costs as much as a node's update). float: Cephes' expf
// polynomial on [-ln2/2, ln2/2] with 2^n scaling, within 2 ulp of std::exp on
// [-87.3, 88.3]; below, 0 (subnormal results: the online kernel flushes them anyway).
// The neighbourhoods only take arguments <= 0. double: std::exp.
struct VectorExp {
  [[gnu::always_inline]] float operator()(float x) const {
    const float xc = std::min(std::max(x, -87.33654f), 88.3762626647949f);
    const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
    const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * (r * r) + r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    return x < -87.33654f ? 0.0f : y * scale;
  }
  double operator()(double x) const { return std::exp(x); }
};

// Ascending order of (distance, node index) with NaN after every number: torch.sort's
// stable ascending order, which the reference uses.
template <typename T>
inline bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return nb;
  if (!na && a != b) return a < b;
  return ia < ib;
}

// The k best of `values` (K of them, node index = position) into idx/out, ascending.
// `order` is scratch of K entries. Small k: one pass with a sorted insertion list; large
// k: a partial sort of the node indices.
template <typename T>
inline void select_topk(const T* values, int64_t n_nodes, int64_t k, int64_t* idx, T* out,
                        std::vector<int64_t>& order) {
  if (k <= 32) {
    int64_t n = 0;
    for (int64_t j = 0; j < n_nodes; ++j) {
      const T v = values[j];
      if (n == k && !ranks_before(v, j, out[k - 1], idx[k - 1])) continue;
      int64_t pos = n < k ? n++ : k - 1;
      while (pos > 0 && ranks_before(v, j, out[pos - 1], idx[pos - 1])) {
        out[pos] = out[pos - 1];
        idx[pos] = idx[pos - 1];
        --pos;
      }
      out[pos] = v;
      idx[pos] = j;
    }
    return;
  }
  order.resize(n_nodes);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return ranks_before(values[a], a, values[b], b);
  });
  for (int64_t i = 0; i < k; ++i) {
    idx[i] = order[i];
    out[i] = values[order[i]];
  }
}

// Exact euclidean top-k of one row against every node (sqrt of the direct sum of squares):
// the fallback of the fast path and the direct path's kernel. `scratch` holds K values.
template <typename T>
inline void exact_euclidean_row(const T* x, const T* w, int64_t n_nodes, int64_t d_features,
                                int64_t k, int64_t* idx, T* out, std::vector<T>& scratch,
                                std::vector<int64_t>& order) {
  scratch.resize(n_nodes);
  for (int64_t j = 0; j < n_nodes; ++j) scratch[j] = std::sqrt(squared_distance(x, w + j * d_features, d_features));
  select_topk(scratch.data(), n_nodes, k, idx, out, order);
}

// Largest k served by the fused euclidean micro-kernel; beyond it the direct path runs
// (its output is a large part of an (N, K) matrix anyway).
constexpr int64_t kFastMaxK = 32;

// Candidate list of one row for the euclidean fast paths (the micro-kernel in
// som_bmu_kernel.h and the BLAS-tiled path in som.cpp): expanded distances
// e_j = |w_j|^2 - 2 x.w_j are pushed in increasing node order and every node whose e is
// within `margin` of the k-th best e is kept -- a superset of the true top k, decided
// afterwards by finish_candidates on exact sums of squares.
template <typename T>
struct Candidates {
  static constexpr int kMax = int(kFastMaxK) + 16;
  T val[kMax + 1];
  int64_t idx[kMax + 1];
  int n;
  int k;
  int cap;
  T margin;
  T thr;  // admit e <= thr; -inf once overflowed (nothing passes)
  bool overflow;

  void reset(int k_, T margin_) {
    n = 0;
    k = k_;
    cap = k_ + 16;
    margin = margin_;
    thr = std::numeric_limits<T>::infinity();
    overflow = false;
  }

  // Nodes arrive in increasing index order, so equal values keep index order.
  void push(T v, int64_t j) {
    if (!(v <= thr)) return;
    int pos = n;
    while (pos > 0 && val[pos - 1] > v) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = v;
    idx[pos] = j;
    ++n;
    if (n >= k) {
      thr = val[k - 1] + margin;
      while (n > k && val[n - 1] > thr) --n;
    }
    if (n > cap) {
      overflow = true;
      thr = -std::numeric_limits<T>::infinity();
    }
  }
};

// The candidate margin per unit of |x|^2 + max_j |w_j|^2: 3 (D + 8) u. The expansion's
// absolute error is at most about (D + 4) u (|x|^2 + |w_j|^2) for ANY summation order of
// the dot product (blocked, FMA, split over threads), so the same margin covers the
// micro-kernel and a BLAS GEMM.
template <typename T>
inline T euclidean_margin_scale(int64_t d_features) {
  return T(3) * T(d_features + 8) * (std::numeric_limits<T>::epsilon() / 2);
}

// The result of one row from its candidate list: exact distances (sqrt of the direct sum
// of squares) of the candidates ordered by (distance, node index); a list that overflowed
// or holds fewer than k finite values (NaN/inf data) is redone exactly over all nodes.
template <typename T>
inline void finish_candidates(const T* xr, const T* w, int64_t n_nodes, int64_t d_features, int64_t k,
                              Candidates<T>& c, int64_t* ri, T* rd, std::vector<T>& scratch,
                              std::vector<int64_t>& order) {
  if (c.overflow || c.n < k) {
    exact_euclidean_row(xr, w, n_nodes, d_features, k, ri, rd, scratch, order);
    return;
  }
  T exact[Candidates<T>::kMax + 1];
  for (int q = 0; q < c.n; ++q) exact[q] = std::sqrt(squared_distance(xr, w + c.idx[q] * d_features, d_features));
  // Insertion sort of the few candidates by (exact distance, index).
  for (int q = 1; q < c.n; ++q) {
    const T v = exact[q];
    const int64_t j = c.idx[q];
    int pos = q;
    while (pos > 0 && ranks_before(v, j, exact[pos - 1], c.idx[pos - 1])) {
      exact[pos] = exact[pos - 1];
      c.idx[pos] = c.idx[pos - 1];
      --pos;
    }
    exact[pos] = v;
    c.idx[pos] = j;
  }
  for (int64_t q = 0; q < k; ++q) {
    ri[q] = c.idx[q];
    rd[q] = exact[q];
  }
}

// Row sources of the fused euclidean micro-kernel (som_bmu_kernel.h): block(r0, rows, buf)
// returns samples r0 .. r0 + rows - 1 as contiguous rows of D features -- in place, or
// gathered into buf (rows x D) -- and out_row(r) is the output row of sample r.
template <typename T>
struct DenseRows {
  const T* x;  // (n, D) contiguous
  int64_t D;
  const T* block(int64_t r0, int, T*) const { return x + r0 * D; }
  int64_t out_row(int64_t r) const { return r; }
};

// Listed patches of contiguous images (N, C, H, W) as rows: sample r is the kh x kw patch
// whose pixel (0, 0) of channel 0 is images[corners[r]]; its D = C kh kw features are
// (c, a, b) in torch's unfold order, and its result goes to output row ids[r]. A block's
// patches are gathered kw contiguous pixels at a time into the block buffer: no im2col
// matrix exists (som_patch_bmu, som_patch.cpp).
template <typename T>
struct PatchRows {
  const T* images;
  int64_t plane;  // H W: from one channel to the next
  int64_t width;  // W: from one pixel row to the next
  int64_t channels, kh, kw;
  const int64_t* corners;
  const int64_t* ids;

  int64_t out_row(int64_t r) const { return ids[r]; }

  const T* block(int64_t r0, int rows, T* buf) const {
    T* dst = buf;
    for (int q = 0; q < rows; ++q) {
      const T* base = images + corners[r0 + q];
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t a = 0; a < kh; ++a) {
          const T* src = base + c * plane + a * width;
          for (int64_t b = 0; b < kw; ++b) dst[b] = src[b];
          dst += kw;
        }
    }
    return buf;
  }
};

// Fused euclidean BMU (see som_bmu_kernel.h): indices (N, k) and exact distances (N, k)
// in the accumulation type.
void bmu_euclidean_avx2(const float* x, int64_t n, const float* w, int64_t n_nodes, int64_t d, int64_t k,
                        int64_t* idx, float* dist);
void bmu_euclidean_avx2(const double* x, int64_t n, const double* w, int64_t n_nodes, int64_t d, int64_t k,
                        int64_t* idx, double* dist);
void bmu_euclidean_avx512(const float* x, int64_t n, const float* w, int64_t n_nodes, int64_t d, int64_t k,
                          int64_t* idx, float* dist);
void bmu_euclidean_avx512(const double* x, int64_t n, const double* w, int64_t n_nodes, int64_t d, int64_t k,
                          int64_t* idx, double* dist);
// The same over patches of images (PatchRows): n rows of d = C kh kw features, written to
// the output rows of their patch ids.
void bmu_patch_euclidean_avx2(const PatchRows<float>& patches, int64_t n, const float* w, int64_t n_nodes, int64_t d,
                              int64_t k, int64_t* idx, float* dist);
void bmu_patch_euclidean_avx2(const PatchRows<double>& patches, int64_t n, const double* w, int64_t n_nodes,
                              int64_t d, int64_t k, int64_t* idx, double* dist);
void bmu_patch_euclidean_avx512(const PatchRows<float>& patches, int64_t n, const float* w, int64_t n_nodes,
                                int64_t d, int64_t k, int64_t* idx, float* dist);
void bmu_patch_euclidean_avx512(const PatchRows<double>& patches, int64_t n, const double* w, int64_t n_nodes,
                                int64_t d, int64_t k, int64_t* idx, double* dist);
// The fused update + next-distance pass of som_online for fp32 euclidean maps (see
// som_online_avx512.cpp): rows w[0..K) take w += eh[j] (s - w) (no update where s is
// nullptr), then key[j] = sum_d (next_d - w_d)^2. `next` must not be nullptr.
void online_pass_euclidean_avx512(float* w, int64_t K, int64_t D, const float* s, const float* eh,
                                  const float* next, float* key);
// Whether each kernel was compiled in and runs on this CPU.
bool have_avx2_kernel();
bool have_avx512_kernel();

// Whether the AVX-512 micro-kernel runs: compiled in, supported by this CPU and not
// overridden by GENKERNELS_CPU_ISA=avx2 (read per call, so tests can cover both kernels in
// one process).
inline bool use_avx512_kernel() {
  const char* isa = std::getenv("GENKERNELS_CPU_ISA");
  return have_avx512_kernel() && !(isa != nullptr && std::string_view(isa) == "avx2");
}

// Threads a BMU search of n rows against K nodes of D features pays for: one per
// kBmuMinWorkPerThread multiply-adds (a team costs tens of microseconds to wake on 2 cores,
// and a time slice beside a busy process; parallel_region.h applies the back-off).
constexpr int64_t kBmuMinWorkPerThread = int64_t(1) << 19;

inline int64_t bmu_threads_for(int64_t n, int64_t K, int64_t D) {
  return std::max<int64_t>(1, n * K * std::max<int64_t>(D, 1) / kBmuMinWorkPerThread);
}

}  // namespace genkernels::som::cpu
