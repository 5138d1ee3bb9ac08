"""Pure-PyTorch specification of the discretised logistic mixture (PixelCNN++, Salimans et
al., 2017): the output distribution of a pixel's C channels, each an integer level v in
[0, L), seen as the value x = 2 v / (L - 1) - 1 in [-1, 1].

A pixel's parameters are K mixture components, each with a logit pi_k, and per channel c a
mean m_kc, a log-scale l_kc (clamped below at LOG_SCALE_MIN) and, for the channels after the
first, coefficients that let the mean depend on the pixel's earlier channels (R before G
before B):

    mu_kc = m_kc + sum_{c' < c} tanh(a_k,cc') x_c'

In channel order the parameters of a pixel are laid out as

    [pi (K) | m (K x C) | l (K x C) | a (K x C (C - 1) / 2)]          (P = K (1 + 2C + C(C-1)/2))

with the K x ... blocks component-major, and a's pairs (c, c') in the order (1, 0), (2, 0),
(2, 1), ... Each channel is a logistic(mu_kc, s_kc = exp(l_kc)) discretised to the level's
bin [x - 1/(L-1), x + 1/(L-1)], the end bins stretching to -inf and +inf:

    P_kc(v) = sigma(b+) - sigma(b-),   b+- = (x_c - mu_kc +- 1/(L-1)) / s_kc
    (v = 0: sigma(b+); v = L - 1: 1 - sigma(b-))

and the pixel's probability is sum_k softmax(pi)_k prod_c P_kc(v_c). Logarithms are taken
stably for any b: log(sigma(b+) - sigma(b-)) = b- + log(expm1(b+ - b-)) - softplus(b+) -
softplus(b-), log(expm1(d)) = d + log1p(-exp(-d)) for large d (no switch to the density
at the bin centre, as the original code needs).

Sampling a pixel draws its channels in order, each by inverting the CDF of its level given
the earlier ones: the mixture weights become the posterior softmax(pi)_k prod_{c'<c}
P_kc'(v_c'), normalised -- one uniform per value, as every sampler of this family.
"""

from __future__ import annotations

import torch

LOG_SCALE_MIN = -7.0


def coefficient_count(channels: int) -> int:
    return channels * (channels - 1) // 2


def param_count(channels: int, mixtures: int) -> int:
    """P = K (1 + 2C + C (C - 1) / 2) parameters per pixel."""
    return mixtures * (1 + 2 * channels + coefficient_count(channels))


def split(params: torch.Tensor, channels: int, mixtures: int):
    """params (..., P) -> (pi (..., K), m (..., K, C), l (..., K, C) clamped, a (..., K, C(C-1)/2))."""
    k, c = mixtures, channels
    pi = params[..., :k]
    m = params[..., k:k + k * c].unflatten(-1, (k, c))
    log_s = params[..., k + k * c:k + 2 * k * c].unflatten(-1, (k, c)).clamp(min=LOG_SCALE_MIN)
    a = params[..., k + 2 * k * c:].unflatten(-1, (k, coefficient_count(c)))
    return pi, m, log_s, a


def means(m: torch.Tensor, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mu (..., K, C): m plus each channel's coefficients times the earlier channels' values
    x (..., C) (in [-1, 1])."""
    channels = m.shape[-1]
    mu = [m[..., 0]]
    pair = 0
    for c in range(1, channels):
        term = m[..., c]
        for earlier in range(c):
            term = term + torch.tanh(a[..., pair]) * x[..., None, earlier]
            pair += 1
        mu.append(term)
    return torch.stack(mu, -1)


def softplus(t: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(t)) exactly for every t (torch's F.softplus returns t itself above 20)."""
    return torch.logaddexp(t, torch.zeros_like(t))


def log_expm1(d: torch.Tensor) -> torch.Tensor:
    """log(exp(d) - 1) for d > 0 without overflow (both branches finite, so are their
    gradients)."""
    small, large = d.clamp(max=20.0), d.clamp(min=20.0)
    return torch.where(d > 20.0, large + torch.log1p(-torch.exp(-large)), torch.log(torch.expm1(small)))


def log_bin_probability(v: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(v) of a logistic(mu, exp(log_s)) discretised to L = levels bins on [-1, 1]
    (module docstring); v holds integer levels (as floats), broadcast with mu and log_s."""
    half = 1.0 / (levels - 1)
    x = v * (2.0 / (levels - 1)) - 1.0
    inv_s = torch.exp(-log_s)
    upper = (x - mu + half) * inv_s
    lower = (x - mu - half) * inv_s
    inner = lower + log_expm1(upper - lower) - softplus(upper) - softplus(lower)
    first = upper - softplus(upper)            # log sigma(upper)
    last = -softplus(lower)                    # log (1 - sigma(lower))
    return torch.where(v <= 0, first, torch.where(v >= levels - 1, last, inner))


def log_prob(params: torch.Tensor, v: torch.Tensor, mixtures: int, levels: int) -> torch.Tensor:
    """Per-pixel log-likelihood (nats).

    params: (B, P, H, W) (P = param_count(C, K)); v: (B, C, H, W) integer levels in [0, L)
    as floats. Returns (B, H, W): log sum_k softmax(pi)_k prod_c P_kc(v_c). Differentiable
    in params."""
    channels = v.shape[1]
    p = params.permute(0, 2, 3, 1)                                   # (B, H, W, P)
    vv = v.permute(0, 2, 3, 1).to(params.dtype)                       # (B, H, W, C)
    pi, m, log_s, a = split(p, channels, mixtures)
    mu = means(m, a, vv * (2.0 / (levels - 1)) - 1.0)
    per_channel = log_bin_probability(vv[..., None, :], mu, log_s, levels)   # (B, H, W, K, C)
    return torch.logsumexp(per_channel.sum(-1) + torch.log_softmax(pi, -1), -1)


def level_probabilities(params: torch.Tensor, earlier: torch.Tensor, channel: int, mixtures: int,
                        levels: int) -> torch.Tensor:
    """The distribution of one pixel channel's level given the pixel's earlier channels.

    params: (n, P) one pixel of n images; earlier: (n, C) levels (as floats), only channels
    < channel read. Returns (n, L) probabilities (in float64): sum_k w_k P_kc(v) with w the
    posterior weights softmax(pi)_k prod_{c' < c} P_kc'(v_c')."""
    n, channels = earlier.shape
    p = params.double()
    pi, m, log_s, a = split(p, channels, mixtures)
    x = earlier.double() * (2.0 / (levels - 1)) - 1.0
    mu = means(m, a, x)                                              # (n, K, C)
    weights = torch.log_softmax(pi, -1)
    for c in range(channel):
        weights = weights + log_bin_probability(earlier[:, None, c].double(), mu[..., c], log_s[..., c], levels)
    weights = torch.softmax(weights, -1)                              # (n, K)
    grid = torch.arange(levels, dtype=torch.float64, device=params.device)
    per = log_bin_probability(grid, mu[..., channel, None], log_s[..., channel, None], levels).exp()   # (n, K, L)
    return (weights[..., None] * per).sum(1)


def autograd_for(backward_op):
    """(backward, setup_context) of a fused log_prob op whose VJP is ``backward_op`` (grad,
    params, v, mixtures, levels) -> grad_params (v gets no gradient): the cpu and triton
    ops register the same formula."""

    def setup_context(ctx, inputs, output):
        params, v, mixtures, levels = inputs
        ctx.save_for_backward(params, v)
        ctx.args = (mixtures, levels)

    def backward(ctx, grad):
        params, v = ctx.saved_tensors
        grad_params = backward_op(grad, params, v, *ctx.args) if ctx.needs_input_grad[0] else None
        return grad_params, None, None, None

    return backward, setup_context
