"""Patch SOMs: the op som_patch_bmu (reference = unfold + the reference BMU, checked against a
loop over patches; cpu and triton against the reference over odd and edge shapes, ties,
strides and dtypes), its registrations (opcheck, torch.compile), the models PatchSOM and
StackedPatchSOM (training against genkernels.SOM on the unfolded patches, exact
reconstruction, shapes, checkpoints) and bad input."""

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import COMPILED, DEVICE, needs, needs_cpu, needs_triton
from tolerances import TOL

import genkernels
from genkernels import ops
from genkernels.som import patch_reference as R
from genkernels.som import reference as som_reference
from genkernels.som.patch import overlay_patches, patch_node_sums

# (N, C, H, W, kh, kw, sh, sw, K): a plain case, 1x1 patches, the patch = the image (C = 3),
# stride > kernel with rows and columns past the last patch, N = 1 with K = 1, nodes over
# two tiles of the triton kernel (K = 70 > 64) with an odd rectangular patch, no images.
SHAPES = [(2, 1, 7, 9, 3, 3, 1, 1, 10), (1, 1, 5, 6, 1, 1, 1, 1, 4), (2, 3, 6, 5, 6, 5, 1, 1, 7),
          (2, 1, 11, 10, 2, 3, 4, 5, 9), (1, 3, 8, 8, 3, 2, 2, 3, 1), (3, 2, 9, 13, 4, 3, 2, 1, 70),
          (0, 1, 5, 5, 3, 3, 1, 1, 4)]


def _problem(shape, dtype=torch.float32, seed=0, device="cpu", blank=False):
    """Uniform images and codebook; blank: the top half of every image is 0, so the patches
    inside it are blank (the cpu kernel answers those without a search)."""
    n, c, h, w, kh, kw, sh, sw, k = shape
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, c, h, w), generator=g, dtype=torch.float64)
    if blank:
        images[:, :, :h // 2] = 0
    codebook = torch.rand((k, c * kh * kw), generator=g, dtype=torch.float64)
    return images.to(device, dtype), codebook.to(device, dtype), (kh, kw), (sh, sw)


def _by_loop(images, codebook, kernel, stride):
    """The definition, patch by patch: argmin of the exact distances (lowest index)."""
    n, c, h, w = images.shape
    hp, wp = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    idx = torch.empty((n, hp, wp), dtype=torch.int64)
    dist = torch.empty((n, hp, wp), dtype=torch.float64)
    for b in range(n):
        for i in range(hp):
            for j in range(wp):
                top, left = i * stride[0], j * stride[1]
                patch = images[b, :, top:top + kernel[0], left:left + kernel[1]].reshape(-1).double()
                d = ((codebook.double() - patch) ** 2).sum(1).sqrt()
                idx[b, i, j] = int(torch.argmin(d))
                dist[b, i, j] = d.min()
    return idx, dist


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_is_the_definition(shape):
    images, codebook, kernel, stride = _problem(shape, torch.float64)
    idx, dist = R.som_patch_bmu(images, codebook, *kernel, *stride)
    want_idx, want_dist = _by_loop(images, codebook, kernel, stride)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(dist, want_dist, **TOL[torch.float64])
    # row (n, i, j) of the patches is the image's window there, features (c, a, b)
    patches = R.extract_patches(images, kernel, stride)
    n, c = images.shape[:2]
    hp, wp = idx.shape[1:]
    i, j = hp - 1, wp - 1
    window = images[n - 1, :, i * stride[0]:i * stride[0] + kernel[0], j * stride[1]:j * stride[1] + kernel[1]]
    assert torch.equal(patches[((n - 1) * hp + i) * wp + j].reshape(c, *kernel), window)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("shape", SHAPES)
def test_backends_equal_the_reference(backend, shape):
    device = DEVICE if backend == "triton" else "cpu"
    dtypes = [torch.float32, torch.float64] if backend == "cpu" or shape in SHAPES[:2] else [torch.float32]
    for dtype in dtypes:
        images, codebook, kernel, stride = _problem(shape, dtype, device=device, blank=dtype == torch.float64)
        idx, dist = ops.som_patch_bmu(images, codebook, kernel, stride, backend=backend)
        want_idx, want_dist = ops.som_patch_bmu(images.cpu(), codebook.cpu(), kernel, stride, backend="reference")
        assert idx.dtype == torch.int64 and dist.dtype == dtype
        assert torch.equal(idx.cpu(), want_idx), (dtype, shape)
        torch.testing.assert_close(dist.cpu(), want_dist, **TOL[dtype])


@pytest.mark.parametrize("backend", COMPILED)
def test_strided_images_and_low_precision(backend):
    device = DEVICE if backend == "triton" else "cpu"
    images, codebook, kernel, stride = _problem((2, 3, 9, 8, 3, 2, 2, 1, 12), device=device)
    strided = images.to(memory_format=torch.channels_last)[:, :, 1:, ::2]   # any strides
    idx, dist = ops.som_patch_bmu(strided, codebook, kernel, stride, backend=backend)
    want_idx, want_dist = ops.som_patch_bmu(strided.contiguous().cpu(), codebook.cpu(), kernel, stride,
                                            backend="reference")
    assert torch.equal(idx.cpu(), want_idx)
    torch.testing.assert_close(dist.cpu(), want_dist, **TOL[torch.float32])
    for dtype in (torch.float16, torch.bfloat16):
        # values on a coarse grid: exact in every dtype, so the search is the fp32 one's
        low_images, low_codebook = (torch.round(t * 8) / 8 for t in (images, codebook))
        idx, dist = ops.som_patch_bmu(low_images.to(dtype), low_codebook.to(dtype), kernel, stride, backend=backend)
        want_idx, want_dist = ops.som_patch_bmu(low_images.cpu(), low_codebook.cpu(), kernel, stride,
                                                backend="reference")
        assert dist.dtype == dtype and torch.equal(idx.cpu(), want_idx)
        # the fp32 distance rounded to the dtype (one unit in the last place: the
        # interpreter's casts truncate)
        torch.testing.assert_close(dist.cpu().float(), want_dist, rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_exact_ties_go_to_the_lowest_index(backend):
    """Integer-valued images against a codebook listed twice and with rows equidistant
    from every patch: exact ties everywhere, the lowest index wins on every backend."""
    device = DEVICE if backend == "triton" else "cpu"
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 3, (2, 1, 6, 7), generator=g).float()
    images[0, :, :4] = 0   # blank patches: equidistant from the duplicated rows too
    base = torch.randint(0, 3, (5, 9), generator=g).float()
    codebook = torch.cat([base, base, torch.full((1, 9), 1.0), torch.full((1, 9), 1.0)])
    idx, dist = ops.som_patch_bmu(images.to(device), codebook.to(device), 3, 1, backend=backend)
    want_idx, want_dist = _by_loop(images, codebook, (3, 3), (1, 1))
    assert torch.equal(idx.cpu(), want_idx)
    torch.testing.assert_close(dist.cpu().double(), want_dist, **TOL[torch.float32])
    # a duplicated row never wins over its first copy
    assert not bool(((idx >= 5) & (idx < 10)).any()) and not bool((idx == 11).any())


@needs_cpu
def test_cpu_is_som_bmu_on_the_unfolded_patches_bit_for_bit():
    images, codebook, kernel, stride = _problem((4, 2, 13, 11, 3, 3, 2, 1, 37), seed=5, blank=True)
    idx, dist = ops.som_patch_bmu(images, codebook, kernel, stride, backend="cpu")
    want_idx, want_dist = ops.som_bmu(R.extract_patches(images, kernel, stride), codebook, backend="cpu")
    assert torch.equal(idx.reshape(-1), want_idx[:, 0]) and torch.equal(dist.reshape(-1), want_dist[:, 0])


@needs_cpu
@pytest.mark.parametrize("isa", ["avx2", "none"])
def test_cpu_paths_agree(monkeypatch, isa):
    """The AVX2 micro-kernel (on an AVX-512 machine) and the portable loop (GENKERNELS_CPU_ISA=none)
    give the automatic path's result."""
    images, codebook, kernel, stride = _problem((3, 1, 12, 12, 5, 5, 1, 2, 30), seed=7, blank=True)
    want = ops.som_patch_bmu(images, codebook, kernel, stride, backend="cpu")
    monkeypatch.setenv("GENKERNELS_CPU_ISA", isa)
    got = ops.som_patch_bmu(images, codebook, kernel, stride, backend="cpu")
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_scale_guard(backend):
    """Data at 1e20 or 1e-30 gives the indices of unit data and scaled distances, as som_bmu."""
    device = DEVICE if backend == "triton" else "cpu"
    images, codebook, kernel, stride = _problem((1, 1, 6, 6, 3, 3, 1, 1, 8), seed=2, device=device)
    idx, dist = ops.som_patch_bmu(images, codebook, kernel, stride, backend=backend)
    for scale in (1e20, 1e-30):
        got_idx, got_dist = ops.som_patch_bmu(images * scale, codebook * scale, kernel, stride, backend=backend)
        assert torch.equal(got_idx, idx)
        torch.testing.assert_close(got_dist / scale, dist, rtol=1e-5, atol=0)


@needs_cpu
def test_cpu_op_passes_opcheck():
    images, codebook, _, _ = _problem((2, 2, 7, 6, 3, 2, 2, 1, 5))
    torch.library.opcheck(torch.ops.genkernels.som_patch_bmu.default, (images, codebook, 3, 2, 2, 1))


@needs_triton
def test_triton_op_passes_opcheck():
    from genkernels.som import patch_triton  # noqa: F401 (registers the op)
    images, codebook, _, _ = _problem((2, 1, 6, 6, 3, 3, 1, 2, 5), device=DEVICE)
    torch.library.opcheck(torch.ops.genkernels.som_patch_bmu_triton.default, (images, codebook, 3, 3, 1, 2))


@pytest.mark.parametrize("backend", COMPILED)
def test_compile_fullgraph(backend):
    device = DEVICE if backend == "triton" else "cpu"
    images, codebook, kernel, stride = _problem((2, 1, 8, 8, 3, 3, 1, 1, 6), device=device)
    fn = torch.compile(lambda a, b: ops.som_patch_bmu(a, b, 3, 1, backend=backend), fullgraph=True,
                       backend="aot_eager")
    idx, dist = fn(images, codebook)
    want_idx, want_dist = ops.som_patch_bmu(images, codebook, kernel, stride, backend=backend)
    assert torch.equal(idx, want_idx) and torch.equal(dist, want_dist)


def test_not_differentiable():
    images, codebook, kernel, stride = _problem((1, 1, 5, 5, 3, 3, 1, 1, 4))
    idx, dist = ops.som_patch_bmu(images.requires_grad_(), codebook.requires_grad_(), kernel, stride)
    assert not dist.requires_grad and not idx.requires_grad


# ------------------------------------------------------------------------ batch rule
def test_patch_node_sums_and_overlay_equal_the_unfolded_definitions():
    images, codebook, kernel, stride = _problem((3, 2, 9, 8, 3, 2, 2, 3, 6), torch.float64, seed=4)
    idx, _ = R.som_patch_bmu(images, codebook, *kernel, *stride)
    sums, counts = patch_node_sums(images, idx, 6, kernel, stride)
    want_sums, want_counts, _ = som_reference.som_node_sums(R.extract_patches(images, kernel, stride), codebook)
    torch.testing.assert_close(sums, want_sums, **TOL[torch.float64])
    assert torch.equal(counts, want_counts)
    filters = codebook.reshape(6, 2, *kernel)
    rebuilt, coverage = overlay_patches(filters, idx, (9, 8), stride)
    want, want_coverage = R.fold_patches(codebook[idx], (9, 8), kernel, stride)
    torch.testing.assert_close(rebuilt, want, **TOL[torch.float64])
    assert torch.equal(coverage, want_coverage[0, 0])


# ------------------------------------------------------------------------------ models
def _digits_images(n=60):
    from genkernels.data import load_digits
    x, _ = load_digits()
    return torch.as_tensor(x[:n]).reshape(n, 1, 8, 8)


def test_batch_fit_is_the_som_batch_rule_on_the_patches():
    """PatchSOM's batch epochs (fused patch BMU, sums by patch offset) equal genkernels.SOM's
    batch epochs on the unfolded patches from the same PCA initialisation."""
    images = _digits_images()
    model = genkernels.PatchSOM((4, 5), 3, stride=1, seed=0).fit(images, epochs=3, verbose=False)
    som = genkernels.SOM((4, 5), 9, seed=0).fit(R.extract_patches(images, (3, 3), (1, 1)), epochs=3, verbose=False)
    torch.testing.assert_close(model.codebook, som.weights, rtol=1e-5, atol=1e-5)
    assert len(model.history) == 3
    assert model.history[-1]["quantization_error"] == pytest.approx(som.history[-1]["quantization_error"],
                                                                    rel=1e-5)


def test_online_fit_and_queries():
    images = _digits_images(20)
    model = genkernels.PatchSOM(6, (3, 2), stride=(2, 1), seed=1)
    model.fit(images.numpy()[:, 0], epochs=2, mode="online", max_patches=300, verbose=False)
    assert model.initialized and len(model.history) == 2
    coords = model.transform(images)
    assert coords.shape == (20, 2, 3, 7)
    idx = model.bmu(images)[0]
    assert torch.equal(coords, model.som.coords()[idx].permute(0, 3, 1, 2))
    assert model.filters.shape == (6, 1, 3, 2)
    assert model.quantization_error(images) == pytest.approx(float(model.bmu(images)[1].double().mean()))


@pytest.mark.parametrize("stride", [1, 3])
def test_reconstruct_is_exact_when_every_patch_is_a_codebook_row(stride):
    images = _digits_images(4)
    model = genkernels.PatchSOM((1, 1), 3, stride=stride, seed=0)
    patches = torch.unique(R.extract_patches(images, (3, 3), (stride, stride)), dim=0)
    model.som = genkernels.SOM((1, patches.shape[0]), 9, seed=0)
    model.som.weights = patches
    rebuilt, error = model.reconstruct(images)
    covered = 8 - (8 - 3) % stride
    assert torch.equal(rebuilt[:, :, :covered, :covered], images[:, :, :covered, :covered])
    assert float(error) == 0.0
    assert bool((rebuilt[:, :, covered:] == 0).all()) and bool((rebuilt[:, :, :, covered:] == 0).all())


def test_reconstruct_error_is_the_mean_over_covered_pixels():
    images = _digits_images(10)
    model = genkernels.PatchSOM((3, 3), 2, stride=2, seed=0).fit(images, epochs=2, verbose=False)
    rebuilt, error = model.reconstruct(images)
    assert rebuilt.shape == images.shape
    assert float(error) == pytest.approx(float(((rebuilt - images) ** 2).double().mean()), rel=1e-6)


def test_stacked_shapes_fit_and_checkpoints(tmp_path):
    images = _digits_images(30)
    stack = genkernels.StackedPatchSOM([genkernels.PatchSOM((4, 4), 3, seed=0),
                                        genkernels.PatchSOM((3, 3), 2, stride=2, channels=2, seed=1)])
    assert stack.output_sizes(8, 8) == [(6, 6), (3, 3)]
    stack.fit(images, epochs=[2, 1], verbose=False)
    out = stack.transform(images)
    assert out.shape == (30, 2, 3, 3)
    first = stack.layers[0].transform(images)
    torch.testing.assert_close(out, stack.layers[1].transform(first))
    path = os.path.join(tmp_path, "stack.pt")
    stack.save(path)
    loaded = genkernels.StackedPatchSOM.load(path)
    assert torch.equal(loaded.transform(images), out)
    assert loaded.layers[1].stride == (2, 2) and loaded.layers[1].history == stack.layers[1].history
    single = os.path.join(tmp_path, "patch.pt")
    stack.layers[0].save(single)
    again = genkernels.PatchSOM.load(single)
    assert torch.equal(again.codebook, stack.layers[0].codebook) and again.seed == stack.layers[0].seed


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_bad_input(backend):
    device = DEVICE if backend == "triton" else "cpu"
    images, codebook, _, _ = _problem((1, 2, 5, 5, 3, 3, 1, 1, 4), device=device)

    def bmu(im=images, cb=codebook, kernel=3, stride=1):
        return ops.som_patch_bmu(im, cb, kernel, stride, backend=backend)

    with pytest.raises(ValueError, match="kernel_size .* larger than the images"):
        bmu(kernel=6)
    with pytest.raises(ValueError, match="codebook has 18 columns but images with 1 channel"):
        bmu(im=images[:, :1])
    with pytest.raises(ValueError, match=r"stride must be in \[1, inf\]; got 0"):
        bmu(stride=0)
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        bmu(stride=(1, 1, 1))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        bmu(kernel=2.5)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        bmu(im=images.to(torch.int64))
    with pytest.raises(ValueError, match="images must be 4-D"):
        bmu(im=images[0])
    with pytest.raises(TypeError, match="codebook has dtype torch.float64 but images has torch.float32"):
        bmu(cb=codebook.double())
    with pytest.raises(ValueError, match="codebook must hold at least one row"):
        bmu(cb=codebook[:0])
    with pytest.raises(ValueError, match="images contains NaN or Inf"):
        bmu(im=torch.where(images > 0.5, float("nan"), images))
    with pytest.raises(ValueError, match="codebook contains NaN or Inf"):
        bmu(cb=torch.where(codebook > 0.5, float("inf"), codebook))


def test_bad_model_arguments():
    images = _digits_images(5)
    with pytest.raises(ValueError, match="images has 1 channel.* channels=3"):
        genkernels.PatchSOM(4, 3, channels=3).fit(images, verbose=False)
    with pytest.raises(ValueError, match="kernel_size .* larger than the images"):
        genkernels.PatchSOM(4, 9).fit(images, verbose=False)
    with pytest.raises(ValueError, match=r"stride must be in \[1, inf\]"):
        genkernels.PatchSOM(4, 3, stride=0)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        genkernels.PatchSOM(4, 3).fit(images.to(torch.uint8), verbose=False)
    with pytest.raises(ValueError, match="images is empty"):
        genkernels.PatchSOM(4, 3).fit(images[:0], verbose=False)
    with pytest.raises(ValueError, match=r"layers\[1\] must take channels=2"):
        genkernels.StackedPatchSOM([genkernels.PatchSOM(4, 3), genkernels.PatchSOM(4, 3)])
    with pytest.raises(TypeError, match=r"layers\[0\] must be a genkernels.PatchSOM"):
        genkernels.StackedPatchSOM([genkernels.SOM(4, 9)])
    stack = genkernels.StackedPatchSOM([genkernels.PatchSOM(4, 3), genkernels.PatchSOM(4, 7, channels=2)])
    with pytest.raises(ValueError, match=r"layers\[1\]: kernel_size \(7, 7\) does not fit its input of 6 x 6"):
        stack.fit(images, verbose=False)


def test_patch_unfold_agrees_with_torch_unfold_order():
    """The codebook's feature order is unfold's: a filter reshaped to (C, kh, kw) is the patch."""
    images, _, kernel, stride = _problem((1, 2, 4, 5, 2, 3, 1, 1, 1))
    cols = F.unfold(images, kernel, stride=stride)
    assert torch.equal(R.extract_patches(images, kernel, stride)[1], cols[0, :, 1])
    assert torch.equal(cols[0, :, 1].reshape(2, *kernel), images[0, :, 0:2, 1:4])


@needs("triton")
def test_triton_re_searches_uncertified_patches():
    """Every patch uncertified (many duplicated nodes within the bound): the exact
    re-search over the listed patches gives the reference's lowest indices."""
    images, codebook, kernel, stride = _problem((1, 1, 6, 6, 3, 3, 1, 1, 3), device=DEVICE)
    codebook = codebook[:1].repeat(6, 1)
    idx, _ = ops.som_patch_bmu(images, codebook, kernel, stride, backend="triton")
    assert bool((idx == 0).all())
