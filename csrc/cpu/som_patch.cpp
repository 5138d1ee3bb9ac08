// CPU kernel of som_patch_bmu (schema in csrc/genkernels.cpp, spec in
// genkernels/som/patch_reference.py): the nearest codebook row of every kh x kw patch of
// images (N, C, H, W) taken with strides (sh, sw), read straight from the images.
//
// The search is the SOM family's fused euclidean micro-kernel (som_bmu_kernel.h: register
// tiles of expanded distances |w|^2 - 2 x.w, a candidate filter with a rigorous margin, an
// exact recheck of the candidates; AVX-512 or AVX2 picked at run time) whose rows are the
// patches, gathered from the image MR at a time into a per-thread block buffer (PatchRows,
// som_cpu.h). Two passes, each parallel over chunks claimed one at a time by a team sized by
// its work (parallel_region.h): (1) over chunks of images, blank patches -- every pixel 0,
// the background of most images -- take the zero vector's answer, computed once, and the
// others are listed; (2) the micro-kernel over blocks of MR listed patches (consecutive along
// the rows of an image, then the next row, the next image), on a team sized by the
// multiply-adds (bmu_threads_for). No (N Hp Wp, C kh kw) im2col matrix is built: beside the
// inputs and the outputs the memory is the list (16 bytes a non-blank patch: its output
// row and image offset, against the 4 C kh kw bytes of an fp32 im2col row), the packed
// codebook and a few rows per thread. Every patch's result is decided by exact sums of squares of its own
// row in the fixed lane order of som_cpu.h, so the indices and distances equal bit for bit
// those of som_bmu's cpu kernel on the unfolded patches, whatever the team, and exact ties
// go to the lowest index.
//
// GENKERNELS_CPU_ISA=none runs the portable loop that serves builds without the AVX2
// kernel (exact distances to every node per patch), so the tests cover it.
//
// Accumulation in fp32 (fp64 for fp64 input): fp16/bf16 images are converted once. The
// inputs must be finite (a ValueError naming images or codebook); data outside the safe
// range of the squares runs on power-of-two-scaled copies (som_scale.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string_view>
#include <vector>

#include "cpu/parallel_region.h"
#include "cpu/som_cpu.h"
#include "cpu/som_scale.h"

namespace genkernels::som::cpu {
namespace {

bool portable_requested() {
  const char* isa = std::getenv("GENKERNELS_CPU_ISA");
  return isa != nullptr && std::string_view(isa) == "none";
}

// Without the micro-kernel: each listed patch gathered into a row, its exact distance to
// every node, the lowest (distance, index); kRowsPerChunk patches per chunk.
template <typename T>
void portable_patch_bmu(const PatchRows<T>& patches, int64_t n, const T* w, int64_t K, int64_t D, int64_t* idx,
                        T* dist) {
  constexpr int64_t kRowsPerChunk = 64;
  struct Scratch {
    std::vector<T> row, values;
    std::vector<int64_t> order;
  };
  const int team = genkernels::cpu::team_size(bmu_threads_for(n, K, D));
  std::vector<Scratch> states(team);
  genkernels::cpu::parallel_chunks((n + kRowsPerChunk - 1) / kRowsPerChunk, team, [&](int64_t chunk, int slot) {
    Scratch& st = states[slot];
    st.row.resize(D);
    for (int64_t r = chunk * kRowsPerChunk; r < std::min(n, (chunk + 1) * kRowsPerChunk); ++r) {
      const T* xr = patches.block(r, 1, st.row.data());
      const int64_t p = patches.out_row(r);
      exact_euclidean_row(xr, w, K, D, 1, idx + p, dist + p, st.values, st.order);
    }
  });
}

// The image geometry of one call: N images (C, H, W), kh x kw patches with strides (sh, sw),
// Hp x Wp of them per image.
struct Geometry {
  int64_t N, C, H, W, kh, kw, sh, sw, hp, wp;
};

// The patches the micro-kernel searches: output row and corner (images offset of pixel
// (0, 0) of channel 0) of each, in output order.
struct PatchList {
  std::vector<int64_t> ids, corners;
};

// Blank patches (every pixel 0: image background, 44% of MNIST's 5 x 5 patches) are all at
// the distances |w_j| from the nodes, so their answer is computed once -- the exact row
// search of the zero vector, the same bits the micro-kernel's exact recheck gives a zero row
// -- and written without a search; the others are listed, in order, for the search. A patch
// is blank when its window holds no nonzero pixel: per row of patches, the nonzero pixels of
// each column over its kh pixel rows and all channels are counted, then summed over kw
// columns through a prefix sum (about kh W C reads per row of patches, not Wp C kh kw).
// Parallel over chunks of whole images (about kBlankChunkPatches patches each); each chunk
// lists its own patches and the lists are joined in chunk order.
constexpr int64_t kBlankChunkPatches = 4096;

template <typename T>
PatchList answer_blank_patches(const T* images, const Geometry& g, const T* w, int64_t K, int64_t D, int64_t* idx,
                               T* dist) {
  int64_t blank_idx = 0;
  T blank_dist = 0;
  {
    std::vector<T> zeros(D, T(0)), scratch;
    std::vector<int64_t> order;
    exact_euclidean_row(zeros.data(), w, K, D, 1, &blank_idx, &blank_dist, scratch, order);
  }
  const int64_t per_image = g.hp * g.wp, plane = g.H * g.W;
  const int64_t images_per_chunk = std::max<int64_t>(1, kBlankChunkPatches / std::max<int64_t>(per_image, 1));
  const int64_t n_chunks = (g.N + images_per_chunk - 1) / images_per_chunk;
  std::vector<PatchList> listed(n_chunks);
  const int team = genkernels::cpu::team_size(g.N * g.hp * g.kh * g.W * g.C / (int64_t(1) << 18));
  genkernels::cpu::parallel_chunks(n_chunks, team, [&](int64_t chunk, int) {
    PatchList& mine = listed[chunk];
    std::vector<int64_t> column(g.W), prefix(g.W + 1, 0);
    for (int64_t n = chunk * images_per_chunk; n < std::min(g.N, (chunk + 1) * images_per_chunk); ++n) {
      const T* image = images + n * g.C * plane;
      for (int64_t i = 0; i < g.hp; ++i) {
        std::fill(column.begin(), column.end(), int64_t(0));
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t a = 0; a < g.kh; ++a) {
            const T* row = image + c * plane + (i * g.sh + a) * g.W;
            for (int64_t x = 0; x < g.W; ++x) column[x] += row[x] != T(0);
          }
        for (int64_t x = 0; x < g.W; ++x) prefix[x + 1] = prefix[x] + column[x];
        for (int64_t j = 0; j < g.wp; ++j) {
          const int64_t p = (n * g.hp + i) * g.wp + j, x0 = j * g.sw;
          if (prefix[x0 + g.kw] == prefix[x0]) {
            idx[p] = blank_idx;
            dist[p] = blank_dist;
          } else {
            mine.ids.push_back(p);
            mine.corners.push_back(n * g.C * plane + i * g.sh * g.W + x0);
          }
        }
      }
    }
  });
  PatchList all;
  for (const PatchList& part : listed) {
    all.ids.insert(all.ids.end(), part.ids.begin(), part.ids.end());
    all.corners.insert(all.corners.end(), part.corners.begin(), part.corners.end());
  }
  return all;
}

template <typename T>
void patch_bmu(const T* images, const Geometry& g, const T* w, int64_t K, int64_t D, int64_t* idx, T* dist) {
  const PatchList list = answer_blank_patches(images, g, w, K, D, idx, dist);
  const int64_t n = int64_t(list.ids.size());
  if (n == 0) return;
  const PatchRows<T> patches{images, g.H * g.W, g.W, g.C, g.kh, g.kw, list.corners.data(), list.ids.data()};
  if (portable_requested() || !(have_avx2_kernel() || have_avx512_kernel()))
    portable_patch_bmu(patches, n, w, K, D, idx, dist);
  else if (use_avx512_kernel())
    bmu_patch_euclidean_avx512(patches, n, w, K, D, 1, idx, dist);
  else
    bmu_patch_euclidean_avx2(patches, n, w, K, D, 1, idx, dist);
}

std::tuple<at::Tensor, at::Tensor> som_patch_bmu_cpu(const at::Tensor& images, const at::Tensor& codebook,
                                                      int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  TORCH_CHECK_VALUE(images.dim() == 4 && codebook.dim() == 2,
                    "som_patch_bmu: images (N, C, H, W) and codebook (K, C kh kw) expected; got ", images.sizes(),
                    " and ", codebook.sizes());
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1 && kh <= H && kw <= W, "som_patch_bmu: the patch (", kh, ", ", kw,
                    ") must fit the images (", H, ", ", W, ")");
  TORCH_CHECK_VALUE(sh >= 1 && sw >= 1, "som_patch_bmu: the strides must be >= 1; got (", sh, ", ", sw, ")");
  const int64_t D = C * kh * kw, K = codebook.size(0);
  TORCH_CHECK_VALUE(codebook.size(1) == D && K >= 1, "som_patch_bmu: codebook must be (K >= 1, ", D,
                    ") for ", C, " channels and ", kh, " x ", kw, " patches; got ", codebook.sizes());
  const int64_t hp = (H - kh) / sh + 1, wp = (W - kw) / sw + 1, n = N * hp * wp;
  const auto acc = images.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor ia = images.to(acc).contiguous();
  at::Tensor wa = codebook.to(acc).contiguous();
  at::Tensor idx = at::empty({N, hp, wp}, images.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N, hp, wp}, images.options().dtype(acc));
  if (n == 0) return {idx, dist.to(images.scalar_type())};
  int e = 0;
  AT_DISPATCH_FLOATING_TYPES(acc, "som_patch_bmu", [&] {
    bool images_finite = true, codebook_finite = true;
    const scalar_t m = std::max(finite_max_abs(ia.const_data_ptr<scalar_t>(), ia.numel(), &images_finite),
                                finite_max_abs(wa.const_data_ptr<scalar_t>(), wa.numel(), &codebook_finite));
    TORCH_CHECK_VALUE(images_finite, "images contains NaN or Inf");
    TORCH_CHECK_VALUE(codebook_finite, "codebook contains NaN or Inf");
    e = scale_exponent_for(m, D);
  });
  if (e != 0) {
    ia = ldexp_copy(ia, -e);
    wa = ldexp_copy(wa, -e);
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "som_patch_bmu", [&] {
    const Geometry g{N, C, H, W, kh, kw, sh, sw, hp, wp};
    patch_bmu(ia.const_data_ptr<scalar_t>(), g, wa.const_data_ptr<scalar_t>(), K, D, idx.data_ptr<int64_t>(),
              dist.data_ptr<scalar_t>());
  });
  if (e != 0) dist = ldexp_copy(dist, e);
  return {idx, dist.to(images.scalar_type())};
}

}  // namespace
}  // namespace genkernels::som::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("som_patch_bmu", &genkernels::som::cpu::som_patch_bmu_cpu);
}
