// Multi-spin-coded checkerboard Ising arithmetic shared by csrc/cpu/ising.cpp and
// csrc/cuda/ising.cu (specification: genkernels/ising/reference.py).
//
// Packed state. One bit per spin (1 = +1), each colour of each row packed apart:
//   word x of row i of colour c holds, in bit r, the spin at column j = 2 (64 x + r) + p,
//   p = (i + c) mod 2; H = L / 2 spins per row and colour, W = ceil(H / 64) words, bits
//   beyond H zero.
// A site of colour c in row i at bit m has its four neighbours in the other colour: bit m
// of rows i - 1 and i + 1, and in row i bits m and m - 1 (p = 0) or m and m + 1 (p = 1),
// cyclically mod H.
//
// Random numbers (one uint32 per site, the counter layout of reference.py): the N / 2
// sites of one colour are numbered k = i H + m and grouped by 64; site 64 g + 16 w + l
// takes word w of Philox counter colour_base + 16 g + l, so the 16 counters of a group
// give its 64 words in site order with word w of all 16 lanes contiguous.
//
// Acceptance: a spin with neighbour class n (number of +1 neighbours) flips iff
// u < F[s][n], F in [0, 2^32]. Kernels take the table as `FlipTable`: lo[n + 8 s] = F mod
// 2^32 and bit n + 8 s of `always` set where F = 2^32 (lo = 0 there), so
// flip <=> u < lo[idx] || always bit idx, with idx = n + 8 s in [0, 16).
#pragma once
#include <cstdint>

#include "common/philox.h"

namespace genkernels::ising {

struct FlipTable {
  uint32_t lo[16];
  uint32_t always;  // bit idx: threshold 2^32, flip whatever u
};

// Mask of the bits < `nbits` (nbits in [0, 64]).
GK_HD uint64_t low_bits(int nbits) { return nbits >= 64 ? ~0ull : ((1ull << nbits) - 1ull); }

// Neighbour classes of 64 spins from their four neighbour words, bit-sliced: the count of
// +1 neighbours n = b0 + 2 b1 + 4 b2 (b2 set only for n = 4), by full-adder logic.
struct Classes {
  uint64_t b0, b1, b2;
};

GK_HD Classes neighbour_classes(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  const uint64_t s1 = a ^ b, c1 = a & b;  // half adders
  const uint64_t s2 = c ^ d, c2 = c & d;
  const uint64_t carry = s1 & s2;
  Classes out;
  out.b0 = s1 ^ s2;
  out.b1 = c1 ^ c2 ^ carry;
  out.b2 = (c1 & c2) | (c1 & carry) | (c2 & carry);
  return out;
}

// The spins of class `cls` (a mask) with n +1 neighbours whose threshold is 2^32.
GK_HD uint64_t always_in_class(uint64_t cls, int n, uint64_t s, uint32_t always) {
  const uint64_t down = 0ull - static_cast<uint64_t>((always >> n) & 1u);
  const uint64_t up = 0ull - static_cast<uint64_t>((always >> (8 + n)) & 1u);
  return cls & ((~s & down) | (s & up));
}

// Bits of spins whose threshold is 2^32 (they flip whatever their random word).
GK_HD uint64_t always_flips(const Classes& k, uint64_t s, uint32_t always) {
  return always_in_class(~(k.b0 | k.b1 | k.b2), 0, s, always) |
         always_in_class(k.b0 & ~k.b1, 1, s, always) | always_in_class(~k.b0 & k.b1, 2, s, always) |
         always_in_class(k.b0 & k.b1, 3, s, always) | always_in_class(k.b2, 4, s, always);
}

// Word x of a row of H bits shifted so that bit m holds bit m - 1 (cyclic): `row` is the
// row's W words.
GK_HD uint64_t row_shift_prev(const uint64_t* row, int x, int H) {
  const uint64_t carry = x > 0 ? row[x - 1] >> 63 : (row[(H - 1) / 64] >> ((H - 1) % 64)) & 1u;
  return ((row[x] << 1) | carry) & low_bits(H - 64 * x);
}

// Word x of a row of H bits shifted so that bit m holds bit m + 1 (cyclic).
GK_HD uint64_t row_shift_next(const uint64_t* row, int x, int H) {
  const int W = (H + 63) / 64;
  uint64_t out = row[x] >> 1;
  if (x + 1 < W) out |= row[x + 1] << 63;
  if (x == W - 1) out |= (row[0] & 1u) << ((H - 1) % 64);
  return out;
}

// Neighbour classes of word x of a row whose neighbour rows (other colour) are `up`,
// `down` and `same` (the same row): the side neighbours are `same` shifted by one bit,
// towards m + 1 when `next` ((i + c) odd), towards m - 1 otherwise.
GK_HD Classes row_word_classes(const uint64_t* up, const uint64_t* down, const uint64_t* same,
                               int x, int H, bool next) {
  const uint64_t side = next ? row_shift_next(same, x, H) : row_shift_prev(same, x, H);
  return neighbour_classes(up[x], down[x], same[x], side);
}

// Neighbour classes of word x of row i of colour c from `rows_o`, the other colour's L rows
// of W words each.
GK_HD Classes word_classes(const uint64_t* rows_o, int L, int i, int c, int x) {
  const int64_t W = (L / 2 + 63) / 64;
  return row_word_classes(rows_o + ((i + L - 1) % L) * W, rows_o + ((i + 1) % L) * W,
                          rows_o + i * W, x, L / 2, (i + c) & 1);
}

// Spins of word x of a row (H bits per row): min(64, H - 64 x).
GK_HD int word_bits(int H, int x) { return H - 64 * x < 64 ? H - 64 * x : 64; }

GK_HD int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

// Observables of rows [i0, i1) of one packed lattice (`black`, `white`: its two colours' L
// rows of W words): `mismatched` += the bonds joining unequal spins (every bond has one
// black end: the black spins' four neighbours count each bond once), `up` += the spins
// at +1. The lattice's bond sum is 2 N - 2 mismatched, its spin sum 2 up - N.
GK_HD void count_rows(const uint64_t* black, const uint64_t* white, int L, int i0, int i1,
                      int64_t& mismatched, int64_t& up) {
  const int H = L / 2, W = (H + 63) / 64;
  for (int i = i0; i < i1; ++i) {
    const uint64_t* above = white + static_cast<int64_t>(i == 0 ? L - 1 : i - 1) * W;
    const uint64_t* below = white + static_cast<int64_t>(i == L - 1 ? 0 : i + 1) * W;
    const uint64_t* same = white + static_cast<int64_t>(i) * W;
    const uint64_t* row = black + static_cast<int64_t>(i) * W;
    for (int x = 0; x < W; ++x) {
      const uint64_t side = (i & 1) ? row_shift_next(same, x, H) : row_shift_prev(same, x, H);
      const uint64_t s = row[x];
      mismatched += popcount64(s ^ above[x]) + popcount64(s ^ below[x]) + popcount64(s ^ same[x]) +
                    popcount64(s ^ side);
      up += popcount64(s) + popcount64(same[x]);
    }
  }
}

// The random word of site k alone (a quarter of one Philox call).
GK_HD uint32_t site_random(uint64_t seed, uint64_t colour_base, int64_t k) {
  const int64_t g = k >> 6, w = (k >> 4) & 3, l = k & 15;
  const random::Uint4 r = random::randint4x(seed, colour_base + static_cast<uint64_t>(16 * g + l));
  return w == 0 ? r.x : w == 1 ? r.y : w == 2 ? r.z : r.w;
}

// Bit r of the flips of a word: its spin's table index n + 8 s against its random word u.
GK_HD uint64_t flip_bit(uint32_t u, int r, const Classes& k, uint64_t s, const uint32_t* lo) {
  const unsigned idx = static_cast<unsigned>(((k.b0 >> r) & 1u) | (((k.b1 >> r) & 1u) << 1) |
                                             (((k.b2 >> r) & 1u) << 2) | (((s >> r) & 1u) << 3));
  return static_cast<uint64_t>(u < lo[idx]) << r;
}

// Flip bits of a word of `nbits` spins whose bit 0 is site `first` of its colour, drawing
// the words itself (the cuda kernel and the cpu kernel's portable build): a whole aligned
// group is 16 Philox calls whose four outputs serve bits l, 16 + l, 32 + l, 48 + l; any
// other word draws one call per site and keeps the word it needs.
GK_HD uint64_t word_flips(uint64_t seed, uint64_t colour_first, int64_t first, int nbits,
                          const Classes& k, uint64_t s, const uint32_t* lo, uint32_t always) {
  uint64_t flips = 0;
  if ((first & 63) == 0 && nbits == 64) {
    const uint64_t counter = colour_first + static_cast<uint64_t>(16 * (first >> 6));
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
    for (int l = 0; l < 16; ++l) {
      const random::Uint4 r = random::randint4x(seed, counter + static_cast<uint64_t>(l));
      flips |= flip_bit(r.x, l, k, s, lo) | flip_bit(r.y, 16 + l, k, s, lo) |
               flip_bit(r.z, 32 + l, k, s, lo) | flip_bit(r.w, 48 + l, k, s, lo);
    }
  } else {
    for (int r = 0; r < nbits; ++r) flips |= flip_bit(site_random(seed, colour_first, first + r), r, k, s, lo);
  }
  return (flips | always_flips(k, s, always)) & low_bits(nbits);
}

// Counter of the first group of colour c of lattice b in sweep t (reference.py):
// offset + ((t B + b) 2 + c) Q, mod 2^64.
GK_HD uint64_t colour_base(uint64_t offset, int64_t t, int64_t B, int64_t b, int c, int64_t Q) {
  const uint64_t index = (static_cast<uint64_t>(t) * static_cast<uint64_t>(B) + static_cast<uint64_t>(b)) * 2u +
                         static_cast<uint64_t>(c);
  return offset + index * static_cast<uint64_t>(Q);
}

}  // namespace genkernels::ising
