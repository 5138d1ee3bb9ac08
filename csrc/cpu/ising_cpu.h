// Declarations shared by csrc/cpu/ising.cpp and its AVX-512 build csrc/cpu/ising_avx512.cpp.
// Layouts and counters: csrc/common/ising.h; the update itself: csrc/cpu/ising_kernel.h.
#pragma once
#include <cstdint>

#include "common/ising.h"

namespace genkernels::ising::cpu {

struct SweepArgs {
  uint64_t* packed;  // (B, 2 colours, L rows, W words)
  int64_t B;
  int L, H, W;
  uint64_t seed, offset;
  int64_t Q;  // Philox counters per colour and lattice
  FlipTable table;
};

// The AVX-512 build of update_rows (false where the CPU or the compiler lacks it).
bool have_avx512_kernel();
void update_rows_avx512(const SweepArgs& a, int64_t t, int c, int64_t b, int i0, int i1,
                        uint32_t* buf);
// Pack / unpack one row i of L int8 spins <-> its two colours' W words each (AVX-512BW
// byte compares and BMI2 pext / pdep, 128 spins per step).
void pack_row_avx512(const int8_t* row, int L, int i, uint64_t* colour0, uint64_t* colour1);
void unpack_row_avx512(const uint64_t* colour0, const uint64_t* colour1, int L, int i, int8_t* row);

}  // namespace genkernels::ising::cpu
