"""Counter-based random numbers shared by every backend: Philox4x32-10 as Triton's
``tl.randint4x`` / ``tl.rand`` (docs/design.md, "Randomness").

The stream is a pure function of ``(seed, offset)``:

* key = (seed low 32 bits, seed high 32 bits), seed an int in [0, 2^64);
* counter = (offset low 32 bits, offset high 32 bits, 0, 0), offset an int64 taken as its
  64-bit two's-complement pattern -- a negative offset o is the counter o + 2^64, exactly
  what ``tl.randint4x`` does with an int64 offset tensor;
* 10 rounds; one call yields four uint32 words (:func:`randint4x`), :func:`randint` is the
  first of them and :func:`rand` converts that one to a float32 in [0, 1) as ``tl.rand``
  does (:func:`uint_to_uniform_float`).

The functions here are the PyTorch reference (int64 arithmetic masked to 32 bits, so
any CPU or CUDA tensor works) and, through ``backend=``, the other implementations:
``cpu`` / ``cuda`` (the C++ ops ``genkernels::philox_randint4x`` / ``philox_rand`` over
csrc/common/philox.h) and ``triton`` (genkernels/triton_random.py, kernels that call
``tl.randint4x`` / ``tl.rand`` themselves: the ground truth). All of them return the same
bits for the same ``(seed, offsets)``. ``backend=None`` chooses as every op does
(genkernels.backends).

Raw words come back as ``torch.uint32`` tensors -- the dtype they are, half the memory
of int64. PyTorch supports few ops on uint32 (copies, views, comparisons); call
``.to(torch.int64)`` for arithmetic.
"""

from __future__ import annotations

import math
import operator

import torch

from . import registry

__all__ = ["INT64_RANGE", "SEED_RANGE", "PhiloxStream", "philox4x32_10", "rand", "randint", "key_of", "randint4x", "randn", "uint_to_uniform_float",
           "visiting_order", "wrap_int64"]

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
# tl.rand's scale 4.6566127342e-10 as the fp32 it becomes in the kernel: 0x1.fffffep-32,
# the largest fp32 s with (2^31 - 1) * s < 1 after rounding.
UINT32_TO_UNIFORM_SCALE = float.fromhex("0x1.fffffep-32")

SEED_MAX = 2**64 - 1
# a seed is an int in SEED_RANGE; counters (offsets) are int64s in INT64_RANGE
SEED_RANGE = (0, SEED_MAX)
INT64_RANGE = (-2**63, 2**63 - 1)
_MASK32 = 0xFFFFFFFF


def _randint4x_fake(seed, offsets):
    return offsets.new_empty((*offsets.shape, 4), dtype=torch.uint32)


def _rand_fake(seed, offsets):
    return offsets.new_empty(offsets.shape, dtype=torch.float32)


def _randint4x_reference(seed, offsets):
    return _reference_randint4x(key_of(seed), offsets)


def _rand_reference(seed, offsets):
    return uint_to_uniform_float(_reference_randint4x(key_of(seed), offsets)[..., 0])


# philox_randint4x(seed (int64 bit pattern), offsets (...) int64) -> (..., 4) uint32, and
# philox_rand(seed, offsets) -> (...) float32 uniforms.
RANDINT4X = registry.declare(
    "philox_randint4x",
    reference=_randint4x_reference,
    cpu=registry.extension("philox_randint4x"),
    triton=registry.lazy("genkernels.triton_random", "philox_randint4x_triton"),
    cuda=registry.extension("philox_randint4x"),
    fake=_randint4x_fake)
RAND = registry.declare(
    "philox_rand",
    reference=_rand_reference,
    cpu=registry.extension("philox_rand"),
    triton=registry.lazy("genkernels.triton_random", "philox_rand_triton"),
    cuda=registry.extension("philox_rand"),
    fake=_rand_fake)
registry.static_kernels("random", registry.lazy("genkernels.triton_random", "static_kernels"))


# ------------------------------------------------------------------------ validation
def _check_seed(seed) -> int:
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer in [0, 2**64); got bool {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer in [0, 2**64); got {type(seed).__name__} "
                        f"{seed!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be in [0, 2**64); got {seed}")
    return seed


def _check_offsets(offsets) -> torch.Tensor:
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch.Tensor of int64 counters; got "
                        f"{type(offsets).__name__}")
    if offsets.dtype != torch.int64:
        raise TypeError(f"offsets must be an int64 tensor (the Philox counters); got dtype "
                        f"{offsets.dtype}")
    return offsets


def _schema_seed(seed: int) -> int:
    """The int64 bit pattern of a seed in [0, 2^64): what the ops' `int seed` carries (the
    public functions convert once, on the way in; :func:`key_of` converts back)."""
    return seed - 2**64 if seed >= 2**63 else seed


def key_of(seed: int) -> int:
    """The Philox key in [0, 2^64) of a seed as an op's schema carries it (its int64 bit
    pattern, negative for seeds >= 2^63): what the references and the Triton launchers
    take. The inverse of the conversion the public functions make on the way in."""
    return seed % 2**64


# ------------------------------------------------------------------------- reference
def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * m for a (int64 holding uint32) and a uint32 constant m,
    in int64 without overflow: m is split into 16-bit halves, each partial product < 2^48."""
    p_hi = a * (m >> 16)
    p_lo = a * (m & 0xFFFF)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def _as_uint32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding values in [0, 2^32) -> the same bits as torch.uint32."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    return signed.to(torch.int32).view(torch.uint32)


def philox4x32_10(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Ten Philox4x32 rounds on full counters, as csrc/common/philox.h ``philox4x32_10``.

    counter: (..., 4) int64 holding uint32 words (c0, c1, c2, c3); key: (k0, k1) uint32
    ints. Returns (..., 4) uint32. :func:`randint4x` is this on (offset low, offset high,
    0, 0) with key (seed low, seed high)."""
    if not isinstance(counter, torch.Tensor) or counter.dtype != torch.int64 or \
            counter.dim() == 0 or counter.shape[-1] != 4:
        raise TypeError("counter must be a (..., 4) int64 tensor of uint32 words; got "
                        f"{getattr(counter, 'dtype', type(counter).__name__)} "
                        f"{tuple(getattr(counter, 'shape', ()))}")
    c0, c1, c2, c3 = (w & _MASK32 for w in counter.unbind(-1))
    k0, k1 = (operator.index(k) & _MASK32 for k in key)
    return _as_uint32(torch.stack(_philox_rounds(c0, c1, c2, c3, k0, k1), dim=-1))


def _philox_rounds(c0, c1, c2, c3, k0: int, k1: int):
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo(c2, PHILOX_ROUND_B)
        hi_a, lo_a = _mulhilo(c0, PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _reference_randint4x(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    low = offsets & _MASK32
    high = (offsets >> 32) & _MASK32  # arithmetic shift, then the high word's bit pattern
    zero = torch.zeros_like(offsets)
    words = _philox_rounds(low, high, zero, zero, seed & _MASK32, seed >> 32)
    return _as_uint32(torch.stack(words, dim=-1))


def uint_to_uniform_float(words: torch.Tensor) -> torch.Tensor:
    """tl.rand's conversion of random words to uniforms in [0, 1).

    words: (...) uint32 (or int32 holding the same bits) -> (...) float32. The word is
    read as int32, negatives folded with ~x into [0, 2^31 - 1], converted to fp32 (round
    to nearest) and scaled by :data:`UINT32_TO_UNIFORM_SCALE`."""
    if not isinstance(words, torch.Tensor) or words.dtype not in (torch.uint32, torch.int32):
        got = words.dtype if isinstance(words, torch.Tensor) else type(words).__name__
        raise TypeError(f"words must be a uint32 or int32 tensor; got {got}")
    v = words.view(torch.int32) if words.dtype == torch.uint32 else words
    v = torch.where(v < 0, ~v, v)
    scale = torch.tensor(UINT32_TO_UNIFORM_SCALE, dtype=torch.float32, device=v.device)
    return v.to(torch.float32) * scale


# ------------------------------------------------------------------------ public API
def randint4x(seed: int, offsets: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """The four Philox words of every counter, as ``tl.randint4x(seed, offsets)``.

    seed: int in [0, 2^64); offsets: (...) int64 counters (any value, negative ones as
    their two's-complement pattern). Returns (..., 4) uint32."""
    seed = _check_seed(seed)
    offsets = _check_offsets(offsets)
    return RANDINT4X.kernels[RANDINT4X.resolve(offsets.device, backend)](_schema_seed(seed), offsets)


def randint(seed: int, offsets: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``tl.randint(seed, offsets)``: the first word of :func:`randint4x`, (...) uint32."""
    return randint4x(seed, offsets, backend=backend)[..., 0].contiguous()


def rand(seed: int, offsets: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``tl.rand(seed, offsets)``: (...) float32 uniforms in [0, 1), one per counter
    (:func:`uint_to_uniform_float` of :func:`randint`). A Bernoulli(p) draw is
    ``rand(seed, offsets) < p``, identical on every backend for the same p."""
    seed = _check_seed(seed)
    offsets = _check_offsets(offsets)
    return RAND.kernels[RAND.resolve(offsets.device, backend)](_schema_seed(seed), offsets)


def randn(seed: int, offsets: torch.Tensor, *, dtype: torch.dtype = torch.float32,
          backend: str | None = None) -> torch.Tensor:
    """Standard normals, one per counter, by Box-Muller from its words 0 and 1:

        z = sqrt(-2 ln(1 - u0)) * cos(2 pi u1),   u_k = uint_to_uniform_float(word k)

    computed in float64 and rounded to ``dtype`` (float32, float64, float16 or bfloat16).
    1 - u0 lies in (0, 1], so z is finite (|z| < 6.7). The words come from ``backend``'s
    :func:`randint4x` (bit-identical everywhere) and the formula runs as PyTorch ops on
    their device: the reference and cpu backends give the same bits; on CUDA, where
    ``log``/``cos`` are the GPU's, z may differ in the last place of float64, which rounds
    away in float32 but for ties at the rounding boundary (about one value in 2^29)."""
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be a floating-point dtype (float32, float64, float16, bfloat16); got {dtype}")
    words = randint4x(seed, offsets, backend=backend)
    return _box_muller(words[..., 0], words[..., 1]).to(dtype)


def _box_muller(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    u0 = 1.0 - uint_to_uniform_float(w0.contiguous()).to(torch.float64)  # (0, 1]
    u1 = uint_to_uniform_float(w1.contiguous()).to(torch.float64)
    return torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(2.0 * math.pi * u1)


def visiting_order(keys: torch.Tensor) -> torch.Tensor:
    """The visiting order of a random single-site sweep (Hopfield recall, Boltzmann Gibbs):
    the stable argsort of the units' 32-bit Philox keys ((N,) uint32 words) -- by key, ties
    by the smaller unit -- (N,) int64. Every backend's kernel takes the same order
    (csrc/cpu/visiting_order.h, csrc/cuda/visiting_order.cuh, triton_common.visiting_order)."""
    return torch.argsort(keys.to(torch.int64), stable=True)


def wrap_int64(value: int) -> int:
    """An integer as the int64 it wraps to (two's complement): where counter offsets go
    past 2^63 - 1."""
    return (int(value) + 2**63) % 2**64 - 2**63


def _check_offset(name: str, offset) -> int:
    if isinstance(offset, bool):
        raise TypeError(f"{name} must be an int64; got bool {offset!r}")
    try:
        offset = operator.index(offset)
    except TypeError:
        raise TypeError(f"{name} must be an int64; got {type(offset).__name__} {offset!r}") from None
    if not -2**63 <= offset < 2**63:
        raise ValueError(f"{name} must be an int64 in [-2**63, 2**63); got {offset}")
    return offset


# Key of the fork derivation: a child's seed is two words of the parent's Philox under this
# key tweak, so the children's streams share no key with the parent or with each other
# (but with probability 2^-64).
_FORK_TWEAK = 0x9E3779B97F4A7C15


class PhiloxStream:
    """One random stream: a Philox key (the seed) and the next unused counter (the offset).

    Every draw takes the next block of counters (:meth:`take`) and advances past it, with
    the int64 wrap, so a model that owns a stream reproduces its run from the seed and
    resumes it from :meth:`state_dict`. The seed is checked once, here. Draws on any
    backend (``backend=`` as every op): :meth:`rand` (tl.rand's uniforms), :meth:`randn`
    (:func:`randn`'s normals), :meth:`bernoulli` (``rand < p``) and :meth:`randint4x`;
    uniforms, words and Bernoulli draws are bit-identical on every backend.

    Example::

        stream = PhiloxStream(seed=7)
        z = stream.randn(64, 2)                 # counters 0 .. 127
        mask = stream.bernoulli(torch.full((64,), 0.3))
        child = stream.fork(0)                  # an independent stream, same every run
    """

    __slots__ = ("_seed", "_offset")

    def __init__(self, seed: int = 0, offset: int = 0):
        self._seed = _check_seed(seed)
        self._offset = _check_offset("offset", offset)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def offset(self) -> int:
        """The next counter this stream hands out (an int64); assigning one moves the stream
        there (a model resumed from a checkpoint)."""
        return self._offset

    @offset.setter
    def offset(self, value: int) -> None:
        self._offset = _check_offset("offset", value)

    def take(self, n: int) -> int:
        """Reserve n counters: returns the first (an int64) and moves past them (wrapping)."""
        if type(n) is not int or n < 0:  # noqa: E721 (bool and int subclasses refused too)
            n = operator.index(n) if not isinstance(n, bool) and hasattr(n, "__index__") else n
            if type(n) is not int or n < 0:  # noqa: E721
                raise ValueError(f"n must be an integer >= 0 (counters to take); got {n!r}")
        first = self._offset
        nxt = first + n
        # int64 wrap, without the modular arithmetic unless it is needed
        self._offset = nxt if nxt < 2**63 else wrap_int64(nxt)
        return first

    def counters(self, *shape: int, device=None) -> torch.Tensor:
        """The next prod(shape) counters as an int64 tensor of that shape (row-major), taken;
        int64 tensor arithmetic wraps as the counters do."""
        return self._draw(shape, device, lambda c: c)

    def _draw(self, shape: tuple[int, ...], device, draw) -> torch.Tensor:
        """draw(counters) on the next prod(shape) counters, taken only once it succeeded (a
        call that raises -- a bad dtype, a backend that cannot run -- takes none)."""
        numel = math.prod(shape)
        counters = (torch.arange(numel, dtype=torch.int64, device=device) + self._offset).reshape(shape)
        out = draw(counters)
        self.take(numel)
        return out

    def randint4x(self, *shape: int, device=None, backend: str | None = None) -> torch.Tensor:
        return self._draw(shape, device, lambda c: randint4x(self._seed, c, backend=backend))

    def rand(self, *shape: int, device=None, backend: str | None = None) -> torch.Tensor:
        """(shape) float32 uniforms in [0, 1), one counter each."""
        return self._draw(shape, device, lambda c: rand(self._seed, c, backend=backend))

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32, device=None,
              backend: str | None = None) -> torch.Tensor:
        """(shape) standard normals in ``dtype``, one counter each (:func:`randn`)."""
        return self._draw(shape, device, lambda c: randn(self._seed, c, dtype=dtype, backend=backend))

    def bernoulli(self, p: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """uint8 draws, 1 where rand < p: p a float tensor of probabilities (its shape and
        device), one counter per element."""
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"p must be a floating-point tensor of probabilities; got "
                            f"{getattr(p, 'dtype', type(p).__name__)}")
        u = self.rand(*p.shape, device=p.device, backend=backend)
        return (u < p).to(torch.uint8)

    def fork(self, index: int) -> "PhiloxStream":
        """Child stream ``index`` (an int in [0, 2^63)): its seed is derived from this
        stream's seed and the index alone (not from the offset), so the same parent seed
        always forks the same children, and a child's draws never repeat the parent's."""
        index = _check_offset("index", index)
        if index < 0:
            raise ValueError(f"index must be >= 0; got {index}")
        words = _reference_randint4x(self._seed ^ _FORK_TWEAK, torch.tensor([index], dtype=torch.int64))
        w = words[0].view(torch.int32).to(torch.int64) & _MASK32
        return PhiloxStream((int(w[1]) << 32) | int(w[0]))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self._seed, "offset": self._offset}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or set(state) != {"seed", "offset"}:
            raise ValueError(f"a PhiloxStream state is a dict with keys 'seed' and 'offset'; got {state!r}")
        seed, offset = _check_seed(state["seed"]), _check_offset("offset", state["offset"])
        self._seed, self._offset = seed, offset

    def __repr__(self) -> str:
        return f"PhiloxStream(seed={self._seed}, offset={self._offset})"
