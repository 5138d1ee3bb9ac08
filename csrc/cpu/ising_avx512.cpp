// AVX-512 build of the checkerboard Ising update (csrc/cpu/ising_cpu.h), selected at run
// time when the CPU has AVX-512 (the extension's baseline is AVX2). Two steps are
// vectorised, 16 lanes of 32 bits:
// * Philox4x32-10 on 16 consecutive counters at once -- one group of 64 sites, its four
//   output words stored as four contiguous runs of 16, which is the site order
//   (csrc/common/ising.h). The counters run in the low halves of 64-bit lanes (two
//   vectors of 8), so each 32 x 32 -> 64-bit product is one vpmuludq and its high half
//   one vpshufd away (Philox8 below).
// * The threshold compare: each spin's table index n + 8 s is assembled from the
//   bit-sliced class words with four masked adds, the threshold fetched with one
//   vpermd from the 16-entry table and compared unsigned, 16 spins per instruction.
// common/ising.h and ising_cpu.h are included before the target pragma so their inline
// functions keep the baseline ISA (one definition per symbol across translation units).
#include "cpu/ising_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
// GCC 12's own intrinsics (_mm512_undefined_epi32 in the masked forms) trip this warning
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,bmi2")
#include "cpu/ising_kernel.h"

namespace genkernels::ising::cpu {
namespace {

// Eight Philox4x32-10 streams in the low halves of 64-bit lanes. vpmuludq multiplies the
// low halves into full 64-bit products: the product itself serves as the next round's
// "lo" word (only its low half is ever read again -- by vpmuludq, or by the final
// extraction; the XORs carry garbage in the high halves harmlessly) and one vpshufd moves
// its high half down as the "hi" word. Per round and 8 counters: 2 vpmuludq (port 0),
// 2 vpshufd (port 5), 2 vpternlogd three-way XORs.
struct Philox8 {
  __m512i c0, c1, c2, c3;

  inline void rounds(const uint32_t* key0, const uint32_t* key1, __m512i round_a, __m512i round_b) {
    for (int r = 0; r < random::kPhiloxRounds; ++r) {
      const __m512i prod_b = _mm512_mul_epu32(c2, round_b);
      const __m512i prod_a = _mm512_mul_epu32(c0, round_a);
      c0 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(prod_b, _MM_PERM_DDBB), c1,
                                     _mm512_set1_epi32(static_cast<int>(key0[r])), 0x96);
      c2 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(prod_a, _MM_PERM_DDBB), c3,
                                     _mm512_set1_epi32(static_cast<int>(key1[r])), 0x96);
      c1 = prod_b;
      c3 = prod_a;
    }
  }
};

struct Avx512 {
  static constexpr bool kDirect = false;
  // Words of groups [g0, g0 + n_groups) into out[(g - g0) * 64 ...], site order: a group's
  // 16 counters run as two Philox8 (lanes 0-7, 8-15), whose low halves one vpermt2d per
  // output word gathers into 16 consecutive words.
  static void randoms(uint64_t seed, uint64_t base, int64_t g0, int64_t n_groups, uint32_t* out) {
    const __m512i lanes_lo = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i lanes_hi = _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i round_a = _mm512_set1_epi32(static_cast<int>(random::kPhiloxRoundA));
    const __m512i round_b = _mm512_set1_epi32(static_cast<int>(random::kPhiloxRoundB));
    uint32_t key0[random::kPhiloxRounds], key1[random::kPhiloxRounds];
    for (int r = 0; r < random::kPhiloxRounds; ++r) {
      key0[r] = static_cast<uint32_t>(seed) + static_cast<uint32_t>(r) * random::kPhiloxKeyA;
      key1[r] = static_cast<uint32_t>(seed >> 32) + static_cast<uint32_t>(r) * random::kPhiloxKeyB;
    }
    for (int64_t g = 0; g < n_groups; ++g) {
      const __m512i first = _mm512_set1_epi64(static_cast<long long>(base + static_cast<uint64_t>(16 * (g0 + g))));
      // counters as 64-bit lanes: c0 their low word, c1 their high word (carries for free)
      const __m512i ctr_lo = _mm512_add_epi64(first, lanes_lo), ctr_hi = _mm512_add_epi64(first, lanes_hi);
      Philox8 lo{ctr_lo, _mm512_srli_epi64(ctr_lo, 32), _mm512_setzero_si512(), _mm512_setzero_si512()};
      Philox8 hi{ctr_hi, _mm512_srli_epi64(ctr_hi, 32), _mm512_setzero_si512(), _mm512_setzero_si512()};
      lo.rounds(key0, key1, round_a, round_b);
      hi.rounds(key0, key1, round_a, round_b);
      uint32_t* dst = out + 64 * g;
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi32(lo.c0, low_halves, hi.c0));
      _mm512_storeu_si512(dst + 16, _mm512_permutex2var_epi32(lo.c1, low_halves, hi.c1));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi32(lo.c2, low_halves, hi.c2));
      _mm512_storeu_si512(dst + 48, _mm512_permutex2var_epi32(lo.c3, low_halves, hi.c3));
    }
  }

  // Flip bits of 64 spins from u[0..64) (words past `nbits` are read, not used).
  static uint64_t flips(const uint32_t* u, int nbits, const Classes& k, uint64_t s,
                        const FlipTable& table) {
    const __m512i lo = _mm512_loadu_si512(table.lo);
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
    const __m512i four = _mm512_set1_epi32(4), eight = _mm512_set1_epi32(8);
    uint64_t out = 0;
    for (int q = 0; q < 4; ++q) {
      const int shift = 16 * q;
      __m512i idx = _mm512_maskz_mov_epi32(static_cast<__mmask16>(k.b0 >> shift), one);
      idx = _mm512_mask_add_epi32(idx, static_cast<__mmask16>(k.b1 >> shift), idx, two);
      idx = _mm512_mask_add_epi32(idx, static_cast<__mmask16>(k.b2 >> shift), idx, four);
      idx = _mm512_mask_add_epi32(idx, static_cast<__mmask16>(s >> shift), idx, eight);
      const __m512i threshold = _mm512_permutexvar_epi32(idx, lo);
      const __mmask16 f = _mm512_cmplt_epu32_mask(_mm512_loadu_si512(u + shift), threshold);
      out |= static_cast<uint64_t>(f) << shift;
    }
    return (out | always_flips(k, s, table.always)) & low_bits(nbits);
  }
};

}  // namespace

bool have_avx512_kernel() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("bmi2");
}

// Bytes 2 r + p of a 128-byte span are bit r of a word: `parity` selects them in a
// 64-bit byte mask.
constexpr uint64_t kEvenBytes = 0x5555555555555555ull;

void pack_row_avx512(const int8_t* row, int L, int i, uint64_t* colour0, uint64_t* colour1) {
  const int H = L / 2, W = (H + 63) / 64;
  const uint64_t sel0 = kEvenBytes << (i & 1), sel1 = kEvenBytes << ((i + 1) & 1);
  const __m512i zero = _mm512_setzero_si512();
  for (int x = 0; x < W; ++x) {
    const int first = 128 * x, bytes = L - first < 128 ? L - first : 128;
    const __mmask64 take_lo = bytes >= 64 ? ~0ull : low_bits(bytes);
    const __mmask64 take_hi = bytes >= 128 ? ~0ull : bytes > 64 ? low_bits(bytes - 64) : 0ull;
    const uint64_t lo = _mm512_cmpgt_epi8_mask(_mm512_maskz_loadu_epi8(take_lo, row + first), zero);
    const uint64_t hi = _mm512_cmpgt_epi8_mask(_mm512_maskz_loadu_epi8(take_hi, row + first + 64), zero);
    colour0[x] = _pext_u64(lo, sel0) | (_pext_u64(hi, sel0) << 32);
    colour1[x] = _pext_u64(lo, sel1) | (_pext_u64(hi, sel1) << 32);
  }
}

void unpack_row_avx512(const uint64_t* colour0, const uint64_t* colour1, int L, int i, int8_t* row) {
  const int H = L / 2, W = (H + 63) / 64;
  const uint64_t sel0 = kEvenBytes << (i & 1), sel1 = kEvenBytes << ((i + 1) & 1);
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  for (int x = 0; x < W; ++x) {
    const int first = 128 * x, bytes = L - first < 128 ? L - first : 128;
    const uint64_t lo = _pdep_u64(colour0[x], sel0) | _pdep_u64(colour1[x], sel1);
    const uint64_t hi = _pdep_u64(colour0[x] >> 32, sel0) | _pdep_u64(colour1[x] >> 32, sel1);
    const __mmask64 take_lo = bytes >= 64 ? ~0ull : low_bits(bytes);
    const __mmask64 take_hi = bytes >= 128 ? ~0ull : bytes > 64 ? low_bits(bytes - 64) : 0ull;
    _mm512_mask_storeu_epi8(row + first, take_lo, _mm512_mask_blend_epi8(lo, minus, plus));
    _mm512_mask_storeu_epi8(row + first + 64, take_hi, _mm512_mask_blend_epi8(hi, minus, plus));
  }
}

void update_rows_avx512(const SweepArgs& a, int64_t t, int c, int64_t b, int i0, int i1,
                        uint32_t* buf) {
  update_rows<Avx512>(a, t, c, b, i0, i1, buf);
}

}  // namespace genkernels::ising::cpu

#pragma GCC diagnostic pop
#pragma GCC pop_options

#else

namespace genkernels::ising::cpu {
bool have_avx512_kernel() { return false; }
void update_rows_avx512(const SweepArgs&, int64_t, int, int64_t, int, int, uint32_t*) {}
void pack_row_avx512(const int8_t*, int, int, uint64_t*, uint64_t*) {}
void unpack_row_avx512(const uint64_t*, const uint64_t*, int, int, int8_t*) {}
}  // namespace genkernels::ising::cpu

#endif
