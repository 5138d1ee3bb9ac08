// CPU kernels of continuous modern Hopfield retrieval (schemas in csrc/genkernels.cpp, spec
// in genkernels/hopfield/retrieval_reference.py):
//
//   hopfield_retrieval           per-query patterns (B, P, D), or a shared set with few rows:
//                                every query row iterates alone, in place, in parallel over
//                                rows (OpenMP, dynamic: rows stop after different numbers of
//                                steps). A step is two passes over the row's P stored
//                                patterns: raw scores r_p = <X_p, xi> (a vectorised dot
//                                product each), then xi' = sum_p a_p X_p with
//                                a = softmax(beta r) (the max subtracted). The row stops once
//                                max_d |xi' - xi| is not > tol, or after max_steps.
//                                A shared set (1, P, D) from 8 rows on: tiles of rows iterate
//                                together, two at::mm per step and tile (see "a shared
//                                pattern set" below), stopped rows compacted out.
//   hopfield_retrieval_backward  the VJP through the steps each row took: the row's
//                                iterates are recomputed from the query (steps x D numbers,
//                                per thread), then walked backwards with the formulas of the
//                                reference's docstring (a shared set: per tile of rows, in
//                                matrix products). A shared set collects its gradient in one
//                                (P, D) buffer per chunk of rows -- a fixed split -- summed
//                                in chunk order, so the result does not depend on scheduling.
//
// Memory per thread: a row needs 2 P scores and (steps + 2) x D iterates; a tile
// (rows x P) buffers bounded by kTileBufferBytes. No (B, P) matrix. Arithmetic in the
// inputs' dtype (float or double).
#include <ATen/ATen.h>
#include <omp.h>

#include "parallel_region.h"
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <tuple>
#include <vector>

namespace genkernels::hopfield::cpu {
namespace {

template <typename scalar_t>
inline scalar_t dot(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t d) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < d; ++j) sum += a[j] * b[j];
  return sum;
}

// Raw scores raw[p] = <X_p, xi> and softmax weights a[p] = exp(s_p - m) / l of the scaled
// scores s_p = beta raw_p, m = max_p s_p. The scaled scores are rounded and stored once
// (in a) and the max is taken over those stored values, so s_p - m <= 0 exactly and every
// exponent is <= 1: written as exp(beta * raw[p] - m), the compiler may contract it into
// fma(beta, raw[p], -m), whose unrounded product differs from the rounded m by up to half
// an ulp of s_p -- hundreds at beta = 1e9 in fp32 -- so exp overflowed to inf and the row
// became inf / inf = NaN. (torch.softmax, the reference, subtracts its max the same way.)
template <typename scalar_t>
void softmax_weights(const scalar_t* __restrict__ x, int64_t p_count, int64_t d,
                     const scalar_t* __restrict__ xi, scalar_t beta, scalar_t* __restrict__ raw,
                     scalar_t* __restrict__ a) {
  scalar_t m = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t p = 0; p < p_count; ++p) {
    raw[p] = dot(x + p * d, xi, d);
    a[p] = beta * raw[p];
  }
  for (int64_t p = 0; p < p_count; ++p) m = std::max(m, a[p]);
  scalar_t l = 0;
  for (int64_t p = 0; p < p_count; ++p) {
    a[p] = std::exp(a[p] - m);
    l += a[p];
  }
  const scalar_t inv = scalar_t(1) / l;
  for (int64_t p = 0; p < p_count; ++p) a[p] *= inv;
}

// One step: next = X^T softmax(beta X xi). Returns max_d |next - xi|.
template <typename scalar_t>
scalar_t step(const scalar_t* __restrict__ x, int64_t p_count, int64_t d,
              const scalar_t* __restrict__ xi, scalar_t beta, scalar_t* __restrict__ raw,
              scalar_t* __restrict__ a, scalar_t* __restrict__ next) {
  softmax_weights(x, p_count, d, xi, beta, raw, a);
  std::fill(next, next + d, scalar_t(0));
  for (int64_t p = 0; p < p_count; ++p) {
    const scalar_t w = a[p];
    const scalar_t* __restrict__ row = x + p * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) next[j] += w * row[j];
  }
  scalar_t delta = 0;
  for (int64_t j = 0; j < d; ++j) {
    const scalar_t c = std::abs(next[j] - xi[j]);
    delta = (c > delta || c != c) ? c : delta;  // NaN propagates, so NaN stops the row
  }
  return delta;
}

// Row b iterates from its query; writes the result into out (D) and returns the steps.
template <typename scalar_t>
int64_t retrieve_row(const scalar_t* x, int64_t p_count, int64_t d, const scalar_t* query,
                     scalar_t beta, int64_t max_steps, scalar_t tol, scalar_t* out,
                     std::vector<scalar_t>& scratch) {
  scratch.resize(2 * p_count + d);
  scalar_t* raw = scratch.data();
  scalar_t* a = raw + p_count;
  scalar_t* next = a + p_count;
  std::copy(query, query + d, out);
  int64_t t = 0;
  while (t < max_steps) {
    const scalar_t delta = step(x, p_count, d, out, beta, raw, a, next);
    std::copy(next, next + d, out);
    ++t;
    if (!(delta > tol)) break;
  }
  return t;
}

// Threads the work (multiply-adds) pays for: one per kMinWorkPerThread, as the other cpu
// kernels (on 2 cores a thread team costs tens of microseconds to wake, and a time slice
// beside a busy process: see parallel_region.h).
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;

int64_t threads_for(int64_t work) { return std::max<int64_t>(1, work / kMinWorkPerThread); }

// Every row b owns row b of out and steps[b]; rows stop after different numbers of
// steps, hence chunks of one row claimed dynamically.
template <typename scalar_t>
void retrieve_batch(const scalar_t* q, const scalar_t* x, int64_t x_stride, int64_t b_count,
                    int64_t p_count, int64_t d, scalar_t beta, int64_t max_steps, scalar_t tol,
                    scalar_t* out, int64_t* steps) {
  const int team = genkernels::cpu::team_size(threads_for(b_count * max_steps * p_count * d));
  std::vector<std::vector<scalar_t>> scratch(team);
  genkernels::cpu::parallel_chunks(b_count, team, [&](int64_t b, int slot) {
    steps[b] = retrieve_row<scalar_t>(x + b * x_stride, p_count, d, q + b * d, beta, max_steps, tol,
                                      out + b * d, scratch[slot]);
  });
}

// queries (B, D), stored (B | 1, P, D) contiguous, in one dtype; beta a 0-d tensor.
void check_inputs(const char* op, const at::Tensor& queries, const at::Tensor& stored,
                  const at::Tensor& beta) {
  TORCH_CHECK(queries.dim() == 2, op, ": queries must be (B, D); got ", queries.sizes());
  TORCH_CHECK(stored.dim() == 3 && stored.size(2) == queries.size(1) &&
                  (stored.size(0) == queries.size(0) || stored.size(0) == 1),
              op, ": stored must be (B | 1, P, ", queries.size(1), "); got ", stored.sizes());
  TORCH_CHECK(queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble, op,
              ": queries must be float32 or float64; got ", queries.scalar_type());
  TORCH_CHECK(stored.scalar_type() == queries.scalar_type(), op, ": stored must have queries' dtype ",
              queries.scalar_type(), "; got ", stored.scalar_type());
  TORCH_CHECK(beta.numel() == 1, op, ": beta must hold one number; got ", beta.sizes());
  TORCH_CHECK(stored.size(1) > 0 || queries.size(0) == 0, op, ": stored must hold at least one pattern");
}

// ---- a shared pattern set: tiles of rows through at::mm --------------------------------
// With one (P, D) set for every query, the rows of a tile share the patterns, so a step is
// two matrix products per tile -- scores S = Xi X^T (rows x P) and Xi' = softmax(beta S) X
// -- each from a single-threaded at::mm inside the OpenMP region (BLAS runs serially
// there), and the softmax is ATen's vectorised kernel (max subtracted). Rows that stop are
// compacted out of the tile, so later steps multiply only the rows still running. The
// (rows x P) buffers are bounded (kTileBufferBytes), never (B, P).
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileBufferBytes = int64_t(4) << 20;

// Whether a shared set takes the tiled at::mm path: GENKERNELS_CPU_GEMM=0 / 1 forces it
// off / on (the tests run both); otherwise from 8 rows on.
bool use_tiles(int64_t b_count) {
  if (const char* force = std::getenv("GENKERNELS_CPU_GEMM")) {
    if (std::string_view(force) == "0") return false;
    if (std::string_view(force) == "1") return true;
  }
  return b_count >= 8;
}

int64_t tile_rows(int64_t b_count, int64_t p_count, int64_t elem_bytes, int64_t parts) {
  const int64_t by_buffer = std::max<int64_t>(1, kTileBufferBytes / (elem_bytes * std::max<int64_t>(p_count, 1)));
  return std::max<int64_t>(1, std::min({kTileRows, by_buffer, (b_count + parts - 1) / parts}));
}

template <typename scalar_t>
void retrieve_shared_tiles(const at::Tensor& q, const at::Tensor& x, scalar_t beta, int64_t max_steps,
                           scalar_t tol, at::Tensor& out, int64_t* steps) {
  const int64_t b_count = q.size(0), d = q.size(1), p_count = x.size(1);
  const at::Tensor xm = x[0];
  const at::Tensor xt = xm.t();
  // tiles for the threads the cost model pays for (not the thread setting: 10 rows split
  // into two tiles for a one-thread region took 1.13x the single tile's time), and never
  // for the busy-machine back-off, so the tiling -- and the result -- follows the setting
  // and the shape only
  const int64_t work = b_count * max_steps * p_count * d;
  const int64_t parts = std::min<int64_t>(omp_get_max_threads(), threads_for(work));
  const int64_t tile = tile_rows(b_count, p_count, sizeof(scalar_t), parts);
  const int64_t n_tiles = (b_count + tile - 1) / tile;
  const scalar_t* q_ptr = q.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  // per-thread buffers (parallel_chunks runs each tile below autograd, on a team sized by
  // the work and the busy-machine back-off)
  struct Buffers {
    at::Tensor scores, weights, cur, next;
    std::vector<int64_t> row_of;
  };
  const int team = genkernels::cpu::team_size(parts);
  std::vector<Buffers> buffers(team);
  genkernels::cpu::parallel_chunks(n_tiles, team, [&](int64_t t, int slot) {
    Buffers& buf = buffers[slot];
    if (!buf.scores.defined()) {
      buf.scores = at::empty({tile, p_count}, q.options());
      buf.weights = at::empty({tile, p_count}, q.options());
      buf.cur = at::empty({tile, d}, q.options());
      buf.next = at::empty({tile, d}, q.options());
      buf.row_of.resize(tile);
    }
    at::Tensor &scores = buf.scores, &weights = buf.weights, &cur = buf.cur, &next = buf.next;
    std::vector<int64_t>& row_of = buf.row_of;
    {
      const int64_t r0 = t * tile, rows = std::min(tile, b_count - r0);
      scalar_t* cur_ptr = cur.mutable_data_ptr<scalar_t>();
      std::copy(q_ptr + r0 * d, q_ptr + (r0 + rows) * d, cur_ptr);
      for (int64_t i = 0; i < rows; ++i) row_of[i] = r0 + i;
      int64_t active = rows;
      for (int64_t step_no = 1; step_no <= max_steps && active > 0; ++step_no) {
        at::Tensor s = scores.narrow(0, 0, active), a = weights.narrow(0, 0, active);
        at::Tensor n = next.narrow(0, 0, active);
        at::mm_out(s, cur.narrow(0, 0, active), xt);
        s.mul_(beta);
        at::_softmax_out(a, s, 1, false);
        at::mm_out(n, a, xm);
        const scalar_t* next_ptr = next.const_data_ptr<scalar_t>();
        int64_t kept = 0;
        for (int64_t i = 0; i < active; ++i) {
          const scalar_t* n_row = next_ptr + i * d;
          const scalar_t* c_row = cur_ptr + i * d;
          scalar_t delta = 0;
          for (int64_t j = 0; j < d; ++j) {
            const scalar_t c = std::abs(n_row[j] - c_row[j]);
            delta = (c > delta || c != c) ? c : delta;
          }
          const int64_t r = row_of[i];
          std::copy(n_row, n_row + d, out_ptr + r * d);
          steps[r] = step_no;
          if (delta > tol) {  // still running: keep it, compacted to position `kept`
            std::copy(n_row, n_row + d, cur_ptr + kept * d);
            row_of[kept++] = r;
          }
        }
        active = kept;
      }
    }
  });
}

// The VJP of a tile of rows (r0 .. r0 + rows) against the shared set, in ATen ops on the
// tile: the iterates recomputed (max steps of the tile x rows x D), then the steps walked
// backwards as in the reference (a row contributes only at steps t < steps[b]). dL/dX is
// added to gx (P, D); dL/dbeta of each row to gbeta; dL/dqueries written to grad_q.
template <typename scalar_t>
void backward_shared_tile(const at::Tensor& q, const at::Tensor& x, const at::Tensor& grad,
                          const at::Tensor& steps, scalar_t beta, int64_t r0, int64_t rows,
                          at::Tensor& gx, at::Tensor& gbeta, at::Tensor& grad_q) {
  const at::Tensor xm = x[0];
  const at::Tensor xt = xm.t();
  const at::Tensor tile_steps = steps.narrow(0, r0, rows);
  const int64_t t_max = tile_steps.max().item<int64_t>();
  std::vector<at::Tensor> iterates{q.narrow(0, r0, rows)};
  for (int64_t t = 1; t < t_max; ++t) {
    const at::Tensor& xi = iterates.back();
    const at::Tensor a = at::_softmax(at::mm(xi, xt).mul_(beta), 1, false);
    iterates.push_back(at::where(tile_steps.gt(t - 1).unsqueeze(1), at::mm(a, xm), xi));
  }
  at::Tensor g = grad.narrow(0, r0, rows).clone();
  at::Tensor gb = gbeta.narrow(0, r0, rows);
  for (int64_t t = t_max - 1; t >= 0; --t) {
    const at::Tensor& xi = iterates[t];
    const at::Tensor live = tile_steps.gt(t).unsqueeze(1).to(q.scalar_type());  // (rows, 1)
    const at::Tensor raw = at::mm(xi, xt);
    const at::Tensor a = at::_softmax(raw * beta, 1, false).mul_(live);
    const at::Tensor u = at::mm(g, xt);
    const at::Tensor ds = a * (u - (a * u).sum(1, true));
    gb.add_((ds * raw).sum(1));
    gx.addmm_(a.t(), g);
    gx.addmm_(ds.t(), xi, 1, beta);
    g = at::where(live.to(at::kBool), at::mm(ds, xm).mul_(beta), g);
  }
  grad_q.narrow(0, r0, rows).copy_(g);
}

template <typename scalar_t>
void backward_shared_tiles(const at::Tensor& q, const at::Tensor& x, const at::Tensor& grad,
                           const at::Tensor& steps, scalar_t beta, int64_t chunks, at::Tensor& chunk_gx,
                           at::Tensor& gbeta, at::Tensor& grad_q) {
  const int64_t b_count = q.size(0);
  const int64_t tile = tile_rows(b_count, x.size(1), sizeof(scalar_t), chunks);
  const int64_t n_tiles = (b_count + tile - 1) / tile;
  // chunk c owns tiles c, c + chunks, ...: a fixed assignment, so the sums do not depend
  // on scheduling
  genkernels::cpu::parallel_chunks(chunks, genkernels::cpu::team_size(chunks), [&](int64_t c, int) {
    at::Tensor gx = chunk_gx[c];
    for (int64_t t = c; t < n_tiles; t += chunks) {
      const int64_t r0 = t * tile;
      backward_shared_tile<scalar_t>(q, x, grad, steps, beta, r0, std::min(tile, b_count - r0), gx, gbeta,
                                     grad_q);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> hopfield_retrieval_cpu(const at::Tensor& queries,
                                                          const at::Tensor& stored,
                                                          const at::Tensor& beta, int64_t max_steps,
                                                          double tol) {
  check_inputs("hopfield_retrieval", queries, stored, beta);
  TORCH_CHECK(max_steps >= 1, "hopfield_retrieval: max_steps must be >= 1; got ", max_steps);
  const int64_t b_count = queries.size(0), d = queries.size(1), p_count = stored.size(1);
  at::Tensor out = at::empty_like(queries, at::MemoryFormat::Contiguous);
  at::Tensor steps = at::zeros({b_count}, queries.options().dtype(at::kLong));
  if (b_count == 0) return {out, steps};
  const at::Tensor q = queries.contiguous();
  const at::Tensor x = stored.contiguous();
  const int64_t x_stride = x.size(0) == 1 ? 0 : p_count * d;
  int64_t* steps_ptr = steps.mutable_data_ptr<int64_t>();

  const bool tiles = x_stride == 0 && use_tiles(b_count);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hopfield_retrieval", [&] {
    if (tiles) {
      retrieve_shared_tiles<scalar_t>(q, x, beta.to(at::kCPU).item<scalar_t>(), max_steps,
                                      static_cast<scalar_t>(tol), out, steps_ptr);
      return;
    }
    retrieve_batch<scalar_t>(q.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), x_stride, b_count,
                             p_count, d, beta.to(at::kCPU).item<scalar_t>(), max_steps,
                             static_cast<scalar_t>(tol), out.mutable_data_ptr<scalar_t>(), steps_ptr);
  });
  return {out, steps};
}

// The VJP of row b through its `t_count` steps. Adds dL/dX to gx (P, D) and returns
// dL/dbeta of the row; writes dL/dquery into gq (D).
template <typename scalar_t>
scalar_t backward_row(const scalar_t* __restrict__ x, int64_t p_count, int64_t d,
                      const scalar_t* query, const scalar_t* grad, scalar_t beta, int64_t t_count,
                      scalar_t* __restrict__ gx, scalar_t* __restrict__ gq,
                      std::vector<scalar_t>& scratch) {
  // iterates (t_count x D: xi_0 .. xi_{t_count-1}), raw, a, u (P each), next (D)
  scratch.resize(static_cast<size_t>(t_count * d + 3 * p_count + d));
  scalar_t* iterates = scratch.data();
  scalar_t* raw = iterates + t_count * d;
  scalar_t* a = raw + p_count;
  scalar_t* u = a + p_count;
  scalar_t* g_next = u + p_count;
  std::copy(query, query + d, iterates);
  for (int64_t t = 1; t < t_count; ++t)
    step(x, p_count, d, iterates + (t - 1) * d, beta, raw, a, iterates + t * d);
  scalar_t* g = gq;  // dL/dxi_{t+1}, walked back to dL/dxi_0 in place
  std::copy(grad, grad + d, g);
  scalar_t grad_beta = 0;
  for (int64_t t = t_count - 1; t >= 0; --t) {
    const scalar_t* xi = iterates + t * d;
    softmax_weights(x, p_count, d, xi, beta, raw, a);
    scalar_t mean = 0;
    for (int64_t p = 0; p < p_count; ++p) {
      u[p] = dot(x + p * d, g, d);  // dL/da_p
      mean += a[p] * u[p];
    }
    std::fill(g_next, g_next + d, scalar_t(0));
    for (int64_t p = 0; p < p_count; ++p) {
      const scalar_t ds = a[p] * (u[p] - mean);  // dL/ds_p
      grad_beta += ds * raw[p];
      const scalar_t* __restrict__ row = x + p * d;
      scalar_t* __restrict__ grow = gx + p * d;
      const scalar_t ap = a[p], bds = beta * ds;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        grow[j] += ap * g[j] + bds * xi[j];
        g_next[j] += bds * row[j];
      }
    }
    std::copy(g_next, g_next + d, g);
  }
  return grad_beta;
}

// Rows in parallel. A per-row X: row b writes its own gx slice. A shared X: chunk c of
// consecutive rows accumulates into gx + c * P * D (the caller sums the chunks in order).
template <typename scalar_t>
void backward_batch(const scalar_t* q, const scalar_t* x, int64_t x_stride, const scalar_t* grad,
                    const int64_t* steps, int64_t b_count, int64_t p_count, int64_t d, scalar_t beta,
                    bool shared, int64_t chunks, scalar_t* gx, scalar_t* gq, scalar_t* gbeta) {
  int64_t max_steps = 1;
  for (int64_t b = 0; b < b_count; ++b) max_steps = std::max(max_steps, steps[b]);
  const int64_t work = b_count * max_steps * p_count * d;
  if (shared) {
    genkernels::cpu::parallel_chunks(chunks, genkernels::cpu::team_size(std::min(chunks, threads_for(work))),
                                     [&](int64_t c, int) {
      std::vector<scalar_t> scratch;
      const int64_t lo = b_count * c / chunks, hi = b_count * (c + 1) / chunks;
      for (int64_t b = lo; b < hi; ++b) {
        gbeta[b] = backward_row<scalar_t>(x, p_count, d, q + b * d, grad + b * d, beta, steps[b],
                                          gx + c * p_count * d, gq + b * d, scratch);
      }
    });
    return;
  }
  const int team = genkernels::cpu::team_size(threads_for(work));
  std::vector<std::vector<scalar_t>> scratch(team);
  genkernels::cpu::parallel_chunks(b_count, team, [&](int64_t b, int slot) {
    gbeta[b] = backward_row<scalar_t>(x + b * x_stride, p_count, d, q + b * d, grad + b * d, beta,
                                      steps[b], gx + b * x_stride, gq + b * d, scratch[slot]);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hopfield_retrieval_backward_cpu(
    const at::Tensor& grad, const at::Tensor& queries, const at::Tensor& stored, const at::Tensor& beta,
    const at::Tensor& steps) {
  check_inputs("hopfield_retrieval_backward", queries, stored, beta);
  TORCH_CHECK(grad.sizes() == queries.sizes(), "hopfield_retrieval_backward: grad must have queries' shape ",
              queries.sizes(), "; got ", grad.sizes());
  TORCH_CHECK(steps.dim() == 1 && steps.size(0) == queries.size(0) && steps.scalar_type() == at::kLong,
              "hopfield_retrieval_backward: steps must be (", queries.size(0), ",) int64; got ",
              steps.sizes(), " ", steps.scalar_type());
  const int64_t b_count = queries.size(0), d = queries.size(1), p_count = stored.size(1);
  const bool shared = stored.size(0) == 1 && b_count != 1;
  at::Tensor grad_q = at::empty_like(queries, at::MemoryFormat::Contiguous);
  at::Tensor grad_x = at::zeros_like(stored, at::MemoryFormat::Contiguous);
  at::Tensor grad_beta = at::zeros({}, queries.options());
  if (b_count == 0) return {grad_q, grad_x, grad_beta};
  const at::Tensor q = queries.contiguous();
  const at::Tensor x = stored.contiguous();
  const at::Tensor g_out = grad.to(queries.scalar_type()).contiguous();
  const at::Tensor steps_c = steps.contiguous();
  const int64_t x_stride = x.size(0) == 1 ? 0 : p_count * d;
  // a shared X: one gradient buffer per chunk of consecutive rows (a fixed split)
  const int64_t chunks = shared ? std::min<int64_t>(b_count, std::max(1, omp_get_max_threads())) : 1;
  at::Tensor chunk_gx = shared ? at::zeros({chunks, p_count, d}, queries.options()) : at::Tensor();
  at::Tensor row_gbeta = at::zeros({b_count}, queries.options());

  const bool tiles = shared && use_tiles(b_count);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hopfield_retrieval_backward", [&] {
    if (tiles) {
      backward_shared_tiles<scalar_t>(q, x, g_out, steps_c, beta.to(at::kCPU).item<scalar_t>(), chunks,
                                      chunk_gx, row_gbeta, grad_q);
      return;
    }
    backward_batch<scalar_t>(q.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), x_stride,
                             g_out.const_data_ptr<scalar_t>(), steps_c.const_data_ptr<int64_t>(), b_count,
                             p_count, d, beta.to(at::kCPU).item<scalar_t>(), shared, chunks,
                             shared ? chunk_gx.mutable_data_ptr<scalar_t>() : grad_x.mutable_data_ptr<scalar_t>(),
                             grad_q.mutable_data_ptr<scalar_t>(), row_gbeta.mutable_data_ptr<scalar_t>());
  });
  if (shared) grad_x.copy_(chunk_gx.sum(0, /*keepdim=*/true));
  grad_beta.copy_(row_gbeta.sum());
  return {grad_q, grad_x, grad_beta};
}

}  // namespace
}  // namespace genkernels::hopfield::cpu

TORCH_LIBRARY_IMPL(genkernels, CPU, m) {
  m.impl("hopfield_retrieval", &genkernels::hopfield::cpu::hopfield_retrieval_cpu);
  m.impl("hopfield_retrieval_backward", &genkernels::hopfield::cpu::hopfield_retrieval_backward_cpu);
}
