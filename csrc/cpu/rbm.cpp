// CPU kernel of the RBM Gibbs half-step (schema in csrc/genkernels.cpp, spec in
// genkernels/boltzmann/reference.py):
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
// Uniform of element (b, j): word j % 4 of counter offset + b * Q + j / 4, Q = ceil(n_out / 4)
// (uint64 wrap), converted to a float in [0, 1) as tl.rand4x -- csrc/common/philox.h,
// bit-identical to the reference; the sample is u < P with P in the accumulation dtype. Four
// units per Philox call: on 2 cores the 784-unit visible half-step of a 100-row batch spent
// about as long in one call per unit as in its matrix product.
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <tuple>

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
// possibly uninitialised; they are not read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

GK_AVX512 inline void uniform64(uint64_t seed, uint64_t counter, float* u) {
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
  const __m512 scale = _mm512_set1_ps(random::kUint32ToUniformScale);
  alignas(64) float words[4][16];
  const __m512i c[4] = {c0, c1, c2, c3};
  for (int k = 0; k < 4; ++k) {
    const __m512i folded = _mm512_xor_si512(c[k], _mm512_srai_epi32(c[k], 31));
    _mm512_store_ps(words[k], _mm512_mul_ps(_mm512_cvtepi32_ps(folded), scale));
  }
  for (int l = 0; l < 16; ++l)
    for (int k = 0; k < 4; ++k) u[4 * l + k] = words[k][l];
}

// bernoulli_row with 64 elements per Philox pass; the remainder (< 64, starting on a
// counter) goes to the AVX2 / scalar loop.
template <typename T>
GK_AVX512 void bernoulli_row_avx512(const T* __restrict__ p, int64_t n, uint64_t seed, uint64_t counter,
                                    uint8_t* __restrict__ samples, T* __restrict__ probs_out) {
  alignas(64) float u[64];
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    uniform64(seed, counter + static_cast<uint64_t>(j / 4), u);
    for (int l = 0; l < 64; ++l) samples[j + l] = static_cast<T>(u[l]) < p[j + l];
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
#pragma omp parallel num_threads(static_cast<int>(threads)) if (threads > 1 && n_tiles > 1)
  {
    at::Tensor buf = at::empty({std::min(rows_per_tile, B), std::min(cols_per_tile, n_out)}, w.options());
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
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
    }
  }
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

}  // namespace
}  // namespace genkernels::boltzmann::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("rbm_half_step", &genkernels::boltzmann::cpu::rbm_half_step_cpu);
}
