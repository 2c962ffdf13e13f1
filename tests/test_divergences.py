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


# -----------------------------------------------------------------------------
# compact targets: top-k plus a tail bucket

from osd_lab.divergences import CompactDistribution, compact_divergence, compress  # noqa: E402


def _logits(seed, shape=(3, 5, 50), scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_compact_divergence_is_the_full_one_when_k_covers_the_vocabulary(kind):
    target, draft = _logits(0), _logits(1).requires_grad_()
    full = token_divergence(kind, target, draft)
    compact = compact_divergence(kind, compress(target, 50), draft)
    assert torch.allclose(compact, full, atol=1e-5)
    # and the gradient the draft learns from is the same
    (grad_full,) = torch.autograd.grad(full.sum(), draft)
    (grad_compact,) = torch.autograd.grad(compact.sum(), draft)
    assert torch.allclose(grad_compact, grad_full, atol=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_compact_divergence_matches_when_k_covers_the_targets_support(kind):
    """The target puts all its mass (up to e^-1000) on 8 tokens of 50; k = 8.
    Tolerance: 1e-5 absolute (FKL, JSD, TVD). RKL is about 1000 q(tail) on
    both sides (the draft's mass where the target has none); the bucket drops
    q(tail) KL(q's tail shape || p's tail shape) <= q(tail) log 42, so they
    agree within 5e-3 relative."""
    target = torch.full((3, 5, 50), -1000.0)
    support = torch.randperm(50, generator=torch.Generator().manual_seed(2))[:8]
    target[..., support] = _logits(3, (3, 5, 8))
    draft = _logits(4)
    full = token_divergence(kind, target, draft)
    compact = token_divergence(kind, compress(target, 8), draft)  # dispatches on the type
    if kind == "rkl":
        assert torch.allclose(compact, full, rtol=5e-3)
    else:
        assert torch.allclose(compact, full, atol=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("top_k", [1, 4, 16, 49])
def test_compact_divergence_never_exceeds_the_full_one(kind, top_k):
    """Merging tokens into one bucket cannot increase an f-divergence."""
    target, draft = _logits(5), _logits(6)
    full = token_divergence(kind, target, draft)
    compact = compact_divergence(kind, compress(target, top_k), draft)
    assert (compact <= full + 1e-5).all() and (compact >= -1e-6).all()


def test_compress_keeps_the_top_tokens_and_the_exact_tail_mass():
    target = _logits(7)
    compact = compress(target, 10)
    probs = torch.softmax(target, -1)
    top = probs.topk(10, -1)
    assert torch.allclose(compact.top_log_probs.exp(), top.values, atol=1e-6)
    assert torch.equal(compact.top_indices.long(), top.indices)
    assert torch.allclose(compact.tail_log_prob.exp(), 1 - top.values.sum(-1), atol=1e-5)
    assert compress(target, 50).tail_log_prob.isneginf().all()  # nothing left over


def test_a_compact_buffer_of_128_queries_at_qwens_vocabulary_is_small():
    """128 queries x 32 positions x 151936 ids: 2.3 GiB as float32 logits,
    2.0 MiB at top-64 (64 log-probs, 64 ids and one tail per position)."""
    one_query = compress(torch.randn(32, 151936), 64)
    assert isinstance(one_query, CompactDistribution)
    assert 128 * one_query.nbytes == 128 * 32 * (64 * 8 + 4) < 2**30


@pytest.mark.parametrize("top_k, message", [
    (0, r"top_k must be an integer in \[1, 50\], got 0"),
    (51, r"top_k must be an integer in \[1, 50\], got 51"),
    (4.0, r"top_k must be an integer in \[1, 50\], got 4.0"),
])
def test_compress_refuses_a_bad_top_k(top_k, message):
    with pytest.raises(ValueError, match=message):
        compress(_logits(0), top_k)


def test_compact_target_needs_temperature_1_and_matching_positions():
    target = compress(_logits(0), 4)
    with pytest.raises(ValueError, match="temperature must be 1.0"):
        token_divergence("fkl", target, _logits(1), temperature=2.0)
    with pytest.raises(ValueError, match="covers positions"):
        compact_divergence("fkl", target, _logits(1, (3, 4, 50)))
