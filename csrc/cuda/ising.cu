// Checkerboard Ising CUDA kernels, multi-spin coded (arithmetic in csrc/common/ising.h,
// shared with csrc/cpu/ising.cpp, whose tests therefore exercise it; reference
// genkernels/ising/reference.py).
//
// A half-sweep is one launch, one thread per packed 64-bit word (64 spins of one colour of
// one row): the neighbour classes of its 64 spins by full-adder logic on four neighbour
// words (all of the other colour, which this launch does not write, so threads never
// race), the 64 Philox words, 64 threshold compares, one XOR (word_flips in
// csrc/common/ising.h, which the cpu kernel's portable build runs too). Where L / 2 is a
// multiple of 64 a word's sites are exactly one group, whose 16 Philox calls give all 64
// words (all four outputs of each call used); otherwise a word straddles groups and draws
// one call per site and keeps the word it needs (a quarter of the call: L not a multiple
// of 128 only).
// 64-bit indices throughout. The flip table is staged in shared memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/ising.h"
#include "common/philox.h"
#include "cuda/ising.cuh"

namespace genkernels::ising::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
ising_pack_kernel(const int8_t* __restrict__ spins, int64_t B, int L, uint64_t* __restrict__ packed) {
  // thread per (lattice, row, word): both colours' word x of row i
  const int H = L / 2, W = (H + 63) / 64;
  const int64_t n = B * L * W;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= n) return;
  const int x = static_cast<int>(id % W);
  const int64_t bi = id / W;
  const int64_t b = bi / L;
  const int i = static_cast<int>(bi % L);
  const int8_t* row = spins + bi * L;
  const int nbits = word_bits(H, x);
  for (int c = 0; c < 2; ++c) {
    const int p = (i + c) & 1;
    uint64_t word = 0;
    for (int r = 0; r < nbits; ++r)
      word |= static_cast<uint64_t>(row[2 * (64 * x + r) + p] > 0) << r;
    packed[((b * 2 + c) * L + i) * W + x] = word;
  }
}

__global__ void __launch_bounds__(kThreads)
ising_unpack_kernel(const uint64_t* __restrict__ packed, int64_t B, int L, int8_t* __restrict__ spins) {
  // thread per spin
  const int H = L / 2, W = (H + 63) / 64;
  const int64_t n = B * L * L;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= n) return;
  const int j = static_cast<int>(id % L);
  const int64_t bi = id / L;
  const int64_t b = bi / L;
  const int i = static_cast<int>(bi % L);
  const int c = (i + j) & 1;
  const int m = j / 2;
  const uint64_t word = packed[((b * 2 + c) * L + i) * W + m / 64];
  spins[id] = ((word >> (m % 64)) & 1u) ? int8_t{1} : int8_t{-1};
}

__global__ void __launch_bounds__(kThreads)
ising_half_sweep_kernel(uint64_t* __restrict__ packed, int64_t B, int L, uint64_t seed,
                        uint64_t offset, int64_t t, int c, FlipTable table) {
  __shared__ uint32_t lo[16];
  if (threadIdx.x == 0) {
    // constant indices: a dynamic index into the parameter struct would copy it to the stack
#pragma unroll
    for (int q = 0; q < 16; ++q) lo[q] = table.lo[q];
  }
  __syncthreads();
  // thread per (lattice, row, word) of colour c
  const int H = L / 2, W = (H + 63) / 64;
  const int64_t n = B * L * W;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= n) return;
  const int x = static_cast<int>(id % W);
  const int64_t bi = id / W;
  const int64_t b = bi / L;
  const int i = static_cast<int>(bi % L);
  const int64_t Q = 16 * ((static_cast<int64_t>(L) * L / 2 + 63) / 64);
  const uint64_t base = colour_base(offset, t, B, b, c, Q);
  uint64_t* lattice = packed + b * 2 * L * W;
  uint64_t* rows_c = lattice + static_cast<int64_t>(c) * L * W;
  const uint64_t* rows_o = lattice + static_cast<int64_t>(1 - c) * L * W;
  const Classes k = word_classes(rows_o, L, i, c, x);
  const uint64_t s = rows_c[static_cast<int64_t>(i) * W + x];
  const int64_t first = static_cast<int64_t>(i) * H + 64 * x;  // site number of bit 0
  const uint64_t flips = word_flips(seed, base, first, word_bits(H, x), k, s, lo, table.always);
  rows_c[static_cast<int64_t>(i) * W + x] = s ^ flips;
}

__global__ void __launch_bounds__(kThreads)
ising_count_kernel(const uint64_t* __restrict__ packed, int64_t B, int L,
                   unsigned long long* __restrict__ mismatched, unsigned long long* __restrict__ up,
                   int64_t stride) {
  // thread per (lattice, row)
  const int W = (L / 2 + 63) / 64;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= B * L) return;
  const int64_t b = id / L;
  const int i = static_cast<int>(id % L);
  const uint64_t* lattice = packed + b * 2 * L * W;
  int64_t mis = 0, plus = 0;
  count_rows(lattice, lattice + static_cast<int64_t>(L) * W, L, i, i + 1, mis, plus);
  atomicAdd(mismatched + b * stride, static_cast<unsigned long long>(mis));
  atomicAdd(up + b * stride, static_cast<unsigned long long>(plus));
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t ising_pack_launch(const int8_t* spins, int64_t B, int L, uint64_t* packed,
                              cudaStream_t stream) {
  const int64_t n = B * L * ((L / 2 + 63) / 64);
  if (n <= 0) return cudaSuccess;
  ising_pack_kernel<<<blocks_for(n), kThreads, 0, stream>>>(spins, B, L, packed);
  return cudaGetLastError();
}

cudaError_t ising_unpack_launch(const uint64_t* packed, int64_t B, int L, int8_t* spins,
                                cudaStream_t stream) {
  const int64_t n = B * L * L;
  if (n <= 0) return cudaSuccess;
  ising_unpack_kernel<<<blocks_for(n), kThreads, 0, stream>>>(packed, B, L, spins);
  return cudaGetLastError();
}

cudaError_t ising_half_sweep_launch(uint64_t* packed, int64_t B, int L, uint64_t seed,
                                    uint64_t offset, int64_t t, int c, const FlipTable& table,
                                    cudaStream_t stream) {
  const int64_t n = B * L * ((L / 2 + 63) / 64);
  if (n <= 0) return cudaSuccess;
  ising_half_sweep_kernel<<<blocks_for(n), kThreads, 0, stream>>>(packed, B, L, seed, offset, t, c,
                                                                   table);
  return cudaGetLastError();
}

cudaError_t ising_count_launch(const uint64_t* packed, int64_t B, int L, int64_t* mismatched,
                               int64_t* up, int64_t stride, cudaStream_t stream) {
  const int64_t n = B * L;
  if (n <= 0) return cudaSuccess;
  ising_count_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      packed, B, L, reinterpret_cast<unsigned long long*>(mismatched),
      reinterpret_cast<unsigned long long*>(up), stride);
  return cudaGetLastError();
}

}  // namespace genkernels::ising::cuda
