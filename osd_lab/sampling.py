"""From logits to tokens: temperature, top-k, top-p, sampling, seeds, device.

Everything works on tensors of shape ``(..., V)`` on any device, with no Python
loop over the vocabulary. Taught in ``notebooks/01_sampling_and_kv_cache``.
"""

import os
import random

import numpy as np
import torch

from osd_lab.checks import (check_float, check_generator, check_int, check_probs, check_seed,
                            check_tensor)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (every CUDA device too)."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` if given, else the environment variable
    ``OSD_LAB_DEVICE`` if set, else the best available: cuda, then mps, then cpu.

    A device asked for that this machine lacks is an error, not a silent fallback.
    """
    if device is None:
        device = os.environ.get("OSD_LAB_DEVICE") or None
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps' (argument or "
                         f"OSD_LAB_DEVICE), got {device!r}") from error
    available = {"cpu": True, "meta": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)
                             and torch.backends.mps.is_available())}
    if not available.get(device.type, False):
        raise ValueError(f"device {str(device)!r} was asked for (argument or OSD_LAB_DEVICE) "
                         f"but is not available here; available: "
                         f"{[name for name, ok in available.items() if ok and name != 'meta']}")
    return device


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ``ValueError`` for settings that define no distribution: temperature
    >= 0 (0 means greedy), top_k >= 0 (0 means off), top_p in (0, 1] (1 means off)."""
    check_float("temperature", temperature, low=0)
    check_int("top_k", top_k, low=0)
    check_float("top_p", top_p, 0, 1, low_open=True)


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """Turn logits ``(..., V)`` into next-token probabilities ``(..., V)``.

    Applied in the order of Hugging Face's ``generate``: temperature, then
    top-k, then top-p (nucleus). ``temperature=0`` is greedy decoding, a one-hot
    distribution on the argmax (the first one on ties, as ``torch.argmax``).
    ``top_k=0`` and ``top_p=1`` switch those filters off. Any temperature > 0,
    however small, and any top_p > 0 give a distribution (never NaN), as do
    any finite logits (float64 ones beyond float32's range too). The result
    is float32.
    """
    check_sampling_args(temperature, top_k, top_p)
    check_tensor("logits", logits, min_dims=1, floating=True)
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must score at least one token, got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf: the model's output is broken "
                         "(check its dtype, e.g. float16 overflow on CPU)")
    if temperature == 0:  # the argmax of the logits as given (1e300 and 2e300 differ)
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    # subtract the max before dividing: the result is <= 0, so a tiny temperature
    # (1e-40) gives -inf for the rest, not inf - inf = NaN; where float32 rounds the
    # temperature to 0, 0 / 0 at the max is replaced by 0. (Where logits / temperature
    # would overflow, exp underflows to 0 anyway: this is exactly the float32 result.)
    # Half precision is shifted in float32, float64 in float64 and only then made
    # float32: float64 logits of 1e300 would be inf in float32, and inf - inf NaN.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    shifted = (logits - logits.amax(-1, keepdim=True)).float()  # (..., V), <= 0
    logits = torch.where(shifted == 0, 0.0, shifted / temperature)
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p
        mass_above = sorted_probs.cumsum(-1) - sorted_probs
        drop = mass_above >= top_p
        drop[..., 0] = False  # always keep the most likely token (top_p=1e-50 is 0 in float32)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def greedy_token(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top, token)``: the largest logit and its id over the last dim,
    ``(..., V) -> (...), (...)``. The token is what ``logits_to_probs`` at
    temperature 0 puts its one-hot on (the first argmax), without making the
    ``(..., V)`` distribution; ``check_top_logits(top)`` then finds NaN or inf
    (a NaN is the max wherever it occurs) in one device sync for any number of calls.
    """
    top, token = logits.max(-1)
    return top, token


def check_top_logits(top: torch.Tensor) -> None:
    """Raise ``ValueError`` if largest logits from ``greedy_token`` are NaN or inf."""
    if not torch.isfinite(top).all():
        raise ValueError("logits contain NaN or inf: the model's output is broken "
                         "(check its dtype, e.g. float16 overflow on CPU)")


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row from ``probs`` ``(..., V)``; returns ``(...)``.

    Checks its inputs (a device sync and a pass over the vocabulary); the
    decoders call ``multinomial`` on the probabilities ``logits_to_probs``
    has just made.
    """
    check_probs("probs", probs)
    check_generator(generator, probs.device, "the tensor probs is")
    return multinomial(probs, generator)


def multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``sample`` without the checks: ``(..., V) -> (...)``."""
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator)  # (N, 1)
    return tokens.reshape(probs.shape[:-1])
