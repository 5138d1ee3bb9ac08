// The multi-spin-coded checkerboard update of csrc/cpu/ising.cpp, shared by its portable
// build and its AVX-512 build (csrc/cpu/ising_avx512.cpp includes this header under its
// target pragma, so the template is compiled for AVX-512 there): a template over the two
// steps that differ, drawing the Philox words (Isa::randoms) and comparing them with the
// thresholds (Isa::flips) -- or, for Isa::kDirect, word by word with word_flips, the
// arithmetic of the cuda kernel (csrc/common/ising.h), so the portable build's tests
// exercise what the GPU runs. Layouts and counters: csrc/common/ising.h.
#pragma once
#include "cpu/ising_cpu.h"

namespace genkernels::ising::cpu {

// Update rows [i0, i1) of colour c of lattice b in sweep t. `buf` (unused for kDirect) holds at least
// (ceil((i1 - i0) H / 64) + 2) * 64 words: the groups covering the rows' sites are drawn
// first (a group straddling two chunks is drawn by both), then every word is updated
// from its neighbours' classes and its 64 words of `buf`.
template <class Isa>
inline void update_rows(const SweepArgs& a, int64_t t, int c, int64_t b, int i0, int i1,
                        uint32_t* buf) {
  const int64_t H = a.H, W = a.W, L = a.L;
  const int64_t k0 = i0 * H, k1 = i1 * H;
  const int64_t g0 = k0 >> 6, g1 = (k1 + 63) >> 6;
  const uint64_t base = colour_base(a.offset, t, a.B, b, c, a.Q);
  if constexpr (!Isa::kDirect) Isa::randoms(a.seed, base, g0, g1 - g0, buf);
  uint64_t* lattice = a.packed + b * 2 * L * W;
  uint64_t* rows_c = lattice + c * L * W;
  const uint64_t* rows_o = lattice + (1 - c) * L * W;
  for (int i = i0; i < i1; ++i) {
    // neighbour rows once per row (no division per word)
    const uint64_t* up = rows_o + (i == 0 ? L - 1 : i - 1) * W;
    const uint64_t* down = rows_o + (i == L - 1 ? 0 : i + 1) * W;
    const uint64_t* same = rows_o + i * W;
    uint64_t* row = rows_c + i * W;
    const uint32_t* u = buf + (i * H - 64 * g0);
    const bool next = (i + c) & 1;
    for (int x = 0; x < a.W; ++x) {
      const Classes k = row_word_classes(up, down, same, x, a.H, next);
      if constexpr (Isa::kDirect) {
        row[x] ^= word_flips(a.seed, base, i * H + 64 * x, word_bits(a.H, x), k, row[x], a.table.lo,
                             a.table.always);
      } else {
        row[x] ^= Isa::flips(u + 64 * x, word_bits(a.H, x), k, row[x], a.table);
      }
    }
  }
}

}  // namespace genkernels::ising::cpu
