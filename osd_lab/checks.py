"""Checking arguments, in one place: every public function of ``osd_lab`` uses these.

Each check raises ``ArgumentError`` with a message of one form,
``"<name> must be <what is allowed>, got <value!r>"``. A value is used as the
caller gave it, never silently converted (only ``check_token_ids`` and
``check_seed`` return the value, in the one form the caller needs). So
``True`` is not an integer, ``2.0`` is not an integer, NaN and inf are not
finite numbers, float token ids are not token ids, and ``[0.5, 0.6]`` is not a
probability distribution. ``ArgumentError`` is both a ``ValueError`` and a
``TypeError`` (as NumPy's ``AxisError`` is both a ``ValueError`` and an
``IndexError``): ``except ValueError`` catches every bad argument, as the
dashboard and the command line do, and a wrong type is still a ``TypeError``.
No notebook teaches it: a student meets it only through its messages.
"""

import math
import numbers

import torch

PROB_TOLERANCE = 1e-3  # how far from 1 a float32 distribution's sum may be


class ArgumentError(ValueError, TypeError):
    """A bad argument: its message names the argument and what is allowed."""


def describe_range(low=None, high=None, low_open=False, high_open=False) -> str:
    """``"in [0, 1)"``, ``">= 1"``, ``"> 0"`` ... for an error message."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def in_range(value, low, high, low_open, high_open) -> bool:
    return ((low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))


def is_integer(value) -> bool:
    """An ``int`` (or NumPy integer), not a bool, not a float such as 2.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, low=None, high=None) -> None:
    """``value`` is an integer in ``[low, high]`` (``None``: no bound)."""
    if not is_integer(value) or not in_range(value, low, high, False, False):
        allowed = " ".join(("an integer", describe_range(low, high))).strip()
        raise ArgumentError(f"{name} must be {allowed}, got {value!r}")


def check_float(name: str, value, low=None, high=None, low_open=False, high_open=False,
                finite=True) -> None:
    """``value`` is a real number (int or float, not a bool, not NaN) in the
    range; ``finite=False`` also allows +-inf where the range does."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and not math.isnan(value) and (not finite or math.isfinite(value))
          and in_range(value, low, high, low_open, high_open))
    if not ok:
        kind = "a finite number" if finite else "a number"
        allowed = " ".join((kind, describe_range(low, high, low_open, high_open))).strip()
        raise ArgumentError(f"{name} must be {allowed}, got {value!r}")


def check_seed(seed) -> int:
    """A seed: an integer in [0, 2**32 - 1] (NumPy's range). Returns it as a
    Python ``int``: ``random.Random`` and ``torch.Generator`` refuse NumPy's."""
    check_int("seed", seed, 0, 2**32 - 1)
    return int(seed)


def check_choice(name: str, value, allowed) -> None:
    """``value`` is one of ``allowed`` (same type too: 1 is not True)."""
    if not any(type(value) is type(option) and value == option for option in allowed):
        raise ArgumentError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_tensor(name: str, value, dims: int | None = None, min_dims: int = 0,
                 floating: bool = False) -> None:
    """``value`` is a ``torch.Tensor`` with ``dims`` dimensions (or at least
    ``min_dims``) and, if ``floating``, a floating-point dtype."""
    if not isinstance(value, torch.Tensor):
        raise ArgumentError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if (dims is not None and value.dim() != dims) or value.dim() < min_dims:
        wanted = dims if dims is not None else f"{min_dims} or more"
        raise ArgumentError(f"{name} must have {wanted} dimensions, got shape "
                            f"{tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise ArgumentError(f"{name} must be a floating-point tensor, got {value.dtype}")


def check_token_ids(name: str, ids, vocab_size: int) -> torch.Tensor:
    """Token ids: a tensor of an integer dtype or a (nested) list of ints, each
    in ``[0, vocab_size)``. Returns them as a ``torch.long`` tensor (a list
    becomes one; a tensor keeps its values and device). An empty list is fine
    here (``torch.tensor([])`` is float; it has no value to truncate)."""
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.tensor(ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ArgumentError(f"{name} must be token ids (a tensor or list of ints), "
                                f"got {ids!r}") from err
    if ids.numel() and (ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex()):
        raise ArgumentError(f"{name} must be integer token ids, got dtype {ids.dtype} "
                            f"(floats are not truncated: convert them yourself)")
    if ids.numel() and not ids.is_meta and not bool(((ids >= 0) & (ids < vocab_size)).all()):
        bad = ids[(ids < 0) | (ids >= vocab_size)].flatten()[0].item()
        raise ArgumentError(f"{name} must be token ids in [0, {vocab_size}), got {bad}")
    return ids.long()


def check_probs(name: str, probs, dims: int | None = None, zero_rows: bool = False) -> None:
    """``probs`` ``(..., V)``: a floating-point tensor (of ``dims`` dimensions, if
    given) of finite, non-negative values, each row summing to 1 within
    ``PROB_TOLERANCE`` (or, with ``zero_rows``, all zeros: "nothing here")."""
    check_tensor(name, probs, dims, min_dims=1, floating=True)
    if probs.shape[-1] == 0:
        raise ArgumentError(f"{name} must have at least one token in its last dim, got shape "
                            f"{tuple(probs.shape)}")
    sums = probs.sum(-1)  # (...)
    off = (sums - 1).abs()
    if zero_rows:
        off = torch.minimum(off, sums.abs())
    # two reductions, one device sync: NaN fails both comparisons, inf the second
    smallest, worst_sum = torch.stack([probs.amin(), off.amax()]).tolist() if probs.numel() \
        else (0.0, 0.0)
    if not (smallest >= 0 and worst_sum <= PROB_TOLERANCE):
        rows = "1 (or 0)" if zero_rows else "1"
        raise ArgumentError(f"{name} must be probabilities (finite, >= 0, each row summing to "
                            f"{rows} within {PROB_TOLERANCE}), got values from "
                            f"{probs.min().item():.3g} to {probs.max().item():.3g} and row sums "
                            f"from {sums.min().item():.3g} to {sums.max().item():.3g}")


def finite_spread(logits: torch.Tensor) -> bool:
    """Whether every row of ``logits`` ``(..., V)`` has a finite max - min: no NaN,
    no inf, and no overflow in the ``logits - max`` that softmax computes. Two
    row reductions and one device sync (cheaper than ``isfinite`` on every value)."""
    return bool((logits.amax(-1) - logits.amin(-1)).isfinite().all())


def check_same_shape(names, *tensors) -> None:
    """All ``tensors`` have one shape; ``names`` names them, e.g. ``("p", "q")``."""
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        pairs = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ArgumentError(f"{' and '.join(names)} must have the same shape, got {pairs}")


def check_generator(generator, device: torch.device, what: str = "the model is") -> None:
    """``generator`` is None or a ``torch.Generator`` on ``device``, where ``what``
    ("the model is", "the models are") is: a generator draws on its own device
    only, so a CPU generator cannot sample a CUDA tensor, nor a CUDA one a CPU one."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ArgumentError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
    here = generator.device
    if here.type != device.type or (here.index or 0) != (device.index or 0):
        raise ArgumentError(f"generator is on {here} but {what} on {device}: create it "
                            f"there, e.g. torch.Generator(device=\"{device}\").manual_seed(0)")


def check_prompt_list(name, prompts, vocab_size, one_row_ok=False):
    """A non-empty list of tensors ``(T,)`` (or ``(1, T)`` if ``one_row_ok``) of
    token ids in ``[0, vocab_size)``."""
    shapes = "(T,) or (1, T)" if one_row_ok else "(T,)"
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a non-empty list of token-id tensors {shapes}, "
                         f"got {prompts!r}")
    for i, prompt in enumerate(prompts):
        check_tensor(f"{name}[{i}]", prompt)
        if prompt.dim() != 1 and not (one_row_ok and prompt.dim() == 2 and len(prompt) == 1):
            raise ValueError(f"{name}[{i}] must have shape {shapes}, got {tuple(prompt.shape)}")
        check_token_ids(f"{name}[{i}]", prompt, vocab_size)
