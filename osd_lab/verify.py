"""Lossless verification of drafted tokens (Leviathan et al. 2023; Chen et al. 2023).

The draft proposed tokens x_1..x_G, each sampled from its distribution q_i.
The target scored the same positions in one pass, giving p_1..p_{G+1}.
Going left to right, accept x_i with probability min(1, p_i(x_i) / q_i(x_i)).
At the first rejection, sample a replacement from the residual
norm(max(0, p_i - q_i)); if all G are accepted, sample a bonus token from
p_{G+1}. Every emitted token is then distributed exactly as the target's p.
Greedy decoding is the temperature-0 case: p and q are one-hot, a drafted
token is accepted iff it is the target's argmax, and the residual is the
target's argmax. Taught in ``notebooks/02_speculative_decoding``.
"""

from dataclasses import dataclass

import torch

from osd_lab.checks import check_generator, check_probs, check_same_shape, check_token_ids
from osd_lab.sampling import multinomial


@dataclass
class Verification:
    """What verification decided for each of B sequences."""

    num_accepted: torch.Tensor  # (B,) accepted drafted tokens, in [0, G]
    next_token: torch.Tensor  # (B,) the residual sample, or the bonus token if all accepted
    accept_prob: torch.Tensor  # (B, G) min(1, p(x) / q(x)) at each drafted position


def overlap(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact acceptance rate alpha = sum_v min(p, q) over the last dim: ``(..., V) -> (...)``.

    It equals 1 - TV(p, q): the chance that a token drawn from q is accepted
    when the target distribution is p. Both must be distributions of one shape.
    """
    check_probs("p", p)
    check_probs("q", q)
    check_same_shape(("p", "q"), p, q)
    return exact_alpha(p, q)


def exact_alpha(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``overlap`` without the checks, for p and q a decoder has just made."""
    return torch.minimum(p, q).sum(-1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dim, ``(..., V)``.

    Where p <= q everywhere (only if p == q, when a rejection cannot happen)
    the residual is empty; we return p there so the result is always a
    distribution. A row of q may be all zeros (nothing drafted): the residual is p.
    """
    check_probs("p", p)
    check_probs("q", q, zero_rows=True)
    check_same_shape(("p", "q"), p, q)
    return residual(p, q)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``residual_distribution`` without the checks."""
    leftover = torch.clamp(p - q, min=0)
    mass = leftover.sum(-1, keepdim=True)
    return torch.where(mass > 0, leftover / mass.clamp_min(1e-30), p)


def verify(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
           generator: torch.Generator | None = None) -> Verification:
    """Accept or reject drafted tokens; batched over B sequences.

    p: ``(B, G + 1, V)`` target probabilities at the G drafted positions and
       the position after them (positions after those are not read).
    q: ``(B, G, V)`` draft probabilities the drafted tokens were sampled from.
    draft_tokens: ``(B, G)`` the drafted token ids.
    generator: on the tensors' device, for reproducible coin flips.
    The inputs are checked (device syncs and passes over the vocabulary); the
    decoders call ``rejection_sample`` on the p and q they have just made.
    """
    check_probs("p", p, dims=3)
    check_probs("q", q, dims=3)
    draft_tokens = check_token_ids("draft_tokens", draft_tokens, p.shape[-1])  # (B, G)
    if p.shape[0] != q.shape[0] or p.shape[1] < q.shape[1] + 1 \
            or p.shape[2] != q.shape[2] or draft_tokens.shape != q.shape[:2]:
        raise ValueError(f"p, q and draft_tokens must have shapes (B, G + 1, V), (B, G, V) "
                         f"and (B, G), got {tuple(p.shape)}, {tuple(q.shape)} and "
                         f"{tuple(draft_tokens.shape)}")
    check_generator(generator, p.device, "the tensor p is")
    return rejection_sample(p, q, draft_tokens, generator)


def rejection_sample(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
                     generator: torch.Generator | None = None) -> Verification:
    """``verify`` without the checks: the algorithm itself."""
    batch, gamma, vocab = q.shape
    # 1. acceptance probability of each drafted token: min(1, p(x) / q(x))
    p_x = p[:, :gamma].gather(-1, draft_tokens[..., None]).squeeze(-1)  # (B, G)
    q_x = q.gather(-1, draft_tokens[..., None]).squeeze(-1)  # (B, G)
    accept_prob = torch.clamp(p_x / q_x.clamp_min(1e-30), max=1.0)
    # 2. one uniform coin per position; count the accepted run from the left
    coins = torch.rand(batch, gamma, device=p.device, generator=generator)
    accepted = (coins < accept_prob).long()  # (B, G)
    num_accepted = accepted.cumprod(-1).sum(-1)  # (B,)
    # 3. the next token: from the residual at the first rejection, or from
    #    p_{G+1} when all were accepted (there q is taken as 0, so residual = p)
    rows = torch.arange(batch, device=p.device)
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # (B, G + 1, V)
    next_token = multinomial(residual(p[rows, num_accepted], q_padded[rows, num_accepted]),
                             generator)  # (B,)
    return Verification(num_accepted, next_token, accept_prob)
