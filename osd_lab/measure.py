"""Measuring what the cost model takes (``osd_lab.cost``), on your device.

c, the cost ratio (``decode_step_time``, ``measure_cost_ratio``); how much
more a target pass over n new tokens costs than one over a single token
(``measure_pass_time``, ``measure_verify_ratio``; batches of B x n in
``notebooks/08_bass``); and both at once as the ``SpeculationCosts`` the
goodput policy weighs (``measure_costs``). Each timed pass comes after a
cached prompt (``prefilled``) and is rolled back off the cache
(``timed_pass``). Taught in ``notebooks/03_when_is_it_fast``.
"""

import functools
import time
import weakref

import torch
from transformers import PreTrainedModel

from osd_lab.cache import forward, new_cache, rollback
from osd_lab.checks import check_int
from osd_lab.cost import SpeculationCosts
from osd_lab.models import context_length
from osd_lab.timing import clock


@torch.inference_mode()
def decode_step_time(model, prompt_len: int = 32, steps: int = 64, repeats: int = 3) -> float:
    """Seconds per one-token forward pass with a KV cache (batch 1): the
    fastest of ``repeats`` runs of ``steps`` passes (other programs only add time)."""
    check_int("prompt_len", prompt_len, low=1)
    check_int("steps", steps, low=1)
    check_int("repeats", repeats, low=1)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(0)).to(model.device)
    times = []
    for _ in range(repeats + 1):  # the first run warms up and is dropped
        cache = new_cache(model)
        token = forward(model, ids, cache).logits[:, -1:].argmax(-1)
        start = clock(model.device)
        for _ in range(steps):
            token = forward(model, token, cache).logits[:, -1:].argmax(-1)
        times.append((clock(model.device) - start) / steps)
    return min(times[1:])


def measure_cost_ratio(pair) -> float:
    """c = draft step time / target step time, measured on the pair's device."""
    return decode_step_time(pair.draft) / decode_step_time(pair.target)


def timed_pass(model: PreTrainedModel, cache, input_ids: torch.Tensor, now) -> float:
    """Seconds (by ``now()``) of one forward pass over ``input_ids`` ``(B, n)``
    after what ``cache`` holds; the cache is rolled back to where it was."""
    start = now()
    forward(model, input_ids, cache)
    seconds = now() - start
    rollback(cache, input_ids.shape[1])
    return seconds


def prefilled(model: PreTrainedModel, batch_size: int, prompt_len: int, extra: int):
    """A cache holding ``prompt_len`` random tokens per row, and ``extra`` more
    random ids ``(B, extra)`` to time passes over (seeded: the same every call)."""
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len + extra),
                        generator=torch.Generator().manual_seed(0)).to(model.device)
    cache = new_cache(model)
    forward(model, ids[:, :prompt_len], cache, keep=1)
    return cache, ids[:, prompt_len:]


@torch.inference_mode()
def measure_pass_time(model: PreTrainedModel, batch_size: int, num_tokens: int,
                      prompt_len: int = 32, repeats: int = 10, cpu_time: bool = False) -> float:
    """Seconds of one forward pass over ``(batch_size, num_tokens)`` new tokens
    after a cached prompt of ``prompt_len``: the fastest of ``repeats``.

    A target pass of a batched speculative step reads B x (gamma + 1) tokens;
    this is what that costs next to B x 1 (``num_tokens=1``). The prompt is
    read once; each timed pass is rolled back off the cache. ``cpu_time``
    counts this process's CPU time instead of wall time (for a CPU model run
    with one thread: other programs' load does not inflate it).
    """
    if cpu_time and (model.device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("cpu_time=True needs a model on the CPU and torch.set_num_threads(1)")

    def now():
        return time.process_time() if cpu_time else clock(model.device)

    cache, ids = prefilled(model, batch_size, prompt_len, num_tokens)
    times = [timed_pass(model, cache, ids, now) for _ in range(repeats + 1)]
    return min(times[1:])  # the first warms up; the rest: the least disturbed


@torch.inference_mode()
def measure_verify_ratio(model, num_tokens: int, prompt_len: int = 32, repeats: int = 20) -> float:
    """Time of one forward pass over ``num_tokens`` new tokens / one over a single token.

    Near 1 on a GPU for small ``num_tokens`` (the weights are read once either
    way); on a CPU it grows with ``num_tokens`` and eats into the speedup.
    """
    check_int("num_tokens", num_tokens, low=1)
    check_int("prompt_len", prompt_len, low=1)
    check_int("repeats", repeats, low=1)
    limit = context_length(model)
    if limit is not None and prompt_len + num_tokens > limit:
        raise ValueError(f"prompt_len + num_tokens must be <= the model's context of {limit} "
                         f"tokens, got {prompt_len} + {num_tokens}")
    return (measure_pass_time(model, 1, num_tokens, prompt_len, repeats)
            / measure_pass_time(model, 1, 1, prompt_len, repeats))


# verify cost measured at these, interpolated between: every size up to 9 (on a
# CPU, MKL multiplies 2 or 3 rows as 2 or 3 separate vector products, and 4 or
# more as one matrix product, so a pass over 3 tokens can cost more than over 5)
COST_TOKENS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17)
_COSTS = weakref.WeakKeyDictionary()  # target -> {draft: SpeculationCosts}


def _interpolate(points: dict, n: int) -> float:
    """Linear interpolation of ``{tokens: cost}`` at ``n`` (within its range)."""
    sizes = [k for k in points if isinstance(k, int)]
    low = max(k for k in sizes if k <= n)
    high = min(k for k in sizes if k >= n)
    if low == high:
        return points[low]
    return points[low] + (points[high] - points[low]) * (n - low) / (high - low)


@torch.inference_mode()
def measure_costs(target: PreTrainedModel, draft: PreTrainedModel, prompt_len: int = 32,
                  repeats: int = 5, cached: bool = True) -> SpeculationCosts:
    """The costs the goodput policy weighs (``osd_lab.policies``), measured.

    c = one draft pass / one target pass, and the target's pass over n = 1..17
    new tokens / its one-token pass (measured at ``COST_TOKENS``, linear in
    between; not forced to grow with n, since on a CPU it need not: see
    ``COST_TOKENS``). The passes are timed in ``repeats`` rounds, each round
    every size once (interleaved: a burst of load from other programs hits
    every size alike), keeping each size's fastest; each model reads its
    prompt once and every timed pass is rolled back off its cache (about
    1 s on the zoo, 40-45 s for a 1.5B target in float32 on a 2-core CPU);
    ``cached`` keeps the answer per (target, draft) for the session.
    """
    check_int("prompt_len", prompt_len, low=1)
    check_int("repeats", repeats, low=1)
    known = _COSTS.setdefault(target, weakref.WeakKeyDictionary())
    if cached and draft in known:
        return known[draft]
    limit = context_length(target)
    tokens = [n for n in COST_TOKENS if limit is None or prompt_len + n <= limit]
    now = functools.partial(clock, target.device)
    target_cache, ids = prefilled(target, 1, prompt_len, tokens[-1])  # each prompt read once
    draft_cache, draft_ids = prefilled(draft, 1, prompt_len, 1)
    timed_pass(target, target_cache, ids, now)  # warm-up passes, not kept
    timed_pass(draft, draft_cache, draft_ids, now)
    times = dict.fromkeys([*tokens, "draft"], float("inf"))
    for _ in range(repeats):
        for n in times:
            seconds = (timed_pass(draft, draft_cache, draft_ids, now) if n == "draft"
                       else timed_pass(target, target_cache, ids[:, :n], now))
            times[n] = min(times[n], seconds)
    one = times[1]
    verify = [1.0]  # exactly 1 for one token, by definition
    for n in range(2, tokens[-1] + 1):
        verify.append(_interpolate(times, n) / one)
    costs = SpeculationCosts(times["draft"] / one, tuple(verify))
    known[draft] = costs
    return costs
