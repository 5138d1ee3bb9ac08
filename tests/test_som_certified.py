"""The certified BMU search of the triton backend (genkernels/som/triton.py).

A search from dot products (fp32, or tf32/bf16 on tensor cores) keeps a few candidates
per row, proves with a rounding-error bound that the exact top-k lies among them, and
searches the rows it cannot prove again with more precision. The interpreter's tl.dot
does not round to tf32/bf16, so the kernels emulate the rounding of the operands on CPU
(truncation); these tests check the bound itself against that emulation on adversarial
near-ties, and that the returned indices equal the exact search's by construction.
"""

import pytest
import torch

pytest.importorskip("triton")

from genkernels import ops  # noqa: E402
from genkernels.som import reference  # noqa: E402
from genkernels.som import triton as som_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEARCHES = ("fused", "blocked")


def _tf32_truncate(t):
    return (t.view(torch.int32) & -8192).view(torch.float32)


def _bf16_truncate(t):
    return (t.view(torch.int32) & -65536).view(torch.float32)


# operand rounding of each precision as the interpreted kernels do it, and its unit
EMULATIONS = {
    "fp32": (lambda t: t, 0.0),
    "tf32": (_tf32_truncate, 2.0 ** -10),
    "bf16 (round to nearest)": (lambda t: t.bfloat16().float(), 2.0 ** -8),
    "bf16 (truncated)": (_bf16_truncate, 2.0 ** -7),
}


def _near_ties(n=48, k_nodes=40, d=32, seed=0):
    """Rows of three kinds against one codebook: nodes in tight clusters around a few
    centres (spreads 1e-4, 1e-2 and 10, relative to |centre|^2 ~ 2.5e3), samples next to
    the centres. The tightest clusters are below tf32 and bf16 resolution (their
    low-precision ranking is noise), the middle one below bf16's only, the loose one is
    ranked right by all: each stage of the search certifies some rows and leaves
    others to the next."""
    gen = torch.Generator().manual_seed(seed)
    centres = 9.0 * torch.randn(4, d, generator=gen, dtype=torch.float64)
    spreads = torch.tensor([1e-4, 1e-2, 10.0, 1e-4], dtype=torch.float64)
    owner = torch.arange(k_nodes) % 4
    w = centres[owner] + spreads[owner, None] * torch.randn(k_nodes, d, generator=gen, dtype=torch.float64)
    rows = torch.arange(n) % 4
    x = centres[rows] + 0.5 * spreads[rows, None] * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x.float(), w.float()


@pytest.mark.parametrize("emulation", list(EMULATIONS))
def test_error_bound_holds_on_emulated_rounding(emulation):
    # every key |w|^2 - 2 x.w from rounded operands and fp32 products lies within
    # E = C (|x|^2 + max |w|^2) of the exact key (fp64), on near-ties and on data whose
    # products cancel (mixed signs, magnitudes over 2^20)
    rnd, unit = EMULATIONS[emulation]
    gen = torch.Generator().manual_seed(3)
    cases = [_near_ties(), _near_ties(seed=1, d=300)]
    cases.append((torch.randn(64, 257, generator=gen) * 2.0 ** torch.randint(-20, 20, (64, 1), generator=gen),
                  torch.randn(33, 257, generator=gen) * 2.0 ** torch.randint(-20, 20, (33, 1), generator=gen)))
    for case, (x, w) in enumerate(cases):
        d = x.shape[1]
        c = som_triton._certify_constant("euclidean", d, unit)
        w_sq = (w * w).sum(1)
        low = w_sq[None, :] - 2.0 * (rnd(x) @ rnd(w).T)
        x64, w64 = x.double(), w.double()
        exact = (w64 * w64).sum(1)[None, :] - 2.0 * (x64 @ w64.T)
        bound = c * ((x64 * x64).sum(1, keepdim=True) + (w64 * w64).sum(1).max())
        err = (low.double() - exact).abs()
        assert (err <= bound).all(), f"{emulation}: error {float((err / bound).max()):.3f} x the bound"
        if unit and case == 0:
            # not vacuous: on near-ties the rounding error reaches a fair share of it
            assert float((err / bound).max()) > 0.01


def test_certify_constant_grows_with_precision_and_features():
    c = {p: som_triton._certify_constant("euclidean", 256, u) for p, u in
         [("fp32", 0.0), ("tf32", 2.0 ** -10), ("bf16", 2.0 ** -8)]}
    assert c["fp32"] < c["tf32"] < c["bf16"]
    assert som_triton._certify_constant("euclidean", 1024, 0.0) > c["fp32"]
    assert som_triton._certify_constant("cosine", 256, 0.0) > 0
    assert som_triton._certify_constant("euclidean", 2**23, 0.0) == float("inf")


def _count_unsure(monkeypatch):
    """Wrap _settle_unsure: the number of rows each precision stage left uncertified."""
    seen = []
    settle = som_triton._settle_unsure

    def counting(x, weights, k, metric, ignore_nan, precision_id, search, indices, distances, unsure):
        seen.append((precision_id, int(unsure.sum())))
        return settle(x, weights, k, metric, ignore_nan, precision_id, search, indices, distances, unsure)
    monkeypatch.setattr(som_triton, "_settle_unsure", counting)
    return seen


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_near_ties_give_the_exact_indices(monkeypatch, precision, search):
    seen = _count_unsure(monkeypatch)
    x, w = _near_ties()
    rnd = {"fp32": lambda t: t, "tf32": _tf32_truncate, "bf16": _bf16_truncate}[precision]
    low_idx = ((w * w).sum(1)[None, :] - 2.0 * (rnd(x) @ rnd(w).T)).argmin(1)
    x, w = x.to(DEVICE), w.to(DEVICE)
    for k in (1, 2, 3):
        seen.clear()
        idx, dist = ops.som_bmu(x, w, k, precision=precision, search=search, backend="triton")
        ref_idx, ref_dist = reference.som_bmu(x.double(), w.double(), k)
        assert torch.equal(idx, ref_idx), f"k={k}"
        torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-5, atol=1e-6)
        # the first stage left rows to the next one, and those got the exact answer
        assert seen and seen[0][1] > 0
        if precision != "fp32":
            # the low-precision stage certified some rows (the loose cluster) itself
            assert seen[0][1] < x.shape[0]
    if precision != "fp32" and DEVICE == "cpu":
        # the emulated ranking alone picks a wrong winner on the tight clusters
        assert (low_idx != ref_idx[:, 0].cpu()).any()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_blocked_search_over_several_blocks(monkeypatch, precision):
    # blocks of 128 rows (the smallest): 300 rows make two full blocks and a ragged one
    monkeypatch.setattr(som_triton, "BLOCKED_PRODUCT_BYTES", 128 * 4 * 50)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 24, generator=gen).to(DEVICE)
    w = torch.randn(50, 24, generator=gen).to(DEVICE)
    assert som_triton._block_rows(50) == 128
    for k in (1, 4):
        idx, dist = ops.som_bmu(x, w, k, precision=precision, search="blocked", backend="triton")
        ref_idx, ref_dist = reference.som_bmu(x, w, k)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("search", SEARCHES)
def test_k_filling_every_slot_is_exact(search):
    # k = 8 keeps no spare candidate: no row can be certified, all are searched from the
    # definition -- slower, still exact
    x, w = _near_ties(n=20, k_nodes=30)
    x, w = x.to(DEVICE), w.to(DEVICE)
    idx, _ = ops.som_bmu(x, w, 8, search=search, backend="triton")
    assert torch.equal(idx, reference.som_bmu(x.double(), w.double(), 8)[0])


def test_blocked_search_rejects_what_it_does_not_run():
    x, w = torch.randn(5, 4).to(DEVICE), torch.randn(6, 4).to(DEVICE)
    for kwargs, shown in [(dict(metric="cosine"), "metric='cosine'"),
                          (dict(ignore_nan=True), "ignore_nan=True")]:
        with pytest.raises(ValueError, match=f"search='blocked' runs the euclidean search.*{shown}"):
            ops.som_bmu(x, w, search="blocked", backend="triton", **kwargs)
    with pytest.raises(ValueError, match="dtype torch.float64"):
        ops.som_bmu(x.double(), w.double(), search="blocked", backend="triton")
    with pytest.raises(ValueError, match="search must be one of 'auto', 'fused', 'blocked'; got 'tiled'"):
        ops.som_bmu(x, w, search="tiled")
    # other backends accept the choice and search exactly
    idx, _ = ops.som_bmu(x.cpu(), w.cpu(), search="blocked", backend="reference")
    assert torch.equal(idx, reference.som_bmu(x.cpu(), w.cpu())[0])


def test_blocked_search_opcheck_and_grad():
    x = torch.randn(20, 6).to(DEVICE)
    w = torch.randn(9, 6).to(DEVICE)
    torch.library.opcheck(torch.ops.genkernels.som_bmu_triton.default,
                          (x, w, 2, "euclidean", False, "tf32", "blocked"))
    xg = x.clone().requires_grad_()
    _, dist = ops.som_bmu(xg, w, 2, search="blocked", backend="triton")
    dist.sum().backward()
    ref = x.clone().requires_grad_()
    reference.som_bmu(ref, w, 2)[1].sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_tensor_core_near_ties_are_exact(precision, search):
    # real tf32/bf16 tensor-core rounding on near-ties: the indices equal the exact fp32
    # search (from the definition, search from fp64 for the reference)
    x, w = _near_ties(n=4096, k_nodes=512, d=64, seed=7)
    x, w = x.cuda(), w.cuda()
    for k in (1, 3):
        idx, dist = ops.som_bmu(x, w, k, precision=precision, search=search, backend="triton")
        ref_idx, ref_dist = reference.som_bmu(x.double(), w.double(), k)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-5, atol=1e-6)
