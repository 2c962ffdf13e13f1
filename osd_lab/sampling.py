"""From logits to tokens: temperature, top-k, top-p, sampling, seeds, device.

Everything works on tensors of shape ``(..., V)`` on any device, with no Python
loop over the vocabulary. Taught in ``notebooks/01_sampling_and_kv_cache``.
"""

import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (every CUDA device too)."""
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
    """Raise ``ValueError`` for settings that define no distribution."""
    if not temperature >= 0:  # also catches NaN
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 means off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means off), got {top_p}")


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """Turn logits ``(..., V)`` into next-token probabilities ``(..., V)``.

    Applied in the order of Hugging Face's ``generate``: temperature, then
    top-k, then top-p (nucleus). ``temperature=0`` is greedy decoding, a one-hot
    distribution on the argmax (the first one on ties, as ``torch.argmax``).
    ``top_k=0`` and ``top_p=1`` switch those filters off.
    """
    check_sampling_args(temperature, top_k, top_p)
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf: the model's output is broken "
                         "(check its dtype, e.g. float16 overflow on CPU)")
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p
        mass_above = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_above >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row from ``probs`` ``(..., V)``; returns ``(...)``."""
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator)  # (N, 1)
    return tokens.reshape(probs.shape[:-1])
