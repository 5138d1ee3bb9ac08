// Every C++ op of genkernels, declared once. Device implementations register with
// TORCH_LIBRARY_IMPL(genkernels, CPU|CUDA, m) in csrc/cpu/*.cpp and csrc/cuda/*_ops.cpp;
// fake (meta) kernels and autograd are registered in Python (genkernels/<family>/ops.py).
#include <Python.h>
#include <torch/library.h>

// `import genkernels._C` loads this library, which runs the registrations below; the
// module itself is empty (no pybind11: every op is reached through torch.ops.genkernels).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(genkernels, m) {
  // ---- random numbers (genkernels/random.py, csrc/common/philox.h) ----
  // Philox4x32-10 with Triton's layout: key = seed (the int64 pattern of a seed in
  // [0, 2^64)), counter = the int64 offset. offsets (...) int64 -> (..., 4) uint32, the four
  // words of tl.randint4x(seed, offsets).
  m.def("philox_randint4x(int seed, Tensor offsets) -> Tensor");
  // offsets (...) int64 -> (...) float32 in [0, 1): tl.rand(seed, offsets).
  m.def("philox_rand(int seed, Tensor offsets) -> Tensor");
  // ---- self-organizing maps (genkernels/som) ----
  // x (N, D), weights (K, D) -> indices (N, k) int64, distances (N, k) in x's dtype,
  // ascending, ties to the lowest node index. metric: euclidean|cosine|manhattan|chebyshev.
  // ignore_nan: NaN features are skipped and the distance rescaled to the present ones.
  m.def("som_bmu(Tensor x, Tensor weights, int k, str metric, bool ignore_nan) -> (Tensor, Tensor)");
  // Voronoi sums of the batch rule: sums (K, D) and counts ((K,) or (K, D) when ignore_nan)
  // of the samples each node wins, accumulated in fp32 (fp64 for fp64 input), and the sum of
  // the winners' distances (a 0-d fp64 tensor: N * quantization error before the update).
  m.def("som_node_sums(Tensor x, Tensor weights, str metric, bool ignore_nan) -> (Tensor, Tensor, Tensor)");
  // The patch BMU (genkernels/som/patch_reference.py): images (N, C, H, W), codebook (K >= 1,
  // C kh kw) -> indices (N, Hp, Wp) int64 and Euclidean distances (N, Hp, Wp) in images' dtype:
  // the nearest codebook row of every kh x kw patch taken with strides (sh, sw), no padding
  // (Hp = (H - kh) / sh + 1, Wp = (W - kw) / sw + 1), features in unfold's (c, a, b) order;
  // ties to the lowest index. Patches are read from the images (no im2col matrix). Inputs
  // must be finite (ValueError naming the one that is not).
  m.def("som_patch_bmu(Tensor images, Tensor codebook, int kh, int kw, int sh, int sw) -> (Tensor, Tensor)");
  // Kohonen's sequential rule over a whole epoch for M independent maps.
  // weights (M, K, D); x (N, D); order (M, T) int64 sample index of each step;
  // lr, sigma (M, T) per-step rates; coords (K, 2) lattice positions; period_0/1 the torus
  // periods of each coordinate (0 = not periodic). neighborhood: gaussian|bubble|mexican_hat|
  // triangle; rule: som|wta|wtm. Returns the trained weights (M, K, D) (input untouched).
  m.def("som_online(Tensor weights, Tensor x, Tensor order, Tensor lr, Tensor sigma, Tensor coords, "
        "float period_0, float period_1, str neighborhood, str rule, str metric) -> Tensor");
  // The soft SOM (genkernels/som/soft_reference.py): x (B, D), nodes (K >= 1, D), values
  // (K, C) float32|float64, beta a 0-d tensor in their dtype. s_bk = -beta d_bk with d the
  // Euclidean distance ||x_b - l_k|| or, with squared, its square. Returns out (B, C) =
  // softmax_k(s) @ values and the row statistics m (B,) = max_k s_bk and Z (B,) =
  // sum_k exp(s_bk - m_b), in one pass over node tiles (no (B, K) matrix).
  m.def("som_soft(Tensor x, Tensor nodes, Tensor values, Tensor beta, bool squared) -> (Tensor, Tensor, Tensor)");
  // Its VJP from the forward's out, m and z (each tile's scores recomputed; the Euclidean
  // gradient is 0 where x_b = l_k): grad (B, C) -> (grad_x (B, D), grad_nodes (K, D),
  // grad_values (K, C), grad_beta 0-d).
  m.def("som_soft_backward(Tensor grad, Tensor x, Tensor nodes, Tensor values, Tensor beta, Tensor out, "
        "Tensor m, Tensor z, bool squared) -> (Tensor, Tensor, Tensor, Tensor)");
  // The SOM-masked layers (genkernels/som/mask_reference.py): winners int64 (the SOM's
  // winning node per row, or per image / position for the convolution) index the tables
  // kept (K, S) int64 -- each winner's kept outputs, ascending, -1 padding -- and values
  // (K, S), their mask values. Only the kept outputs are computed: out = act(m (x . W_c +
  // b_c)), act the ReLU when relu, 0 elsewhere. x (B, D), weight (C, D), bias (C,) or None,
  // winners (B,) -> out (B, C).
  m.def("som_mask_linear(Tensor x, Tensor weight, Tensor? bias, Tensor winners, Tensor kept, Tensor values, "
        "bool relu) -> Tensor");
  // Its VJP from the forward's out (the mask is a constant): grad (B, C) -> (grad_x (B, D),
  // grad_weight (C, D), grad_bias (C,)); an output whose output_mask entry is false comes
  // back empty, (0,).
  m.def("som_mask_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor winners, Tensor kept, "
        "Tensor values, Tensor out, bool relu, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The convolution: x (B, Cin, H, W), weight (C, Cin, kh, kw), winners (B, 1) (one winner
  // per image) or (B, Ho * Wo) (one per output position, row-major) -> out (B, C, Ho, Wo).
  m.def("som_mask_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor winners, Tensor kept, Tensor values, "
        "int[2] stride, int[2] padding, int[2] dilation, bool relu) -> Tensor");
  m.def("som_mask_conv2d_backward(Tensor grad, Tensor x, Tensor weight, Tensor winners, Tensor kept, "
        "Tensor values, Tensor out, int[2] stride, int[2] padding, int[2] dilation, bool relu, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // ---- Masked autoregressive models (genkernels/autoregressive) ----
  // The masked convolution (spec: genkernels/autoregressive/conv_reference.py): x (B, Cin,
  // H, W), weight (Cout, Cin, kh, kw) with odd sides, bias (Cout,) or None; rules: one per
  // tap, row-major -- 0 off, 1 full, 2 strict (output channel group g sees input groups < g),
  // 3 inclusive (<= g) -- over channel_groups contiguous groups; "same" padding, stride 1
  // -> out (B, Cout, H, W). Only the kept taps (and channel groups) are multiplied.
  m.def("masked_conv2d(Tensor x, Tensor weight, Tensor? bias, int[] rules, int channel_groups, int dilation) "
        "-> Tensor");
  // Its VJP: grad (B, Cout, H, W) -> (grad_x, grad_weight (zero at the masked entries),
  // grad_bias); an output whose output_mask entry is false comes back empty, (0,).
  m.def("masked_conv2d_backward(Tensor grad, Tensor x, Tensor weight, int[] rules, int channel_groups, "
        "int dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The gated masked convolution of a Gated PixelCNN layer: pre = masked_conv2d(x, ...) +
  // addend (B, Cout, H, W) if given; out = tanh(a) * sigmoid(b) over pre's channel_groups
  // blocks [a | b] (Cout divisible by 2 channel_groups) -> (out (B, Cout / 2, H, W), pre).
  m.def("masked_conv2d_gated(Tensor x, Tensor weight, Tensor? bias, Tensor? addend, int[] rules, "
        "int channel_groups, int dilation) -> (Tensor, Tensor)");
  // The gate's VJP: grad (B, C / 2, H, W), pre (B, C, H, W) -> grad of pre.
  m.def("gate_backward(Tensor grad, Tensor pre, int groups) -> Tensor");
  // The discretised logistic mixture's log-likelihood (PixelCNN++; spec:
  // genkernels/autoregressive/mixture_reference.py): params (B, P, H, W) with P = K (1 + 2C +
  // C (C - 1) / 2), v (B, C, H, W) integer levels in [0, levels) as params' dtype -> log p
  // per pixel (B, H, W).
  m.def("logistic_mixture_log_prob(Tensor params, Tensor v, int mixtures, int levels) -> Tensor");
  // Its VJP: grad (B, H, W) -> grad of params (B, P, H, W).
  m.def("logistic_mixture_log_prob_backward(Tensor grad, Tensor params, Tensor v, int mixtures, int levels) "
        "-> Tensor");
  // The masked linear layer (spec: genkernels/autoregressive/linear_reference.py): x (B,
  // Din), weight (Dout, Din), bias (Dout,) or None, prefix (Dout,) int64 in [0, Din] -- output
  // j sees the inputs [0, prefix_j) -> out (B, Dout); the zero blocks are skipped.
  m.def("masked_linear(Tensor x, Tensor weight, Tensor? bias, Tensor prefix) -> Tensor");
  // Its VJP: grad (B, Dout) -> (grad_x, grad_weight (zero at the masked entries), grad_bias);
  // an output whose output_mask entry is false comes back empty, (0,).
  m.def("masked_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor prefix, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // MADE's whole network, fused (spec: genkernels/autoregressive/mlp_reference.py): x (B,
  // D0), weights[l] (D_l+1, D_l), biases[l] (D_l+1,), prefixes[l] (D_l+1,) int64 in [0, D_l],
  // ReLU between the layers, optional masked skip (D_L, D0) from x to the output -> (out (B,
  // D_L), the L - 1 hidden activations after their ReLU, for the backward).
  m.def("masked_mlp(Tensor x, Tensor[] weights, Tensor[] biases, Tensor[] prefixes, Tensor? skip_weight, "
        "Tensor? skip_prefix) -> (Tensor, Tensor[])");
  // Its VJP: grad (B, D_L) -> (grad_x ((0,) unless need_x), grad_weights (zero at the masked
  // entries), grad_biases, grad_skip_weight ((0,) without a skip)).
  m.def("masked_mlp_backward(Tensor grad, Tensor x, Tensor[] hidden, Tensor[] weights, Tensor[] prefixes, "
        "Tensor? skip_weight, Tensor? skip_prefix, bool need_x) -> (Tensor, Tensor[], Tensor[], Tensor)");
  // ---- Normalizing flows (genkernels/flows) ----
  // The affine coupling's elementwise part (spec: genkernels/flows/coupling_reference.py): x
  // (B, N), params (B, 2N) (raw log-scales, then shifts; features contiguous, rows any
  // stride), mask (N,) 1 = kept, bound > 0 (inf: no bound) -> (y (B, N), logdet (B,), sigma:
  // the bounded log-scales (B, N), zero where kept, for the backward; (0,) when unbounded);
  // inverse applies the inverse map.
  m.def("affine_coupling(Tensor x, Tensor params, Tensor mask, float bound, bool inverse) "
        "-> (Tensor, Tensor, Tensor)");
  // Its VJP: grad_y (B, N), grad_logdet (B,) -> (grad_x (B, N), grad_params (B, 2N)).
  m.def("affine_coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor params, Tensor sigma, "
        "Tensor mask, float bound, bool inverse) -> (Tensor, Tensor)");
  // ActNorm's map (spec: genkernels/flows/actnorm_reference.py): x (B, C, P) (each row's
  // (C, P) block contiguous, rows any stride), bias and log_scale (C,) -> (y = (x + bias)
  // exp(log_scale) (B, C, P), logdet (B,) = P sum(log_scale)); inverse applies the inverse map.
  m.def("actnorm(Tensor x, Tensor bias, Tensor log_scale, bool inverse) -> (Tensor, Tensor)");
  // Its VJP: grad_y (B, C, P), grad_logdet (B,) -> (grad_x, grad_bias (C,), grad_log_scale (C,)).
  m.def("actnorm_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor bias, Tensor log_scale, "
        "bool inverse) -> (Tensor, Tensor, Tensor)");
  // The rational-quadratic spline (spec: genkernels/flows/spline_reference.py): x (B, N),
  // params (B, N, 3K - 1) (per feature K widths, K heights, K - 1 interior derivatives, all
  // unconstrained; read in place where each row's (N, 3K - 1) block is contiguous, rows any
  // stride), mask (N,) 1 = kept, bound > 0 finite (the identity outside [-bound, bound]) ->
  // (y (B, N), logdet (B,)); inverse applies the inverse map.
  m.def("rq_spline(Tensor x, Tensor params, Tensor mask, float bound, bool inverse) -> (Tensor, Tensor)");
  // Its VJP: grad_y (B, N), grad_logdet (B,) -> (grad_x (B, N), grad_params (B, N, 3K - 1)),
  // everything recomputed from the inputs.
  m.def("rq_spline_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor params, Tensor mask, float bound, "
        "bool inverse) -> (Tensor, Tensor)");
  // The same VJP through the spec, differentiable (a CompositeImplicitAutograd kernel in
  // Python, genkernels/flows/spline_ops.py): the C++ autograd's path under a double backward.
  m.def("rq_spline_vjp(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor params, Tensor mask, float bound, "
        "bool inverse) -> (Tensor, Tensor)");
  // ---- Hopfield networks (genkernels/hopfield) ----
  // Asynchronous recall: weights (N, N) float32|float64, symmetric; states (B, N) +-1 in
  // weights' dtype. Each probe runs sweeps (every unit once, in unit order or, with
  // random_order, by the Philox keys of counters offset + (b * max_sweeps + t) * N + j) until
  // a sweep flips nothing or max_sweeps. Returns states (B, N) and converged (B,) bool.
  m.def("hopfield_recall_async(Tensor weights, Tensor states, int max_sweeps, bool random_order, "
        "int seed, int offset) -> (Tensor, Tensor)");
  // ---- General Boltzmann machines (genkernels/boltzmann) ----
  // Sequential Gibbs sweeps: weights (N, N) float32|float64 symmetric, zero diagonal; bias
  // (N,); states (C, N) in {0, 1}; clamp (N,) bool (units that never change); temperatures
  // (S,): sweep t at temperatures[t]. Counters offset + (c * S + t) * N + i: word 0 keys
  // the random order, word 1 is the uniform. Returns states (C, N).
  m.def("bm_gibbs(Tensor weights, Tensor bias, Tensor states, Tensor clamp, Tensor temperatures, "
        "bool random_order, int seed, int offset) -> Tensor");
  // Continuous modern Hopfield retrieval (genkernels/hopfield/retrieval_reference.py):
  // queries (B, D), stored (B | 1, P, D) float32|float64, beta a 0-d tensor > 0. Each row
  // iterates xi <- stored^T softmax(beta stored xi) until max_d |change| <= tol or max_steps.
  // Returns retrieved (B, D) and steps (B,) int64, the steps each row took.
  m.def("hopfield_retrieval(Tensor queries, Tensor stored, Tensor beta, int max_steps, float tol) "
        "-> (Tensor, Tensor)");
  // Its VJP through the steps each row took (iterates recomputed from queries):
  // grad (B, D) -> (grad_queries (B, D), grad_stored (stored's shape), grad_beta 0-d).
  m.def("hopfield_retrieval_backward(Tensor grad, Tensor queries, Tensor stored, Tensor beta, "
        "Tensor steps) -> (Tensor, Tensor, Tensor)");
  // ---- checkerboard Ising lattices (genkernels/ising) ----
  // spins (B, L, L) int8 ±1, L even >= 4; thresholds (2, 5) int64 in [0, 2^32]: a spin s
  // with n neighbours at +1 flips iff its Philox word u < thresholds[s > 0][n]. Runs n_sweeps
  // sweeps (black sites, then white) with the counter layout of genkernels/ising/reference.py
  // and returns the new spins (B, L, L) int8 (input untouched). With measure_every > 0 it
  // also returns, after sweeps measure_every, 2 measure_every, ..., the bond sums
  // Σ_<ij> s_i s_j and spin sums Σ_i s_i of every lattice: (B, n_sweeps / measure_every)
  // int64 each ((B, 0) when measure_every = 0).
  m.def("ising_sweep(Tensor spins, Tensor thresholds, int n_sweeps, int seed, int offset, "
        "int measure_every) -> (Tensor, Tensor, Tensor)");
  // ---- restricted Boltzmann machines (genkernels/boltzmann) ----
  // One Gibbs half-step: w (n_visible, n_hidden) float32|float64 contiguous; s (B, n_in)
  // uint8 states or w's dtype, contiguous; bias (n_out,) in w's dtype. transpose=false:
  // P = sigmoid(s @ w + bias) (n_in = n_visible, n_out = n_hidden); transpose=true:
  // P = sigmoid(s @ w^T + bias). Returns samples (B, n_out) uint8 = (u < P) with u = word
  // j % 4 of tl.rand4x(seed, offset + b * ceil(n_out / 4) + j / 4), and P (B, n_out) when
  // return_probs, else an empty (0, n_out) tensor.
  m.def("rbm_half_step(Tensor s, Tensor w, Tensor bias, int seed, int offset, bool transpose, "
        "bool return_probs) -> (Tensor, Tensor)");
  // rbm_half_step on 0/1 states (nonzero = 1): the same arguments, outputs and counters,
  // the product computed as bias + the sum of the weight rows (of w, or of w^T with
  // transpose) of every active input.
  m.def("rbm_half_step_binary(Tensor s, Tensor w, Tensor bias, int seed, int offset, bool transpose, "
        "bool return_probs) -> (Tensor, Tensor)");
  // out += alpha * x^T h in place: out (n_in, n_out) float32|float64 contiguous, x (B, n_in)
  // 0/1 states (uint8 or out's dtype, nonzero = 1), h (B, n_out) in out's dtype; and
  // column_sums (n_in,) += sums_alpha * x.sum(0).
  m.def("rbm_binary_outer_add_(Tensor(a!) out, Tensor x, Tensor h, float alpha, Tensor(b!) column_sums, "
        "float sums_alpha) -> ()");
  // One persistent-CD batch of scikit-learn's BernoulliRBM rule, in place: h_pos =
  // sigmoid(v_pos w + hidden_bias); v_neg ~ rbm_half_step(chains, w^T) at offset_v; new
  // chains, h_neg = rbm_half_step(v_neg, w) at offset_h; then w += lr (v_pos^T h_pos -
  // v_neg^T h_neg) and the biases by lr times the column sums. Returns the new chains.
  m.def("rbm_pcd_step_(Tensor v_pos, Tensor(a!) w, Tensor(b!) visible_bias, Tensor(c!) hidden_bias, "
        "Tensor chains, int seed, int offset_v, int offset_h, float lr) -> Tensor");
  // x (N, D) float32|float64 -> its (N, D) uint8 copy if every value is 0 or 1, else an
  // empty (0, D) uint8 tensor.
  m.def("rbm_pack_binary(Tensor x) -> Tensor");
  // ---- threads of the cpu kernels (csrc/cpu/parallel_region.h) ----
  // The calling thread's BLAS (MKL) threads: n >= 1 threads, 0 back to the global setting;
  // returns the previous thread-local value, or -1 where this torch's BLAS has no such
  // control. genkernels.backends.sequential_blas() wraps it for loops of small products.
  m.def("blas_set_local_threads(int n) -> int");
  // Tests: the busy-machine back-off as after a late region, lasting ns nanoseconds --
  // every region on the calling thread, this thread's BLAS on one thread; ns = 0 ends it
  // (no back-off, this thread's BLAS threads given back); ns < 0 ends it and ignores late
  // regions until the next call (a quiet machine, however busy). Not called by any kernel.
  m.def("cpu_force_backoff(int ns) -> ()");
}
