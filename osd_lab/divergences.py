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
"""

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


def _log_probs(target_logits, draft_logits, temperature):
    if target_logits.shape != draft_logits.shape:
        raise ValueError(f"target logits {tuple(target_logits.shape)} and draft logits "
                         f"{tuple(draft_logits.shape)} differ: the two models must score "
                         f"the same vocabulary (slice both to the shared vocab_size)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return (F.log_softmax(target_logits.float() / temperature, -1),
            F.log_softmax(draft_logits.float() / temperature, -1))


def forward_kl(target_logits, draft_logits, temperature=1.0):
    """KL(p || q) per position: ``(..., V), (..., V) -> (...)``."""
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(target_logits, draft_logits, temperature=1.0):
    """KL(q || p) per position."""
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def jsd(target_logits, draft_logits, beta=0.5, temperature=1.0):
    """Generalized Jensen-Shannon divergence JSD(beta) per position."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    # log m = log(beta p + (1 - beta) q), computed stably in log space
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta),
                                         log_q + math.log(1 - beta)]), dim=0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return beta * kl_pm + (1 - beta) * kl_qm


def tvd(target_logits, draft_logits, temperature=1.0):
    """Total variation distance (1/2) sum |p - q| per position."""
    log_p, log_q = _log_probs(target_logits, draft_logits, temperature)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def token_divergence(kind, target_logits, draft_logits, temperature=1.0, beta=0.5):
    """Dispatch by name: one of ``DIVERGENCES``."""
    if kind == "fkl":
        return forward_kl(target_logits, draft_logits, temperature)
    if kind == "rkl":
        return reverse_kl(target_logits, draft_logits, temperature)
    if kind == "jsd":
        return jsd(target_logits, draft_logits, beta, temperature)
    if kind == "tvd":
        return tvd(target_logits, draft_logits, temperature)
    raise ValueError(f"unknown divergence {kind!r}: use one of {DIVERGENCES}")


def masked_mean(values, mask):
    """Mean of ``values`` ``(...)`` where ``mask`` ``(...)`` is True."""
    mask = mask.to(values.dtype)
    if mask.sum() == 0:
        raise ValueError("the mask keeps no position: nothing to learn from this batch "
                         "(are all tokens prompt tokens?)")
    return (values * mask).sum() / mask.sum()
