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
Taught in ``notebooks/04_distillspec``.
"""

import math

import torch
import torch.nn.functional as F

from osd_lab.checks import (check_choice, check_float, check_same_shape, check_tensor,
                            finite_spread)

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


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
    check_float("beta", beta, 0, 1, low_open=True, high_open=True)
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
    check_choice("kind", kind, DIVERGENCES)
    if kind == "fkl":
        return forward_kl(target_logits, draft_logits, temperature)
    if kind == "rkl":
        return reverse_kl(target_logits, draft_logits, temperature)
    if kind == "jsd":
        return jsd(target_logits, draft_logits, beta, temperature)
    return tvd(target_logits, draft_logits, temperature)


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
