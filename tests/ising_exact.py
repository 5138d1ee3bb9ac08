"""Exact results of the 2-D Ising model (J = 1, k_B = 1) that tests/test_ising.py checks the
samplers against: Onsager's energy and Yang's spontaneous magnetisation of the infinite
lattice, Kaufman's partition function of the finite periodic L x L lattice, and brute-force
enumeration of tiny lattices (which checks the Kaufman implementation)."""
from __future__ import annotations

import math

import numpy as np

T_CRITICAL = 2.0 / math.log(1.0 + math.sqrt(2.0))


def ellipk(k: float) -> float:
    """Complete elliptic integral of the first kind, modulus k in [0, 1): pi / (2 AGM(1, k'))."""
    a, b = 1.0, math.sqrt(1.0 - k * k)
    while abs(a - b) > 1e-16 * a:
        a, b = (a + b) / 2.0, math.sqrt(a * b)
    return math.pi / (2.0 * a)


def onsager_energy(temperature: float) -> float:
    """Energy per spin of the infinite square lattice (Onsager 1944):
    u = -coth 2K [1 + (2 / pi) (2 tanh^2 2K - 1) K1(q)], q = 2 sinh 2K / cosh^2 2K."""
    k2 = 2.0 / temperature
    q = min(1.0, 2.0 * math.sinh(k2) / math.cosh(k2) ** 2)
    factor = 2.0 * math.tanh(k2) ** 2 - 1.0
    # at T_c, q = 1 and K1 diverges logarithmically while the factor vanishes linearly
    singular = 0.0 if q >= 1.0 else factor * ellipk(q)
    return -(1.0 / math.tanh(k2)) * (1.0 + (2.0 / math.pi) * singular)


def yang_magnetization(temperature: float) -> float:
    """Spontaneous magnetisation (Yang 1952): (1 - sinh(2K)^-4)^(1/8) below T_c, else 0."""
    if temperature >= T_CRITICAL:
        return 0.0
    return (1.0 - math.sinh(2.0 / temperature) ** -4) ** 0.125


def _log_abs_prod(values: np.ndarray) -> tuple[float, float]:
    """(log |prod|, sign of prod) of a float64 array."""
    if np.any(values == 0):
        return -math.inf, 0.0
    return float(np.sum(np.log(np.abs(values)))), float(np.prod(np.sign(values)))


def _log_2cosh(x: np.ndarray) -> np.ndarray:
    return np.abs(x) + np.log1p(np.exp(-2.0 * np.abs(x)))


def _log_abs_2sinh(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    with np.errstate(divide="ignore"):
        return ax + np.log(-np.expm1(-2.0 * ax))


def kaufman_log_z(K: float, L: int) -> float:
    """log Z of the periodic L x L lattice at coupling K = J / T (Kaufman 1949):

    Z = 1/2 (2 sinh 2K)^(N/2) (Z1 + Z2 + Z3 + Z4),
    Z1 = prod_r 2 cosh(L g_{2r+1} / 2), Z2 = prod_r 2 sinh(L g_{2r+1} / 2),
    Z3 = prod_r 2 cosh(L g_{2r} / 2),   Z4 = prod_r 2 sinh(L g_{2r} / 2),  r = 0..L-1,
    cosh g_k = cosh 2K coth 2K - cos(pi k / L) (k >= 1), g_0 = 2K + log tanh K
    (g_0 < 0 above T_c: Z4 is then negative). Evaluated in log space."""
    k = np.arange(2 * L, dtype=np.float64)
    c = math.cosh(2 * K) / math.tanh(2 * K) - np.cos(np.pi * k / L)
    gamma = np.arccosh(c)
    gamma[0] = 2 * K + math.log(math.tanh(K))
    odd, even = gamma[1::2] * L / 2, gamma[0::2] * L / 2
    terms = [(float(np.sum(_log_2cosh(odd))), 1.0),
             (float(np.sum(_log_abs_2sinh(odd))), float(np.prod(np.sign(odd)))),
             (float(np.sum(_log_2cosh(even))), 1.0),
             (float(np.sum(_log_abs_2sinh(even))), float(np.prod(np.sign(even))))]
    top = max(t for t, _ in terms)
    total = sum(sign * math.exp(t - top) for t, sign in terms)
    n = L * L
    return math.log(0.5) + n / 2 * math.log(2 * math.sinh(2 * K)) + top + math.log(total)


def kaufman_energy(temperature: float, L: int, step: float = 1e-5) -> float:
    """<E> / N of the periodic L x L lattice: -(1/N) d log Z / dK (central difference)."""
    K = 1.0 / temperature
    d = (kaufman_log_z(K + step, L) - kaufman_log_z(K - step, L)) / (2 * step)
    return -d / (L * L)


def enumerate_lattice(L: int) -> tuple[np.ndarray, np.ndarray]:
    """Bond sums and spin sums of all 2^(L^2) configurations of the periodic L x L lattice."""
    n = L * L
    states = ((np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)) & 1) * 2 - 1
    s = states.reshape(-1, L, L)
    bonds = (s * np.roll(s, 1, 1) + s * np.roll(s, 1, 2)).sum(axis=(1, 2))
    return bonds, s.sum(axis=(1, 2))


def brute_force(L: int, temperature: float, h: float = 0.0) -> dict[str, float]:
    """log Z, <E>/N and <|M|>/N of the periodic L x L lattice by enumeration (J = 1)."""
    bonds, spins = enumerate_lattice(L)
    log_w = (bonds + h * spins) / temperature
    top = log_w.max()
    w = np.exp(log_w - top)
    z = w.sum()
    n = L * L
    return {"log_z": float(top + np.log(z)),
            "energy": float((w * (-bonds - h * spins)).sum() / z / n),
            "abs_magnetization": float((w * np.abs(spins)).sum() / z / n)}
