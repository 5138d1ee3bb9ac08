"""genkernels.check_autoregressive: the family's models pass, the classic PixelCNN's blind
spot is reported, and wrong masks are caught."""

import pytest
import torch

import genkernels
from genkernels import GatedPixelCNN, MaskedConv2d, check_autoregressive
from genkernels.autoregressive.conv_reference import FULL, INCLUSIVE, OFF, tap_rules


def _stack(first_type="A", layers=4, channels=8, groups=1, first_rules=None):
    torch.manual_seed(0)
    mods = [MaskedConv2d(groups, channels, 3, first_type, channel_groups=groups, rules=first_rules), torch.nn.Tanh()]
    for _ in range(layers - 2):
        mods += [MaskedConv2d(channels, channels, 3, "B", channel_groups=groups), torch.nn.Tanh()]
    mods.append(MaskedConv2d(channels, groups, 1, "B", channel_groups=groups))
    return torch.nn.Sequential(*mods).double()


@pytest.mark.parametrize("channels, head", [(1, "bernoulli"), (3, "categorical")])
def test_gated_pixelcnn_is_causal_without_a_blind_spot(channels, head):
    torch.manual_seed(0)
    model = GatedPixelCNN(channels, 6 * channels, 3, 5, head=head, levels=4, seed=0).double()
    report = check_autoregressive(model, (channels, 5, 6))
    assert report.ok and not report.blind, str(report)
    assert int(report.receptive_field[-1]) == channels * 30 - 1      # the last value sees all the others
    assert "no blind spot" in str(report)


def test_plain_pixelcnn_has_the_blind_spot():
    """A stack of 3 x 3 masked convolutions is causal, but the pixel up and two to the right
    is out of reach however deep the stack (van den Oord et al., 2016)."""
    report = check_autoregressive(_stack(layers=5), (1, 6, 6))
    assert report.ok
    out, blind_input = 3 * 6 + 1, 2 * 6 + 3           # output (3, 1) never sees input (2, 3)
    assert blind_input in report.blind[out]
    assert "blind spots" in str(report)


@pytest.mark.parametrize("wrong", ["type B first", "centre group inclusive", "taps below"])
def test_a_wrong_mask_is_caught(wrong):
    if wrong == "type B first":
        net = _stack("B")
        shape = (1, 5, 5)
    elif wrong == "centre group inclusive":   # the first layer lets colour g see itself
        net = _stack(groups=3, channels=9, first_rules=list(tap_rules((3, 3), "B", 3)))
        shape = (3, 4, 4)
    else:                                      # a mask flipped upside down
        flipped = [FULL] * 3 + [FULL, OFF, OFF] + [OFF] * 3
        flipped = flipped[::-1]
        net = _stack(first_rules=flipped)
        shape = (1, 5, 5)
    report = check_autoregressive(net, shape)
    assert not report.ok and report.violations
    assert "VIOLATIONS" in str(report) and "which is not before it" in str(report)


def test_orders_and_vectors():
    w = torch.tril(torch.ones(4, 4), diagonal=-1).double()      # output i sums inputs < i
    report = check_autoregressive(lambda x: x @ w.T, (4,), order="natural")
    assert report.ok and not report.blind
    backwards = check_autoregressive(lambda x: x @ w.T, (4,), order=torch.tensor([3, 2, 1, 0]))
    assert not backwards.ok and len(backwards.violations) == 6
    assert genkernels.autoregressive.AutoregressiveReport is type(report)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=(4,), order="raster"), ValueError, r"\(C, H, W\)"),
    (dict(shape=(4,), order=torch.tensor([0, 1, 1, 2])), ValueError, "permutation"),
    (dict(shape=(4,), order="zigzag"), ValueError, "order"),
    (dict(shape=(0,), order="natural"), ValueError, "shape"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_autoregressive(lambda x: x, **kwargs)


def test_inclusive_rule_constant_is_the_type_b_centre():
    assert tap_rules((1, 1), "B", 3) == (INCLUSIVE,)
