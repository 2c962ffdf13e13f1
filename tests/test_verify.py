import pytest
import torch

from osd_lab.verify import overlap, residual_distribution, verify

P = torch.tensor([[[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]])  # (1, 2, 3)
Q = torch.tensor([[[0.2, 0.6, 0.2]]])  # (1, 1, 3)


@pytest.mark.parametrize("p, q, tokens, message", [
    (P * 2, Q, torch.tensor([[1]]), "p must be probabilities"),  # not normalised
    (P, Q + torch.tensor([-0.4, 0.4, 0.0]), torch.tensor([[1]]), "q must be probabilities"),
    (P, Q, torch.tensor([[3]]), r"draft_tokens must be token ids in \[0, 3\), got 3"),
    (P, Q, torch.tensor([[1.0]]), "draft_tokens must be integer token ids"),
    (P, Q, torch.tensor([[1, 2]]), "must have shapes"),
    (P[:, :1], Q, torch.tensor([[1]]), "must have shapes"),
    (P.long(), Q, torch.tensor([[1]]), "p must be a floating-point tensor"),
    (P[0], Q, torch.tensor([[1]]), "p must have 3 dimensions"),
])
def test_bad_distributions_are_refused(p, q, tokens, message):
    """Issue 13: verify accepted unnormalised and negative distributions."""
    with pytest.raises(ValueError, match=message):
        verify(p, q, tokens)


def test_overlap_and_residual_refuse_bad_distributions():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    with pytest.raises(ValueError, match="q must be probabilities"):
        overlap(p, q * 3)
    with pytest.raises(ValueError, match="p and q must have the same shape"):
        overlap(p, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="p must be probabilities"):
        residual_distribution(-p, q)


def test_hand_computed_acceptance_and_residual(device):
    p = torch.tensor([0.5, 0.3, 0.2], device=device)
    q = torch.tensor([0.2, 0.6, 0.2], device=device)
    # alpha = sum min = 0.2 + 0.3 + 0.2
    assert overlap(p, q).item() == pytest.approx(0.7)
    # max(0, p - q) = [0.3, 0, 0] -> all residual mass on token 0
    assert residual_distribution(p, q).tolist() == pytest.approx([1.0, 0.0, 0.0])
    # drafting token 1: accepted with min(1, 0.3 / 0.6) = 0.5; token 0: min(1, 2.5) = 1
    batch = 200_000
    p_b = p.expand(batch, 2, 3)
    q_b = q.expand(batch, 1, 3)
    for token, accept in ((1, 0.5), (0, 1.0), (2, 1.0)):
        result = verify(p_b, q_b, torch.full((batch, 1), token, device=device),
                        torch.Generator(device=device).manual_seed(token))
        assert result.accept_prob[0, 0].item() == pytest.approx(accept)
        rate = result.num_accepted.float().mean().item()
        assert rate == pytest.approx(accept, abs=0.005)
        rejected = result.num_accepted == 0
        if rejected.any():  # every replacement comes from the residual: token 0
            assert (result.next_token[rejected] == 0).all()


@pytest.mark.exactness
def test_greedy_is_the_temperature_zero_case(device):
    one_hot = torch.nn.functional.one_hot
    p = one_hot(torch.tensor([[2, 0, 1]], device=device), 4).float()  # target argmaxes
    q = one_hot(torch.tensor([[2, 3]], device=device), 4).float()
    result = verify(p, q, torch.tensor([[2, 3]], device=device))
    assert result.num_accepted.tolist() == [1]  # 2 matches, 3 != 0
    assert result.next_token.tolist() == [0]  # the target's argmax replaces it
    all_ok = verify(p, q[:, :1].clone(), torch.tensor([[2]], device=device))
    assert all_ok.num_accepted.tolist() == [1] and all_ok.next_token.tolist() == [0]


@pytest.mark.exactness
def test_first_token_is_distributed_as_target(device):
    """One batched verification step: the emitted token ~ p_1 exactly, whatever q is."""
    gen = torch.Generator(device=device).manual_seed(0)
    batch, gamma, vocab = 400_000, 3, 5
    p = torch.softmax(torch.randn(1, gamma + 1, vocab, generator=gen, device=device) * 2, -1)
    q = torch.softmax(torch.randn(1, gamma, vocab, generator=gen, device=device) * 2, -1)
    drafted = torch.multinomial(q[0], batch, replacement=True, generator=gen).T  # (B, G)
    result = verify(p.expand(batch, -1, -1), q.expand(batch, -1, -1), drafted, gen)
    first = torch.where(result.num_accepted > 0, drafted[:, 0], result.next_token)
    freq = torch.bincount(first, minlength=vocab) / batch
    assert torch.allclose(freq, p[0, 0], atol=0.003)
    # and the mean number of accepted tokens at position 1 is alpha_1
    assert (result.num_accepted > 0).float().mean().item() == pytest.approx(
        overlap(p[0, 0], q[0, 0]).item(), abs=0.003)


def test_all_accepted_gives_bonus_from_last_position(device):
    p = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], device=device)
    q = torch.tensor([[[0.0, 1.0, 0.0]]], device=device)
    result = verify(p, q, torch.tensor([[1]], device=device))
    assert result.num_accepted.tolist() == [1] and result.next_token.tolist() == [2]
