import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from osd_lab.divergences import DIVERGENCES, jsd, masked_mean, token_divergence, tvd

P = torch.tensor([0.5, 0.5]).log()
Q = torch.tensor([0.9, 0.1]).log()


def test_kls_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 11, generator=gen) * 3, torch.randn(3, 4, 11, generator=gen) * 3
    fkl = kl_divergence(Categorical(logits=a), Categorical(logits=b))
    assert torch.allclose(token_divergence("fkl", a, b), fkl, atol=1e-5)
    assert torch.allclose(token_divergence("rkl", a, b),
                          kl_divergence(Categorical(logits=b), Categorical(logits=a)), atol=1e-5)
    # temperature divides the logits first
    assert torch.allclose(token_divergence("fkl", a, b, temperature=2.0),
                          kl_divergence(Categorical(logits=a / 2), Categorical(logits=b / 2)),
                          atol=1e-5)


def test_hand_computed_values():
    # p = (0.5, 0.5), q = (0.9, 0.1); m = (0.7, 0.3)
    kl_pm = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_qm = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    assert jsd(P, Q).item() == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, abs=1e-6)
    assert tvd(P, Q).item() == pytest.approx(0.4, abs=1e-6)
    assert token_divergence("fkl", P, Q).item() == pytest.approx(
        0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), abs=1e-6)


def test_jsd_is_a_mixture_divergence_not_a_blend_of_kls():
    # beta = 0.1: m = 0.1 p + 0.9 q
    m = 0.1 * torch.tensor([0.5, 0.5]) + 0.9 * torch.tensor([0.9, 0.1])
    expected = (0.1 * kl_divergence(Categorical(probs=torch.tensor([0.5, 0.5])), Categorical(probs=m))
                + 0.9 * kl_divergence(Categorical(probs=torch.tensor([0.9, 0.1])), Categorical(probs=m)))
    assert jsd(P, Q, beta=0.1).item() == pytest.approx(expected.item(), abs=1e-6)
    assert jsd(P, Q).item() <= math.log(2)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_when_equal_and_finite_gradients_at_extreme_logits(kind):
    logits = torch.randn(2, 7)
    assert torch.allclose(token_divergence(kind, logits, logits), torch.zeros(2), atol=1e-6)
    target = torch.tensor([[1e4, -1e4, 0.0, 50.0]])
    draft = torch.tensor([[-1e4, 1e4, 30.0, -80.0]], requires_grad=True)
    value = token_divergence(kind, target, draft).sum()
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(draft.grad).all()


def test_masked_mean_and_bad_input():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    assert masked_mean(values, torch.tensor([[False, True, True]])).item() == 2.5
    with pytest.raises(ValueError, match="keeps no position"):
        masked_mean(values, torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same vocabulary"):
        token_divergence("fkl", torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"kind must be one of \(.fkl., .rkl., .jsd., .tvd.\), got .kl."):
        token_divergence("kl", torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="beta"):
        jsd(P, Q, beta=1.0)
