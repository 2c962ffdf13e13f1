"""Token-level divergences between target p and draft q, for distillation (DistillSpec).

All take logits ``(..., V)`` and return one value per position ``(...)``;
``masked_mean`` averages them over the positions a mask keeps.

* forward KL  KL(p || q) = sum p (log p - log q): mass-covering, the draft
  spreads over everything the target might say.
* reverse KL  KL(q || p): mode-seeking, the draft commits to what it can match.
* JSD(beta)   beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q:
  a true generalized Jensen-Shannon divergence through the mixture m.
* TVD         (1/2) sum |p - q| = 1 - sum min(p, q) = 1 - alpha: exactly the
  rejection probability of speculative sampling.

NaN or inf in the logits give NaN (the training loops then skip the step); a
temperature so small that finite logits / temperature overflow is an error.

A compact target (``compress``): the online decoder's replay buffer keeps, per
position, the target's top-k log-probabilities and the log of the mass left
over, not V logits (64 + 1 numbers instead of 151936 for Qwen). The
divergences then compare the k + 1 buckets "each top-k token" and "everything
else". Merging tokens into one bucket never increases an f-divergence (FKL,
RKL, JSD and TVD all are), and loses nothing when the target's tail is empty
or the draft's tail is proportional to the target's there.
Taught in ``notebooks/04_distillspec``.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from osd_lab.checks import (check_choice, check_float, check_int, check_same_shape,
                            check_tensor, finite_spread)

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


class CompactDistribution(NamedTuple):
    """A target distribution per position, kept as its top k tokens plus the rest."""

    top_log_probs: torch.Tensor  # (..., k) float32, log p of the k likeliest tokens
    top_indices: torch.Tensor    # (..., k) int32, their token ids
    tail_log_prob: torch.Tensor  # (...) float32, log of the mass of all other tokens

    def to(self, device):
        """The same distribution on ``device`` (as ``Tensor.to``)."""
        return CompactDistribution(*(t.to(device) for t in self))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self)


def _log_probs(target_logits, draft_logits, temperature):
    check_tensor("target_logits", target_logits, min_dims=1, floating=True)
    check_tensor("draft_logits", draft_logits, min_dims=1, floating=True)
    if target_logits.shape != draft_logits.shape:
        raise ValueError(f"target_logits {tuple(target_logits.shape)} and draft_logits "
                         f"{tuple(draft_logits.shape)} must have the same shape: the two "
                         f"models must score the same vocabulary (slice both to the shared "
                         f"vocab_size)")
    check_float("temperature", temperature, low=0, low_open=True)
    log_probs = []
    for name, logits in (("target_logits", target_logits), ("draft_logits", draft_logits)):
        scaled = logits.float() / temperature  # (..., V)
        if not finite_spread(scaled) and finite_spread(logits):
            raise ValueError(f"temperature={temperature} is too small for these {name}: "
                             f"{name} / temperature overflow float32")
        log_probs.append(F.log_softmax(scaled, -1))
    return log_probs


def _kl(log_a, log_b):
    """KL(a || b) over the last dim, from log-probabilities; 0 log 0 = 0 (an
    empty bucket adds nothing), while NaN stays NaN."""
    a = log_a.exp()
    return torch.where(a == 0, 0.0, a * (log_a - log_b)).sum(-1)


def forward_kl(target_logits, draft_logits, temperature=1.0):
    """KL(p || q) per position: ``(..., V), (..., V) -> (...)``."""
    return _kl(*_log_probs(target_logits, draft_logits, temperature))


def reverse_kl(target_logits, draft_logits, temperature=1.0):
    """KL(q || p) per position."""
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    return _kl(log_q, log_p)


def jsd(target_logits, draft_logits, beta=0.5, temperature=1.0):
    """Generalized Jensen-Shannon divergence JSD(beta) per position."""
    check_float("beta", beta, 0, 1, low_open=True, high_open=True)
    return _jsd(*_log_probs(target_logits, draft_logits, temperature), beta)


def _jsd(log_p, log_q, beta):
    # log m = log(beta p + (1 - beta) q), computed stably in log space
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta),
                                         log_q + math.log(1 - beta)]), dim=0)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def tvd(target_logits, draft_logits, temperature=1.0):
    """Total variation distance (1/2) sum |p - q| per position."""
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def _from_log_probs(kind, log_p, log_q, beta):
    """The divergence ``kind`` between two distributions given as log-probs."""
    if kind == "fkl":
        return _kl(log_p, log_q)
    if kind == "rkl":
        return _kl(log_q, log_p)
    if kind == "jsd":
        return _jsd(log_p, log_q, beta)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def token_divergence(kind, target_logits, draft_logits, temperature=1.0, beta=0.5):
    """Dispatch by name: one of ``DIVERGENCES``. ``target_logits`` may also be a
    ``CompactDistribution`` (then ``compact_divergence``, at temperature 1)."""
    check_choice("kind", kind, DIVERGENCES)
    if isinstance(target_logits, CompactDistribution):
        if temperature != 1.0:
            raise ValueError(f"a CompactDistribution holds the target at temperature 1; "
                             f"temperature must be 1.0 with it, got {temperature!r}")
        return compact_divergence(kind, target_logits, draft_logits, beta)
    if kind == "fkl":
        return forward_kl(target_logits, draft_logits, temperature)
    if kind == "rkl":
        return reverse_kl(target_logits, draft_logits, temperature)
    if kind == "jsd":
        return jsd(target_logits, draft_logits, beta, temperature)
    return tvd(target_logits, draft_logits, temperature)


# -----------------------------------------------------------------------------
# compact targets: top-k tokens plus one bucket for the rest

def compress(logits, top_k) -> CompactDistribution:
    """The distribution softmax(``logits``) ``(..., V)`` as its ``top_k`` likeliest
    tokens and the log of the mass of the other V - top_k (``-inf`` if none)."""
    check_tensor("logits", logits, min_dims=1, floating=True)
    check_int("top_k", top_k, 1, logits.shape[-1])
    log_probs = F.log_softmax(logits.float(), -1)  # (..., V)
    top, indices = log_probs.topk(top_k, -1)  # (..., k)
    # the rest, summed exactly (not 1 - sum(top), which cancels to 0 in float32)
    tail = log_probs.scatter(-1, indices, float("-inf")).logsumexp(-1)  # (...)
    return CompactDistribution(top, indices.int(), tail)


def compact_divergence(kind, target: CompactDistribution, draft_logits, beta=0.5):
    """The divergence ``kind`` per position between the target's k + 1 buckets
    (its top k tokens, and all others as one) and the draft's probabilities of
    the same buckets: ``CompactDistribution (...), (..., V) -> (...)``.

    It never exceeds the full-vocabulary divergence, and equals it when the
    target's tail is empty (``top_k`` covers its support)."""
    check_choice("kind", kind, DIVERGENCES)
    check_tensor("draft_logits", draft_logits, min_dims=1, floating=True)
    if target.top_indices.shape[:-1] != draft_logits.shape[:-1]:
        raise ValueError(f"the compact target covers positions "
                         f"{tuple(target.top_indices.shape[:-1])} but draft_logits "
                         f"{tuple(draft_logits.shape[:-1])}")
    log_q = F.log_softmax(draft_logits.float(), -1)  # (..., V)
    indices = target.top_indices.long()
    log_p, log_q_top = target.top_log_probs, log_q.gather(-1, indices)  # (..., k)
    if indices.shape[-1] < log_q.shape[-1]:  # the other tokens, as one bucket
        log_q_tail = log_q.scatter(-1, indices, float("-inf")).logsumexp(-1)  # (...)
        log_p = torch.cat([log_p, target.tail_log_prob[..., None]], -1)  # (..., k + 1)
        log_q_top = torch.cat([log_q_top, log_q_tail[..., None]], -1)
    return _from_log_probs(kind, log_p, log_q_top, beta)


def masked_mean(values, mask):
    """Mean of ``values`` ``(...)`` where ``mask`` ``(...)`` (bool) is True."""
    check_tensor("values", values, floating=True)
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    check_same_shape(("values", "mask"), values, mask)
    mask = mask.to(values.dtype)
    if mask.sum() == 0:
        raise ValueError("the mask keeps no position: nothing to learn from this batch "
                         "(are all tokens prompt tokens?)")
    return (values * mask).sum() / mask.sum()
