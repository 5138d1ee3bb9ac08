// CPU kernel of genkernels::ising_sweep (schema in csrc/genkernels.cpp, specification in
// genkernels/ising/reference.py): multi-spin-coded checkerboard sweeps.
//
// The int8 lattices are packed to one bit per spin, each colour's row in 64-bit words
// (csrc/common/ising.h), swept, and unpacked. The sweeps run in one OpenMP parallel
// region: whole lattices per task when there are at least as many as threads (no
// barriers), else (lattice, chunk of rows) tasks with a barrier between colours. A chunk
// first draws the Philox words of its rows' sites into a thread-local buffer (16 counters
// per 64 sites, all four words used), then updates 64 spins per step: their neighbour
// classes by full-adder logic on four neighbour words, one threshold compare per spin,
// flips as an XOR. The AVX-512 build
// (csrc/cpu/ising_avx512.cpp) vectorises the drawing and the compares; the portable build
// runs the cuda kernel's per-word arithmetic (word_flips in csrc/common/ising.h).
// GENKERNELS_CPU_ISA=avx2 keeps the portable build on an AVX-512 machine (read per call).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "parallel_region.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "cpu/ising_cpu.h"
#include "cpu/ising_kernel.h"
#include "aten/ising_table.h"

namespace genkernels::ising::cpu {
namespace {

// Sites per task: enough that drawing and updating dwarf the scheduling, few enough that
// the task's random words (4 bytes a site) stay in L1/L2.
constexpr int64_t kChunkSites = 8192;
constexpr int64_t kBarrierSitesPerThread = int64_t{1} << 18;

// The portable build draws and compares word by word with the cuda kernel's word_flips.
struct Portable {
  static constexpr bool kDirect = true;
};

// Rows [r0, r1) of the (B L) rows of spins (B, L, L) int8 -> packed (B, 2, L, W): bit r of
// word x of row i of colour c is spin (i, 2 (64 x + r) + (i + c) % 2) > 0.
void pack_rows(const int8_t* spins, int L, int W, uint64_t* packed, bool avx512, int64_t r0,
               int64_t r1) {
  const int H = L / 2;
  for (int64_t bi = r0; bi < r1; ++bi) {
    const int64_t b = bi / L;
    const int i = static_cast<int>(bi % L);
    const int8_t* row = spins + bi * L;
    uint64_t* colour0 = packed + (b * 2 * L + i) * W;
    uint64_t* colour1 = packed + ((b * 2 + 1) * L + i) * W;
    if (avx512) {
      pack_row_avx512(row, L, i, colour0, colour1);
      continue;
    }
    for (int c = 0; c < 2; ++c) {
      uint64_t* dst = c == 0 ? colour0 : colour1;
      const int p = (i + c) & 1;
      for (int x = 0; x < W; ++x) {
        uint64_t word = 0;
        for (int r = 0; r < word_bits(H, x); ++r)
          word |= static_cast<uint64_t>(row[2 * (64 * x + r) + p] > 0) << r;
        dst[x] = word;
      }
    }
  }
}

// The inverse of pack_rows for rows [r0, r1).
void unpack_rows(const uint64_t* packed, int L, int W, int8_t* spins, bool avx512, int64_t r0,
                 int64_t r1) {
  const int H = L / 2;
  for (int64_t bi = r0; bi < r1; ++bi) {
    const int64_t b = bi / L;
    const int i = static_cast<int>(bi % L);
    int8_t* row = spins + bi * L;
    const uint64_t* colour0 = packed + (b * 2 * L + i) * W;
    const uint64_t* colour1 = packed + ((b * 2 + 1) * L + i) * W;
    if (avx512) {
      unpack_row_avx512(colour0, colour1, L, i, row);
      continue;
    }
    for (int c = 0; c < 2; ++c) {
      const uint64_t* src = c == 0 ? colour0 : colour1;
      const int p = (i + c) & 1;
      for (int m = 0; m < H; ++m)
        row[2 * m + p] = ((src[m >> 6] >> (m & 63)) & 1u) ? int8_t{1} : int8_t{-1};
    }
  }
}

// spins (B, L, L) int8 ±1, L even >= 4; thresholds (2, 5) int64 in [0, 2^32] -> the spins
// after n_sweeps sweeps drawn from Philox (seed, counters from offset), and the bond and
// spin sums (B, n_sweeps / measure_every) after every measure_every sweeps (none for 0).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ising_sweep_cpu(
    const at::Tensor& spins, const at::Tensor& thresholds, int64_t n_sweeps, int64_t seed,
    int64_t offset, int64_t measure_every) {
  TORCH_CHECK(spins.scalar_type() == at::kChar, "ising_sweep: spins must be int8; got ",
              spins.scalar_type());
  TORCH_CHECK(spins.dim() == 3 && spins.size(1) == spins.size(2),
              "ising_sweep: spins must be (B, L, L); got ", spins.sizes());
  const int64_t L64 = spins.size(1);
  TORCH_CHECK(L64 >= 4 && L64 % 2 == 0 && L64 <= (int64_t{1} << 24),
              "ising_sweep: L must be even, >= 4 and <= 2^24; got ", L64);
  TORCH_CHECK(thresholds.scalar_type() == at::kLong && thresholds.dim() == 2 &&
                  thresholds.size(0) == 2 && thresholds.size(1) == 5,
              "ising_sweep: thresholds must be a (2, 5) int64 tensor; got ", thresholds.scalar_type(),
              " ", thresholds.sizes());
  TORCH_CHECK(n_sweeps >= 0, "ising_sweep: n_sweeps must be >= 0; got ", n_sweeps);
  TORCH_CHECK(measure_every >= 0, "ising_sweep: measure_every must be >= 0; got ", measure_every);
  TORCH_CHECK(spins.device().is_cpu() && thresholds.device().is_cpu(),
              "ising_sweep: spins and thresholds must be CPU tensors");
  const int64_t B = spins.size(0);
  const int64_t n_samples = measure_every > 0 ? n_sweeps / measure_every : 0;
  at::Tensor bond_sums = at::zeros({B, n_samples}, spins.options().dtype(at::kLong));
  at::Tensor spin_sums = at::zeros({B, n_samples}, spins.options().dtype(at::kLong));
  if (B == 0 || n_sweeps == 0)
    return {spins.clone(at::MemoryFormat::Contiguous), bond_sums, spin_sums};

  const int L = static_cast<int>(L64), H = L / 2, W = (H + 63) / 64;
  const char* isa = std::getenv("GENKERNELS_CPU_ISA");
  const bool use_avx512 =
      have_avx512_kernel() && !(isa != nullptr && std::string_view(isa) == "avx2");
  std::vector<uint64_t> packed(static_cast<size_t>(B * 2 * L * W));
  const at::Tensor spins_c = spins.contiguous();
  const int8_t* input = spins_c.const_data_ptr<int8_t>();
  at::Tensor out = at::empty({B, L, L}, spins.options().memory_format(at::MemoryFormat::Contiguous));
  int8_t* output = out.mutable_data_ptr<int8_t>();

  SweepArgs args{packed.data(), B, L, H, W, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                 16 * ((int64_t{L} * L / 2 + 63) / 64), make_table(thresholds)};

  // Whole lattices per thread when there are enough (no barriers); otherwise row chunks
  // with two barriers per sweep, and then at most one thread per kBarrierSitesPerThread
  // spins: a barrier costs microseconds (tens with passive waiting), a half-sweep of fewer
  // spins per thread would not pay for it.
  const int all_threads = std::max(1, at::get_num_threads());
  const bool whole_lattices = B >= all_threads;
  // (one thread on a busy machine: parallel_region.h's back-off; the result does not depend
  // on the team, every site draws from its own counter)
  const int threads = genkernels::cpu::team_size(whole_lattices ? all_threads
                                                                : std::clamp<int64_t>(
                                                                      B * L * L / kBarrierSitesPerThread,
                                                                      1, all_threads));
  int64_t* bonds = bond_sums.mutable_data_ptr<int64_t>();
  int64_t* totals = spin_sums.mutable_data_ptr<int64_t>();
  const int64_t n_spins = int64_t{L} * L;
  auto record = [&](int64_t b, int64_t t, int64_t mis, int64_t plus) {
    const int64_t sample = (t + 1) / measure_every - 1;
    bonds[b * n_samples + sample] = 2 * n_spins - 2 * mis;
    totals[b * n_samples + sample] = 2 * plus - n_spins;
  };
  auto measuring = [&](int64_t t) { return measure_every > 0 && (t + 1) % measure_every == 0; };
  auto update = [&](int64_t t, int c, int64_t b, int i0, int i1, uint32_t* buf) {
    if (use_avx512) {
      update_rows_avx512(args, t, c, b, i0, i1, buf);
    } else {
      update_rows<Portable>(args, t, c, b, i0, i1, buf);
    }
  };

  // One parallel region per call: packing, sweeps and unpacking share it (on a loaded
  // machine every fork / join and barrier can cost a scheduler time slice).
  if (whole_lattices) {
    // Enough lattices for every thread: each lattice is one task that packs, sweeps and
    // unpacks alone, so the threads never wait for one another.
    const int rows = static_cast<int>(std::min<int64_t>(L, std::max<int64_t>(1, kChunkSites / H)));
    const size_t buf_words = static_cast<size_t>((int64_t{rows} * H + 63) / 64 + 2) * 64;
#pragma omp parallel num_threads(threads)
    {
      std::vector<uint32_t> buf(buf_words);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        pack_rows(input, L, W, packed.data(), use_avx512, b * L, (b + 1) * L);
        for (int64_t t = 0; t < n_sweeps; ++t) {
          for (int c = 0; c < 2; ++c)
            for (int i0 = 0; i0 < L; i0 += rows) update(t, c, b, i0, std::min(L, i0 + rows), buf.data());
          if (measuring(t)) {
            const uint64_t* lattice = packed.data() + b * 2 * L * W;
            int64_t mis = 0, plus = 0;
            count_rows(lattice, lattice + int64_t{L} * W, L, 0, L, mis, plus);
            record(b, t, mis, plus);
          }
        }
        unpack_rows(packed.data(), L, W, output, use_avx512, b * L, (b + 1) * L);
      }
    }
  } else {
    // Fewer lattices than threads: every half-sweep is split into (lattice, row chunk)
    // tasks with a barrier between colours. Rows per task: kChunkSites sites, fewer when
    // that leaves under 4 tasks per thread.
    const int64_t by_size = std::max<int64_t>(1, kChunkSites / H);
    const int64_t by_balance = std::max<int64_t>(1, (B * L + 4 * threads - 1) / (4 * threads));
    const int rows = static_cast<int>(std::min<int64_t>(L, std::min(by_size, by_balance)));
    const int64_t chunks = (L + rows - 1) / rows;
    const int64_t tasks = B * chunks;
    const size_t buf_words = static_cast<size_t>((int64_t{rows} * H + 63) / 64 + 2) * 64;
    // per-task partial counts of a sample, summed in task order by one thread
    std::vector<int64_t> mismatched(static_cast<size_t>(tasks)), up(static_cast<size_t>(tasks));
#pragma omp parallel num_threads(threads)
    {
      std::vector<uint32_t> buf(buf_words);
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t first = (task / chunks) * L + (task % chunks) * rows;
        pack_rows(input, L, W, packed.data(), use_avx512, first,
                  std::min(first + rows, (task / chunks + 1) * L));
      }
      for (int64_t t = 0; t < n_sweeps; ++t) {
        for (int c = 0; c < 2; ++c) {
#pragma omp for schedule(static)
          for (int64_t task = 0; task < tasks; ++task) {
            const int i0 = static_cast<int>((task % chunks) * rows);
            update(t, c, task / chunks, i0, std::min(L, i0 + rows), buf.data());
          }
        }
        if (measuring(t)) {
#pragma omp for schedule(static)
          for (int64_t task = 0; task < tasks; ++task) {
            const int64_t b = task / chunks;
            const int i0 = static_cast<int>((task % chunks) * rows);
            const uint64_t* lattice = packed.data() + b * 2 * L * W;
            mismatched[task] = up[task] = 0;
            count_rows(lattice, lattice + int64_t{L} * W, L, i0, std::min(L, i0 + rows),
                       mismatched[task], up[task]);
          }
#pragma omp single
          for (int64_t b = 0; b < B; ++b) {
            int64_t mis = 0, plus = 0;
            for (int64_t j = b * chunks; j < (b + 1) * chunks; ++j) {
              mis += mismatched[j];
              plus += up[j];
            }
            record(b, t, mis, plus);
          }
        }
      }
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t first = (task / chunks) * L + (task % chunks) * rows;
        unpack_rows(packed.data(), L, W, output, use_avx512, first,
                    std::min(first + rows, (task / chunks + 1) * L));
      }
    }
  }

  return {out, bond_sums, spin_sums};
}

}  // namespace
}  // namespace genkernels::ising::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("ising_sweep", &genkernels::ising::cpu::ising_sweep_cpu);
}
