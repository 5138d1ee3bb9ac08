// CPU kernel of the RBM Gibbs half-step (schema in csrc/genkernels.cpp, spec in
// genkernels/boltzmann/rbm_reference.py):
//
//   rbm_half_step  the output (B, n_out) is cut into tiles of at most kTileRows rows and a
//                  column block per thread when there are fewer row tiles than threads.
//                  Each OpenMP thread takes whole tiles: one single-threaded at::addmm
//                  (BLAS runs serially inside a parallel region) writes bias + s @ W[:, cols]
//                  into the thread's tile buffer, at::sigmoid_ (ATen's vectorised kernel)
//                  turns it into probabilities, and while the tile is in cache the epilogue
//                  draws the Philox uniforms of its elements (8 counters = 32 uniforms at a
//                  time with AVX2), compares and stores the uint8 samples (and the
//                  probabilities if asked).
//
//   rbm_half_step_binary  the same half-step on 0/1 states: the product is a sum of gathered
//                  weight rows (W's rows for visible -> hidden, the rows of a transposed copy
//                  of W, made once per call, for hidden -> visible). Rows are split between
//                  threads (parallel_for of parallel_region.h); each thread takes tiles of kBinaryTileRows
//                  rows: per row it lists the active inputs (ascending), sums bias + those
//                  rows into its tile buffer (AVX-512: 256 columns in 16 registers at a time,
//                  each weight row read once per 256-column block), then the tile gets the
//                  dense path's epilogue (at::sigmoid_, the same Philox draws), so its samples
//                  equal the dense op's wherever the pre-activations do.
//   rbm_pack_binary  x's uint8 copy if x is exactly binary (one parallel read).
//   rbm_binary_outer_add_  out += alpha * x^T h for 0/1 states x: row i of out gets alpha
//                  times the sum of the rows of h whose x[b, i] is 1 (each row of out read
//                  and written once; threads own disjoint blocks of out's rows); and
//                  column_sums += sums_alpha * (the ones of each column of x), counted on the
//                  way (a separate x.sum(0, dtype=float) cost ~100 us a batch: a cast and a
//                  sum of 100 x 784).
//
// Uniform of element (b, j): word j % 4 of counter offset + b * Q + j / 4, Q = ceil(n_out / 4)
// (uint64 wrap), converted to a float in [0, 1) as tl.rand4x -- csrc/common/philox.h,
// bit-identical to the reference; the sample is u < P with P in the accumulation dtype. Four
// units per Philox call: on 2 cores the 784-unit visible half-step of a 100-row batch spent
// about as long in one call per unit as in its matrix product.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include "parallel_region.h"
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/philox.h"

namespace genkernels::boltzmann::cpu {
namespace {

// Rows per tile: a (256, 256) fp32 tile buffer is 256 KiB, an L2's worth.
constexpr int64_t kTileRows = 256;
// Column blocks are multiples of this (whole cache lines of fp32 and of the uint8 samples).
constexpr int64_t kColumnQuantum = 16;
// Multiply-adds (plus one Philox draw per output) a thread must get before a second one
// joins: below it an OpenMP team costs more than it saves (a fork and a barrier are tens of
// microseconds, far more on a loaded machine, where a tiny half-step took 25 ms with 2
// threads and 0.03 ms with one).
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;
// rbm_pcd_step_'s cost model: batch x visible x hidden below this runs on one thread
// (tests/test_rbm_kernels.py mirrors it).
constexpr int64_t kSoloPcdWork = int64_t(1) << 21;

#if defined(__AVX2__)
// High and low 32 bits of the eight products a[l] * m (m a broadcast uint32 constant).
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                       // lanes 0, 2, 4, 6 as 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The 32 uniforms of counters counter + l, l = 0..7: Philox4x32-10 on eight counters at
// once (the rounds of random::philox4x32), all four words converted as tl.rand4x does;
// u[4 l + k] = word k of counter + l.
inline void uniform32(uint64_t seed, uint64_t counter, float* u) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter))), lane);
  // carry into the high word where the low word wrapped (c0 < lane, unsigned)
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lane, sign), _mm256_xor_si256(c0, sign));
  __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter >> 32))), carry);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(random::kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(random::kPhiloxRoundB));
  for (int r = 0; r < random::kPhiloxRounds; ++r) {
    __m256i hi_b, lo_b, hi_a, lo_a;
    mulhilo8(c2, round_b, hi_b, lo_b);
    mulhilo8(c0, round_a, hi_a, lo_a);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += random::kPhiloxKeyA;
    k1 += random::kPhiloxKeyB;
  }
  // uint_to_uniform_float: as int32, negatives folded with ~x (x ^ (x >> 31)), times the scale
  const __m256 scale = _mm256_set1_ps(random::kUint32ToUniformScale);
  alignas(32) float words[4][8];
  const __m256i c[4] = {c0, c1, c2, c3};
  for (int k = 0; k < 4; ++k) {
    const __m256i folded = _mm256_xor_si256(c[k], _mm256_srai_epi32(c[k], 31));
    _mm256_store_ps(words[k], _mm256_mul_ps(_mm256_cvtepi32_ps(folded), scale));
  }
  for (int l = 0; l < 8; ++l)
    for (int k = 0; k < 4; ++k) u[4 * l + k] = words[k][l];
}
#endif

// samples[j] = (u_j < p[j]) for j < n, u_j = word j % 4 of randint4x(seed, counter + j / 4) as
// a tl.rand uniform; probs_out (if not null) = p.
template <typename T>
void bernoulli_row(const T* __restrict__ p, int64_t n, uint64_t seed, uint64_t counter,
                   uint8_t* __restrict__ samples, T* __restrict__ probs_out) {
  int64_t j = 0;
#if defined(__AVX2__)
  alignas(32) float u[32];
  for (; j + 32 <= n; j += 32) {
    uniform32(seed, counter + static_cast<uint64_t>(j / 4), u);
    for (int l = 0; l < 32; ++l) samples[j + l] = static_cast<T>(u[l]) < p[j + l];
  }
#endif
  for (; j < n; j += 4) {
    const random::Uint4 r = random::randint4x(seed, counter + static_cast<uint64_t>(j / 4));
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
    for (int64_t k = 0; k < 4 && j + k < n; ++k)
      samples[j + k] = static_cast<T>(random::uint_to_uniform_float(words[k])) < p[j + k];
  }
  if (probs_out != nullptr) std::copy(p, p + n, probs_out);
}

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 reports the _mm512_undefined_* placeholders inside the shift intrinsics' headers as
// (possibly) uninitialised; they are not read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define GK_AVX512 __attribute__((target("avx512f")))
// AVX-512 (run-time choice): 16 counters = 64 uniforms per Philox pass, the same words as
// uniform32. Measured on 2 cores: the 784-unit half-step's draws were about a fifth of the
// PCD epoch's time beyond its matrix products with 8 lanes.
GK_AVX512 inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// Philox4x32-10 on the 16 counters counter + l: c[k] lane l = word k of counter + l.
GK_AVX512 inline void philox16(uint64_t seed, uint64_t counter, __m512i* c) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter))), lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lane);  // the low word wrapped
  const __m512i high = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter >> 32)));
  __m512i c1 = _mm512_mask_add_epi32(high, carry, high, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m512i round_a = _mm512_set1_epi32(static_cast<int>(random::kPhiloxRoundA));
  const __m512i round_b = _mm512_set1_epi32(static_cast<int>(random::kPhiloxRoundB));
  for (int r = 0; r < random::kPhiloxRounds; ++r) {
    __m512i hi_b, lo_b, hi_a, lo_a;
    mulhilo16(c2, round_b, hi_b, lo_b);
    mulhilo16(c0, round_a, hi_a, lo_a);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi_b, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi_a, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += random::kPhiloxKeyA;
    k1 += random::kPhiloxKeyB;
  }
  c[0] = c0, c[1] = c1, c[2] = c2, c[3] = c3;
}

// uint_to_uniform_float on 16 words (as uniform32).
GK_AVX512 inline __m512 to_uniform16(__m512i words) {
  const __m512i folded = _mm512_xor_si512(words, _mm512_srai_epi32(words, 31));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(random::kUint32ToUniformScale));
}

GK_AVX512 inline void uniform64(uint64_t seed, uint64_t counter, float* u) {
  __m512i c[4];
  philox16(seed, counter, c);
  const __m512 scale = _mm512_set1_ps(random::kUint32ToUniformScale);
  alignas(64) float words[4][16];
  for (int k = 0; k < 4; ++k) {
    const __m512i folded = _mm512_xor_si512(c[k], _mm512_srai_epi32(c[k], 31));
    _mm512_store_ps(words[k], _mm512_mul_ps(_mm512_cvtepi32_ps(folded), scale));
  }
  for (int l = 0; l < 16; ++l)
    for (int k = 0; k < 4; ++k) u[4 * l + k] = words[k][l];
}

// The 64 samples u < p[0..63] of counters counter + l, l = 0..15, for fp32 p, all in
// registers: the words of the 16 counters are transposed into element order (element
// 4 l + k = word k of counter + l) with two rounds of unpacks and two of 128-bit block
// shuffles, converted, compared and narrowed to bytes. Measured on 2 cores: the scalar
// transpose-and-compare loop it replaces took about as long as the Philox rounds.
GK_AVX512 inline void bernoulli64_f32(uint64_t seed, uint64_t counter, const float* __restrict__ p,
                                      uint8_t* __restrict__ samples) {
  __m512i c[4];
  philox16(seed, counter, c);
  // per 128-bit block q: r[m] = the four words of counter 4 q + m
  const __m512i t0 = _mm512_unpacklo_epi32(c[0], c[1]), t1 = _mm512_unpackhi_epi32(c[0], c[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(c[2], c[3]), t3 = _mm512_unpackhi_epi32(c[2], c[3]);
  const __m512i r0 = _mm512_unpacklo_epi64(t0, t2), r1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i r2 = _mm512_unpacklo_epi64(t1, t3), r3 = _mm512_unpackhi_epi64(t1, t3);
  // e[n] = block n of r0, r1, r2, r3: counters 4 n .. 4 n + 3, i.e. elements 16 n .. 16 n + 15
  const __m512i a = _mm512_shuffle_i32x4(r0, r1, 0x44), b = _mm512_shuffle_i32x4(r2, r3, 0x44);
  const __m512i cc = _mm512_shuffle_i32x4(r0, r1, 0xEE), d = _mm512_shuffle_i32x4(r2, r3, 0xEE);
  const __m512i e[4] = {_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD),
                        _mm512_shuffle_i32x4(cc, d, 0x88), _mm512_shuffle_i32x4(cc, d, 0xDD)};
  const __m512i one = _mm512_set1_epi32(1);
  for (int n = 0; n < 4; ++n) {
    const __mmask16 draw = _mm512_cmp_ps_mask(to_uniform16(e[n]), _mm512_loadu_ps(p + 16 * n), _CMP_LT_OQ);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(samples + 16 * n),
                     _mm512_cvtepi32_epi8(_mm512_maskz_mov_epi32(draw, one)));
  }
}

// bernoulli_row with 64 elements per Philox pass; the remainder (< 64, starting on a
// counter) goes to the AVX2 / scalar loop.
template <typename T>
GK_AVX512 void bernoulli_row_avx512(const T* __restrict__ p, int64_t n, uint64_t seed, uint64_t counter,
                                    uint8_t* __restrict__ samples, T* __restrict__ probs_out) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 64 <= n; j += 64) bernoulli64_f32(seed, counter + static_cast<uint64_t>(j / 4), p + j, samples + j);
  } else {
    alignas(64) float u[64];
    for (; j + 64 <= n; j += 64) {
      uniform64(seed, counter + static_cast<uint64_t>(j / 4), u);
      for (int l = 0; l < 64; ++l) samples[j + l] = static_cast<T>(u[l]) < p[j + l];
    }
  }
  bernoulli_row<T>(p + j, n - j, seed, counter + static_cast<uint64_t>(j / 4), samples + j, nullptr);
  if (probs_out != nullptr) std::copy(p, p + n, probs_out);
}

// AVX-512 where the CPU has it, unless GENKERNELS_CPU_ISA=avx2 (read per call: the tests
// cover both paths on one machine).
bool use_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  const char* isa = std::getenv("GENKERNELS_CPU_ISA");
  return has && !(isa != nullptr && std::string_view(isa) == "avx2");
}
#pragma GCC diagnostic pop
#else
bool use_avx512() { return false; }
template <typename T>
void bernoulli_row_avx512(const T*, int64_t, uint64_t, uint64_t, uint8_t*, T*) {}
#endif

// Where at::parallel_for may split rows: the multiply-adds one thread must get, as
// kMinWorkPerThread above.
int64_t row_grain(int64_t work_per_row) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_row));
}

template <typename T>
void half_step(const at::Tensor& s, const at::Tensor& w, const at::Tensor& bias, uint64_t seed, uint64_t offset,
               bool transpose, at::Tensor& samples, at::Tensor* probs) {
  const int64_t B = s.size(0), n_out = samples.size(1);
  // W as (n_in, n_out), a BLAS-compatible view either way (transposed storage for transpose)
  const at::Tensor wv = transpose ? w.t() : w;
  const int64_t work = B * n_out * (s.size(1) + 64);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), work / kMinWorkPerThread));
  const int64_t rows_per_tile = std::min(kTileRows, std::max<int64_t>(1, (B + threads - 1) / threads));
  const int64_t row_tiles = (B + rows_per_tile - 1) / rows_per_tile;
  const int64_t col_blocks_wanted = std::max<int64_t>(1, std::min((threads + row_tiles - 1) / row_tiles,
                                                                  (n_out + kColumnQuantum - 1) / kColumnQuantum));
  int64_t cols_per_tile = (n_out + col_blocks_wanted - 1) / col_blocks_wanted;
  cols_per_tile = std::max<int64_t>(1, (cols_per_tile + kColumnQuantum - 1) / kColumnQuantum * kColumnQuantum);
  const int64_t col_tiles = (n_out + cols_per_tile - 1) / cols_per_tile;
  const int64_t n_tiles = row_tiles * col_tiles;
  const int64_t counters_per_row = (n_out + 3) / 4;  // c0 is a multiple of 4: tiles start on a counter
  const auto row_sampler = use_avx512() ? &bernoulli_row_avx512<T> : &bernoulli_row<T>;
  uint8_t* out = samples.data_ptr<uint8_t>();
  T* probs_out = probs != nullptr ? probs->data_ptr<T>() : nullptr;
  if (n_tiles == 1) {
    // one tile (small batches): no views and no thread team; the probabilities are
    // computed in the output when it is asked for (no copy) -- about 4 ATen calls fewer.
    // Like a one-thread region of parallel_chunks, its BLAS call and ATen's start no team
    // (beside a busy process a 10-row step otherwise waited ~8 ms for MKL's second thread).
    genkernels::cpu::blas::Sequential sequential_blas;
    genkernels::cpu::SoloThreads solo_threads;
    at::Tensor tile = probs != nullptr ? *probs : at::empty({B, n_out}, w.options());
    at::addmm_out(tile, bias, s, wv);
    tile.sigmoid_();
    const T* p = tile.data_ptr<T>();
    for (int64_t r = 0; r < B; ++r)
      row_sampler(p + r * n_out, n_out, seed, offset + static_cast<uint64_t>(r) * static_cast<uint64_t>(counters_per_row),
                  out + r * n_out, nullptr);
    return;
  }
  const int team = genkernels::cpu::team_size(threads);
  std::vector<at::Tensor> buffers(team);
  genkernels::cpu::parallel_chunks(n_tiles, team, [&](int64_t t, int slot) {
    at::Tensor& buf = buffers[slot];
    if (!buf.defined()) buf = at::empty({std::min(rows_per_tile, B), std::min(cols_per_tile, n_out)}, w.options());
    const int64_t r0 = (t / col_tiles) * rows_per_tile, c0 = (t % col_tiles) * cols_per_tile;
    const int64_t rows = std::min(rows_per_tile, B - r0), cols = std::min(cols_per_tile, n_out - c0);
    at::Tensor tile = buf.narrow(0, 0, rows).narrow(1, 0, cols);
    at::addmm_out(tile, bias.narrow(0, c0, cols), s.narrow(0, r0, rows), wv.narrow(1, c0, cols));
    tile.sigmoid_();
    const T* p = tile.data_ptr<T>();
    const int64_t ld = tile.stride(0);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = r0 + i;
      const uint64_t counter = offset + static_cast<uint64_t>(r) * static_cast<uint64_t>(counters_per_row) +
                               static_cast<uint64_t>(c0 / 4);
      row_sampler(p + i * ld, cols, seed, counter, out + r * n_out + c0,
                  probs_out != nullptr ? probs_out + r * n_out + c0 : nullptr);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rbm_half_step_cpu(const at::Tensor& s, const at::Tensor& w,
                                                     const at::Tensor& bias, int64_t seed, int64_t offset,
                                                     bool transpose, bool return_probs) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "rbm_half_step: w must be a contiguous 2-D float32/float64 tensor");
  const int64_t n_in = transpose ? w.size(1) : w.size(0), n_out = transpose ? w.size(0) : w.size(1);
  TORCH_CHECK(s.dim() == 2 && s.size(1) == n_in, "rbm_half_step: s must be (B, ", n_in, ")");
  TORCH_CHECK(s.scalar_type() == at::kByte || s.scalar_type() == w.scalar_type(),
              "rbm_half_step: s must be uint8 or w's dtype");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n_out && bias.scalar_type() == w.scalar_type(),
              "rbm_half_step: bias must be (", n_out, ",) in w's dtype");
  // the product reads states in the accumulation dtype: uint8 samples are widened once
  const at::Tensor sf = (s.scalar_type() == at::kByte ? s.to(w.scalar_type()) : s).contiguous();
  const at::Tensor b = bias.contiguous();
  const int64_t B = s.size(0);
  at::Tensor samples = at::empty({B, n_out}, s.options().dtype(at::kByte));
  at::Tensor probs = at::empty({return_probs ? B : 0, n_out}, w.options());
  if (B == 0 || n_out == 0) return {samples, probs};
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rbm_half_step_cpu", [&] {
    half_step<scalar_t>(sf, w, b, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), transpose, samples,
                        return_probs ? &probs : nullptr);
  });
  return {samples, probs};
}

// ---------------------------------------------------------------- binary states

// Rows of a binary half-step tile: 32 rows of 784 fp32 units are 100 KiB, an L2's share
// that the sigmoid and the draws read back while it is warm.
constexpr int64_t kBinaryTileRows = 32;
// Columns a gathered sum keeps in registers: 16 AVX-512 vectors of fp32.
constexpr int64_t kGatherColumns = 256;

// The indices i < n with s[i] != 0, ascending, into idx; returns how many. Branch-free: the
// states are random, a branch per element would mispredict at every other one.
template <typename S>
int64_t active_indices(const S* __restrict__ s, int64_t n, int32_t* __restrict__ idx) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    idx[count] = static_cast<int32_t>(i);
    count += s[i] != S(0);
  }
  return count;
}

// active_indices for uint8 states: 32 at a time, a movemask of the nonzero bytes and one
// step per set bit (about 4x faster than the branch-free loop at the RBM's densities).
int64_t active_indices(const uint8_t* __restrict__ s, int64_t n, int32_t* __restrict__ idx) {
  int64_t count = 0, i = 0;
#if defined(__AVX2__)
  const __m256i zero = _mm256_setzero_si256();
  for (; i + 32 <= n; i += 32) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    uint32_t mask = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, zero)));
    for (; mask != 0; mask &= mask - 1) idx[count++] = static_cast<int32_t>(i + __builtin_ctz(mask));
  }
#endif
  for (; i < n; ++i) {
    idx[count] = static_cast<int32_t>(i);
    count += s[i] != 0;
  }
  return count;
}

// out[c] = init[c] + sum_k rows[idx[k]][c] (ACCUMULATE false) or out[c] += alpha * sum_k
// rows[idx[k]][c] (ACCUMULATE true), for c < cols; rows[i] = base + i * ld. Portable loop:
// the sum lives in out (or in acc, a cols-long scratch row) and the compiler vectorises the
// column loop.
template <bool ACCUMULATE, typename T>
void gather_sum(const T* __restrict__ base, int64_t ld, const int32_t* __restrict__ idx, int64_t n_idx,
                const T* __restrict__ init, int64_t cols, T alpha, T* __restrict__ out, T* __restrict__ acc) {
  T* sum = ACCUMULATE ? acc : out;
  for (int64_t c = 0; c < cols; ++c) sum[c] = ACCUMULATE ? T(0) : init[c];
  for (int64_t k = 0; k < n_idx; ++k) {
    const T* __restrict__ row = base + static_cast<int64_t>(idx[k]) * ld;
    for (int64_t c = 0; c < cols; ++c) sum[c] += row[c];
  }
  if (ACCUMULATE)
    for (int64_t c = 0; c < cols; ++c) out[c] += alpha * sum[c];
}

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// gather_sum on NV <= 16 vectors of 16 fp32 columns held in registers; the last vector is
// masked to `last` columns (1..16).
template <int NV, bool ACCUMULATE>
GK_AVX512 inline void gather_block_avx512(const float* __restrict__ base, int64_t ld,
                                          const int32_t* __restrict__ idx, int64_t n_idx,
                                          const float* __restrict__ init, int64_t last, float alpha,
                                          float* __restrict__ out) {
  const __mmask16 tail = static_cast<__mmask16>((1u << last) - 1u);
  __m512 acc[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v)
    acc[v] = ACCUMULATE ? _mm512_setzero_ps()
                        : (v == NV - 1 ? _mm512_maskz_loadu_ps(tail, init + 16 * v) : _mm512_loadu_ps(init + 16 * v));
  for (int64_t k = 0; k < n_idx; ++k) {
    const float* __restrict__ row = base + static_cast<int64_t>(idx[k]) * ld;
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_loadu_ps(row + 16 * v));
    acc[NV - 1] = _mm512_add_ps(acc[NV - 1], _mm512_maskz_loadu_ps(tail, row + 16 * (NV - 1)));
  }
  const __m512 a = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
    __m512 r = acc[v];
    if (ACCUMULATE) r = _mm512_fmadd_ps(a, r, _mm512_maskz_loadu_ps(m, out + 16 * v));
    _mm512_mask_storeu_ps(out + 16 * v, m, r);
  }
}

template <bool ACCUMULATE, int... NV>
constexpr auto gather_block_table(std::integer_sequence<int, NV...>) {
  using Fn = void (*)(const float*, int64_t, const int32_t*, int64_t, const float*, int64_t, float, float*);
  return std::array<Fn, sizeof...(NV)>{&gather_block_avx512<NV + 1, ACCUMULATE>...};
}

// gather_sum for fp32 with AVX-512: column blocks of 256 (the last one narrower), each a
// pass over the index list with its sum in registers.
template <bool ACCUMULATE>
GK_AVX512 void gather_sum_avx512(const float* base, int64_t ld, const int32_t* idx, int64_t n_idx,
                                 const float* init, int64_t cols, float alpha, float* out) {
  static constexpr auto table = gather_block_table<ACCUMULATE>(std::make_integer_sequence<int, 16>());
  for (int64_t c0 = 0; c0 < cols; c0 += kGatherColumns) {
    const int64_t width = std::min(kGatherColumns, cols - c0);
    const int64_t nv = (width + 15) / 16;
    table[nv - 1](base + c0, ld, idx, n_idx, ACCUMULATE ? nullptr : init + c0, width - 16 * (nv - 1), alpha,
                  out + c0);
  }
}
#pragma GCC diagnostic pop
#endif

// Dense-path-compatible epilogue on a tile of pre-activations: sigmoid in place, then the
// Bernoulli draws of rows r0.. (the counter layout of half_step).
template <typename T>
void sample_tile(at::Tensor& tile, int64_t r0, int64_t n_out, uint64_t seed, uint64_t offset, uint8_t* out,
                 T* probs_out) {
  tile.sigmoid_();
  const auto row_sampler = use_avx512() ? &bernoulli_row_avx512<T> : &bernoulli_row<T>;
  const T* p = tile.data_ptr<T>();
  const uint64_t q = static_cast<uint64_t>((n_out + 3) / 4);
  for (int64_t i = 0; i < tile.size(0); ++i) {
    const int64_t r = r0 + i;
    row_sampler(p + i * n_out, n_out, seed, offset + static_cast<uint64_t>(r) * q, out + r * n_out,
                probs_out != nullptr ? probs_out + r * n_out : nullptr);
  }
}

// dst (cols, rows) = src (rows, cols)^T, both contiguous, in 16 x 16 tiles (a tile's
// source rows and destination rows stay in L1; ATen's strided copy took 120-150 us for
// the 784 x 256 fp32 weights on one thread, these tiles about a third of that).
template <typename T>
void transpose_rows(const T* __restrict__ src, int64_t rows, int64_t cols, T* __restrict__ dst) {
  constexpr int64_t kTile = 16;
  genkernels::cpu::parallel_for(0, (rows + kTile - 1) / kTile, row_grain(kTile * cols * 4), [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = t0 * kTile; r0 < std::min(rows, t1 * kTile); r0 += kTile) {
      const int64_t r1 = std::min(rows, r0 + kTile);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c1 = std::min(cols, c0 + kTile);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
      }
    }
  });
}

template <typename T, typename S>
void half_step_binary(const S* s, int64_t B, int64_t n_in, const T* w_rows, const T* bias, int64_t n_out,
                      uint64_t seed, uint64_t offset, uint8_t* out, T* probs_out, const at::TensorOptions& opts) {
  const bool avx512 = std::is_same_v<T, float> && use_avx512();
  // a row sums about a fifth of n_in weight rows (the data's density); its draws cost as
  // much as ~64 multiply-adds per unit (half_step's estimate)
  const int64_t work_per_row = n_out * (n_in / 5 + 64);
  genkernels::cpu::parallel_for(0, B, row_grain(work_per_row), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> idx(static_cast<size_t>(n_in));
    at::Tensor buf = at::empty({std::min(kBinaryTileRows, end - begin), n_out}, opts);
    T* pre = buf.data_ptr<T>();
    for (int64_t r0 = begin; r0 < end; r0 += kBinaryTileRows) {
      const int64_t rows = std::min(kBinaryTileRows, end - r0);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t n_idx = active_indices(s + (r0 + i) * n_in, n_in, idx.data());
#if defined(__x86_64__) && defined(__GNUC__)
        if constexpr (std::is_same_v<T, float>) {
          if (avx512) {
            gather_sum_avx512<false>(w_rows, n_out, idx.data(), n_idx, bias, n_out, 1.0f, pre + i * n_out);
            continue;
          }
        }
#endif
        gather_sum<false, T>(w_rows, n_out, idx.data(), n_idx, bias, n_out, T(1), pre + i * n_out, nullptr);
      }
      at::Tensor tile = buf.narrow(0, 0, rows);
      sample_tile<T>(tile, r0, n_out, seed, offset, out, probs_out);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rbm_half_step_binary_cpu(const at::Tensor& s, const at::Tensor& w,
                                                            const at::Tensor& bias, int64_t seed, int64_t offset,
                                                            bool transpose, bool return_probs) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "rbm_half_step_binary: w must be a contiguous 2-D float32/float64 tensor");
  const int64_t n_in = transpose ? w.size(1) : w.size(0), n_out = transpose ? w.size(0) : w.size(1);
  TORCH_CHECK(s.dim() == 2 && s.size(1) == n_in, "rbm_half_step_binary: s must be (B, ", n_in, ")");
  TORCH_CHECK(s.scalar_type() == at::kByte || s.scalar_type() == w.scalar_type(),
              "rbm_half_step_binary: s must be uint8 or w's dtype");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n_out && bias.scalar_type() == w.scalar_type(),
              "rbm_half_step_binary: bias must be (", n_out, ",) in w's dtype");
  const at::Tensor sc = s.contiguous(), b = bias.contiguous();
  const int64_t B = s.size(0);
  at::Tensor samples = at::empty({B, n_out}, s.options().dtype(at::kByte));
  at::Tensor probs = at::empty({return_probs ? B : 0, n_out}, w.options());
  if (B == 0 || n_out == 0) return {samples, probs};
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rbm_half_step_binary_cpu", [&] {
    // the weight rows the sums gather: W's rows, or those of W^T (one transposed copy)
    at::Tensor w_rows = w;
    if (transpose) {
      w_rows = at::empty({w.size(1), w.size(0)}, w.options());
      transpose_rows<scalar_t>(w.data_ptr<scalar_t>(), w.size(0), w.size(1), w_rows.data_ptr<scalar_t>());
    }
    scalar_t* probs_out = return_probs ? probs.data_ptr<scalar_t>() : nullptr;
    const auto run = [&](const auto* states) {
      half_step_binary<scalar_t>(states, B, n_in, w_rows.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n_out,
                                 static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                 samples.data_ptr<uint8_t>(), probs_out, w.options());
    };
    if (sc.scalar_type() == at::kByte)
      run(sc.data_ptr<uint8_t>());
    else
      run(sc.data_ptr<scalar_t>());
  });
  return {samples, probs};
}

template <typename T, typename S>
void binary_outer_add(T* out, const S* x, const T* h, int64_t B, int64_t n_in, int64_t n_out, T alpha,
                      T* column_sums, T sums_alpha) {
  const bool avx512 = std::is_same_v<T, float> && use_avx512();
  // a row of out sums about a fifth of the B rows of h (the data's density), and the
  // thread scans its columns of x
  const int64_t work_per_row = n_out * (B / 5 + 1) + B;
  genkernels::cpu::parallel_for(0, n_in, row_grain(work_per_row), [&](int64_t begin, int64_t end) {
    const int64_t width = end - begin;
    // bit b of the row mask of input i (words_per_input words): x[b, begin + i] != 0, set
    // from each row's list of active inputs (a step per one, not per entry; the masks stay
    // in L1 where (i, B) index lists would scatter stores over L2)
    const int64_t words_per_input = (B + 63) / 64;
    std::vector<uint64_t> masks(static_cast<size_t>(width * words_per_input), 0);
    std::vector<int32_t> list(static_cast<size_t>(std::max(width, B)));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n_active = active_indices(x + b * n_in + begin, width, list.data());
      const uint64_t bit = uint64_t(1) << (b % 64);
      for (int64_t k = 0; k < n_active; ++k) masks[list[k] * words_per_input + b / 64] |= bit;
    }
    std::vector<T> acc(static_cast<size_t>(n_out));
    for (int64_t i = 0; i < width; ++i) {
      // the rows b of input i, ascending
      int64_t count = 0;
      for (int64_t word = 0; word < words_per_input; ++word)
        for (uint64_t m = masks[i * words_per_input + word]; m != 0; m &= m - 1)
          list[count++] = static_cast<int32_t>(word * 64 + __builtin_ctzll(m));
      column_sums[begin + i] += sums_alpha * static_cast<T>(count);
      if (count == 0) continue;
      T* row = out + (begin + i) * n_out;
#if defined(__x86_64__) && defined(__GNUC__)
      if constexpr (std::is_same_v<T, float>) {
        if (avx512) {
          gather_sum_avx512<true>(h, n_out, list.data(), count, nullptr, n_out, alpha, row);
          continue;
        }
      }
#endif
      gather_sum<true, T>(h, n_out, list.data(), count, nullptr, n_out, alpha, row, acc.data());
    }
  });
}

void rbm_binary_outer_add_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& h, double alpha,
                              at::Tensor& column_sums, double sums_alpha) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous() &&
                  (out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble),
              "rbm_binary_outer_add_: out must be a contiguous 2-D float32/float64 tensor");
  const int64_t n_in = out.size(0), n_out = out.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == n_in && (x.scalar_type() == at::kByte || x.scalar_type() == out.scalar_type()),
              "rbm_binary_outer_add_: x must be (B, ", n_in, ") uint8 or out's dtype");
  TORCH_CHECK(h.dim() == 2 && h.size(0) == x.size(0) && h.size(1) == n_out && h.scalar_type() == out.scalar_type(),
              "rbm_binary_outer_add_: h must be (", x.size(0), ", ", n_out, ") in out's dtype");
  TORCH_CHECK(column_sums.dim() == 1 && column_sums.size(0) == n_in && column_sums.is_contiguous() &&
                  column_sums.scalar_type() == out.scalar_type(),
              "rbm_binary_outer_add_: column_sums must be a contiguous (", n_in, ",) tensor in out's dtype");
  const int64_t B = x.size(0);
  if (B == 0 || n_in == 0 || n_out == 0) return;
  const at::Tensor xc = x.contiguous(), hc = h.contiguous();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rbm_binary_outer_add_cpu", [&] {
    const auto run = [&](const auto* states) {
      binary_outer_add<scalar_t>(out.data_ptr<scalar_t>(), states, hc.data_ptr<scalar_t>(), B, n_in, n_out,
                                 static_cast<scalar_t>(alpha), column_sums.data_ptr<scalar_t>(),
                                 static_cast<scalar_t>(sums_alpha));
    };
    if (xc.scalar_type() == at::kByte)
      run(xc.data_ptr<uint8_t>());
    else
      run(xc.data_ptr<scalar_t>());
  });
}

// dst[i] = (src[i] == 1) for i < n; whether every src[i] is 0 or 1. An integer flag and no
// early exit, so the loop vectorises (a bool flag kept it scalar: 4x slower than a cast).
template <typename T>
bool pack_binary_range(const T* __restrict__ src, int64_t n, uint8_t* __restrict__ dst) {
  int other = 0;
#pragma omp simd reduction(| : other)
  for (int64_t i = 0; i < n; ++i) {
    other |= static_cast<int>(src[i] != T(0)) & static_cast<int>(src[i] != T(1));
    dst[i] = static_cast<uint8_t>(src[i] == T(1));
  }
  return other == 0;
}

// One read of x: its uint8 copy when every value is 0 or 1, else an empty (0, D) tensor (the
// RBM's test for exactly binary training data, which then trains on the copy: a quarter of
// fp32's bytes to shuffle, and the binary kernels' cheapest input).
at::Tensor rbm_pack_binary_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "rbm_pack_binary: x must be a 2-D float32/float64 tensor");
  const at::Tensor xc = x.contiguous();
  at::Tensor packed = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const int64_t n = xc.numel();
  std::atomic<bool> binary{true};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rbm_pack_binary_cpu", [&] {
    const scalar_t* src = xc.data_ptr<scalar_t>();
    uint8_t* dst = packed.data_ptr<uint8_t>();
    genkernels::cpu::parallel_for(0, n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
      if (!pack_binary_range(src + begin, end - begin, dst + begin)) binary.store(false, std::memory_order_relaxed);
    });
  });
  return binary.load() ? packed : at::empty({0, x.size(1)}, x.options().dtype(at::kByte));
}

// One persistent-CD batch of scikit-learn's BernoulliRBM._fit (genkernels.compat), in one
// call: at batch 1 to 10 the Python sequence of the same ATen calls and two half-steps cost
// about 90 us a batch in dispatch, more than the arithmetic. The same ATen kernels run in
// the same order as genkernels/boltzmann/rbm_reference.py:rbm_pcd_step_ on the cpu half-steps,
// so the results are bit for bit that composition's.
at::Tensor rbm_pcd_step_cpu(const at::Tensor& v_pos, at::Tensor& w, at::Tensor& visible_bias,
                            at::Tensor& hidden_bias, const at::Tensor& chains, int64_t seed, int64_t offset_v,
                            int64_t offset_h, double lr) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "rbm_pcd_step_: w must be a contiguous 2-D float32/float64 tensor");
  const int64_t n_visible = w.size(0), n_hidden = w.size(1);
  TORCH_CHECK(v_pos.dim() == 2 && v_pos.size(1) == n_visible && v_pos.scalar_type() == w.scalar_type(),
              "rbm_pcd_step_: v_pos must be (B, ", n_visible, ") in w's dtype");
  TORCH_CHECK(chains.dim() == 2 && chains.size(1) == n_hidden && chains.scalar_type() == at::kByte,
              "rbm_pcd_step_: chains must be (C, ", n_hidden, ") uint8");
  TORCH_CHECK(visible_bias.dim() == 1 && visible_bias.size(0) == n_visible &&
                  visible_bias.scalar_type() == w.scalar_type() && visible_bias.is_contiguous(),
              "rbm_pcd_step_: visible_bias must be a contiguous (", n_visible, ",) tensor in w's dtype");
  TORCH_CHECK(hidden_bias.dim() == 1 && hidden_bias.size(0) == n_hidden &&
                  hidden_bias.scalar_type() == w.scalar_type() && hidden_bias.is_contiguous(),
              "rbm_pcd_step_: hidden_bias must be a contiguous (", n_hidden, ",) tensor in w's dtype");
  // a training step: no autograd history, whatever requires grad (as the Python models)
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  // Cost model: a step of fewer than kSoloPcdWork multiply-adds per product runs on the calling
  // thread alone (its BLAS calls and half-steps start no team). On 2 cores (AMD EPYC, 64 x 100,
  // float64, steps in a loop) a second thread lost below ~2^21 and won above: 2t/1t 1.13 at
  // batch 100, 1.04 at 200, 0.85 at 400, 0.76 at 1000.
  const genkernels::cpu::SoloScope solo(v_pos.size(0) * n_visible * n_hidden < kSoloPcdWork);
  const at::Tensor h_pos = at::addmm(hidden_bias, v_pos, w).sigmoid_();
  const at::Tensor v_neg_samples = std::get<0>(
      rbm_half_step_cpu(chains, w, visible_bias, seed, offset_v, /*transpose=*/true, /*return_probs=*/false));
  auto [new_chains, h_neg] =
      rbm_half_step_cpu(v_neg_samples, w, hidden_bias, seed, offset_h, /*transpose=*/false, /*return_probs=*/true);
  const at::Tensor v_neg = v_neg_samples.to(w.scalar_type());
  w.addmm_(v_pos.t(), h_pos, /*beta=*/1, /*alpha=*/lr).addmm_(v_neg.t(), h_neg, /*beta=*/1, /*alpha=*/-lr);
  hidden_bias.add_(h_pos.sum(0) - h_neg.sum(0), lr);
  visible_bias.add_(v_pos.sum(0) - v_neg.sum(0), lr);
  return new_chains;
}

}  // namespace
}  // namespace genkernels::boltzmann::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("rbm_pcd_step_", &genkernels::boltzmann::cpu::rbm_pcd_step_cpu);
  m.impl("rbm_half_step", &genkernels::boltzmann::cpu::rbm_half_step_cpu);
  m.impl("rbm_half_step_binary", &genkernels::boltzmann::cpu::rbm_half_step_binary_cpu);
  m.impl("rbm_binary_outer_add_", &genkernels::boltzmann::cpu::rbm_binary_outer_add_cpu);
  m.impl("rbm_pack_binary", &genkernels::boltzmann::cpu::rbm_pack_binary_cpu);
}
