// Fused euclidean BMU micro-kernel, written once over a SIMD traits type V and compiled
// per ISA: som_bmu_avx2.cpp (AVX2+FMA) and som_bmu_avx512.cpp (under
// `#pragma GCC target("avx512...")`, picked at run time). Each includes this header inside
// its own namespace, so the two instantiations never share a symbol.
//
// V provides: T (float/double), R (register), W (lanes), zero, load, set1, fmadd(a, b, c)
// = a*b+c, store, and le_mask(a, b) -> bitmask of lanes with a <= b.
//
// Algorithm, per block of MR samples (one OpenMP work item; the blocks own disjoint rows):
//   1. Expanded distances e_j = |w_j|^2 - 2 x.w_j are computed MR rows x NR = NV*W nodes
//      at a time in registers (an MR x NR outer-product GEMM over D against a packed weight
//      panel: w transposed to (D, NR) so each step of the D loop is NV aligned vector loads
//      and MR broadcasts feeding MR*NV FMAs). |x|^2 is a per-row constant and is left out.
//   2. Each register tile is reduced at once: lanes with e_j <= threshold(row) (a vector
//      compare and a bitmask, almost always empty) go into the row's candidate list. No
//      (N, K) matrix and no per-tile distance buffer is stored.
//   3. The expansion cancels: its absolute error is up to about (D + 4) u (|x|^2 + |w_j|^2)
//      (u the unit roundoff), far above an ulp of small distances. The candidate list
//      therefore keeps every node whose expanded value is within `margin` = 3 (D + 8) u
//      (|x|^2 + max_j |w_j|^2) of the k-th best expanded value -- a superset of the true
//      top k -- and the result is decided on exact sums of squares (x - w)^2 recomputed for
//      those candidates only, ordered by (sqrt, node index) as the reference sorts. A row
//      whose list overflows (many nodes within the margin, e.g. duplicated weights) or
//      holds fewer than k finite values (NaN/inf data) is recomputed exactly over all nodes.
//      The candidate list and this last step (Candidates, finish_candidates in som_cpu.h) are
//      shared with the BLAS-tiled path of large D (som.cpp).
//
// The samples come from `source` (som_cpu.h): DenseRows reads the rows of an (n, D) matrix
// in place; PatchRows gathers image patches (som_patch_bmu) into the block's row buffer, so
// no im2col matrix is built, and writes each result to its patch's output row. Either way a
// block's MR rows are then contiguous, and every step above is the same.
template <typename V, int MR, int NV, typename Rows>
void bmu_euclidean_fused(const Rows& source, int64_t n_rows, const typename V::T* w, int64_t n_nodes,
                         int64_t d_features, int64_t k, int64_t* out_idx, typename V::T* out_dist) {
  using T = typename V::T;
  using R = typename V::R;
  constexpr int W = V::W;
  constexpr int NR = NV * W;
  const int64_t D = d_features;
  const int64_t n_panels = (n_nodes + NR - 1) / NR;

  // Pack weights into panels of NR nodes, transposed to (D, NR); padding nodes are zero
  // with |w|^2 = +inf so they never pass the threshold test before a real node.
  AlignedBuffer<T> packed(n_panels * D * NR);
  AlignedBuffer<T> norms(n_panels * NR);
  T max_norm = 0;
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int l = 0; l < NR; ++l) {
      const int64_t j = p * NR + l;
      T* dst = packed.get() + p * D * NR + l;
      if (j < n_nodes) {
        const T* src = w + j * D;
        for (int64_t d = 0; d < D; ++d) dst[d * NR] = src[d];
        const T nrm = dot(src, src, D);
        norms.get()[j] = nrm;
        max_norm = std::max(max_norm, nrm);
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d * NR] = T(0);
        norms.get()[j] = std::numeric_limits<T>::infinity();
      }
    }
  }
  const T margin_scale = euclidean_margin_scale<T>(D);
  const int64_t n_blocks = (n_rows + MR - 1) / MR;

  // per-thread state; blocks of MR rows claimed a chunk of blocks at a time on a team sized
  // by the multiply-adds (parallel_region.h: one thread for small calls or a busy machine)
  struct Scratch {
    AlignedBuffer<T> xt;     // the block's samples transposed to (D, MR)
    AlignedBuffer<T> xrows;  // the block's samples as rows, where the source gathers them
    Candidates<T> cand[MR];
    std::vector<T> scratch;
    std::vector<int64_t> order;
    explicit Scratch(int64_t d) : xt(d * MR), xrows(d * MR) {}
  };
  constexpr int64_t kBlocksPerChunk = 8;
  const int team = genkernels::cpu::team_size(bmu_threads_for(n_rows, n_nodes, D));
  std::vector<std::unique_ptr<Scratch>> states(team);
  genkernels::cpu::parallel_chunks((n_blocks + kBlocksPerChunk - 1) / kBlocksPerChunk, team, [&](int64_t chunk, int slot) {
    if (!states[slot]) states[slot] = std::make_unique<Scratch>(D);
    AlignedBuffer<T>& xt = states[slot]->xt;
    Candidates<T>* cand = states[slot]->cand;
    std::vector<T>& scratch = states[slot]->scratch;
    std::vector<int64_t>& order = states[slot]->order;
    alignas(64) T lanes[W];
    for (int64_t blk = chunk * kBlocksPerChunk; blk < std::min(n_blocks, (chunk + 1) * kBlocksPerChunk); ++blk) {
      const int64_t r0 = blk * MR;
      const int rows = int(std::min<int64_t>(MR, n_rows - r0));
      const T* xb = source.block(r0, rows, states[slot]->xrows.get());
      for (int i = 0; i < MR; ++i) {
        const T* xr = xb + std::min(i, rows - 1) * D;
        for (int64_t d = 0; d < D; ++d) xt.get()[d * MR + i] = xr[d];
        cand[i].reset(int(k), margin_scale * (dot(xr, xr, D) + max_norm));
      }

      for (int64_t p = 0; p < n_panels; ++p) {
        const T* panel = packed.get() + p * D * NR;
        R acc[MR][NV];
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
        for (int64_t d = 0; d < D; ++d) {
          R wv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) wv[v] = V::load(panel + d * NR + v * W);
          const T* xd = xt.get() + d * MR;
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            const R xb = V::set1(xd[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(xb, wv[v], acc[i][v]);
          }
        }
        const R minus_two = V::set1(T(-2));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const R nrm = V::load(norms.get() + p * NR + v * W);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) acc[i][v] = V::fmadd(acc[i][v], minus_two, nrm);
        }
        if (p == 0 && k == 1) {
          // The first panel finds every row's list empty (threshold +inf), so each of its NR
          // keys would be pushed, most to be dropped at once: seed the threshold with the
          // panel's best key instead (the list ends with the same nodes). One thread of a
          // 2-core AMD EPYC (AVX2), ns a row before / after: K = 16, D = 8: 98-108 / 44-48;
          // K = 112, D = 25: 231-239 / 168-174; K = 1,024, D = 64: 1,901-2,016 / 1,754-1,821.
          // Padding nodes' keys are +inf, a NaN key never wins the comparison.
          alignas(64) T keys[NR];
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) V::store(keys + v * W, acc[i][v]);
            T best = keys[0];
            for (int l = 1; l < NR; ++l) best = keys[l] < best ? keys[l] : best;
            cand[i].thr = std::min(cand[i].thr, best + cand[i].margin);
          }
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            const R e = acc[i][v];
            unsigned mask = V::le_mask(e, V::set1(cand[i].thr));
            if (mask == 0) continue;
            V::store(lanes, e);
            const int64_t j0 = p * NR + v * W;
            while (mask) {
              const int l = __builtin_ctz(mask);
              mask &= mask - 1;
              if (j0 + l < n_nodes) cand[i].push(lanes[l], j0 + l);
            }
          }
        }
      }

      for (int i = 0; i < rows; ++i) {
        const int64_t r = source.out_row(r0 + i);
        const T* xr = xb + i * D;
        int64_t* ri = out_idx + r * k;
        T* rd = out_dist + r * k;
        finish_candidates(xr, w, n_nodes, D, k, cand[i], ri, rd, scratch, order);
      }
    }
  });
}
