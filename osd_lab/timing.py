"""Timing, the one place for it: a clock that waits for the GPU, and
decoders timed side by side on the same prompts, the honest way.

``time_side_by_side`` warms every decoder up on one prompt, then times each
``repeats`` times over all prompts, decoders interleaved prompt by prompt in
a rotating order, and keeps the
fastest total (other programs on the machine only ever add time) beside
every repeat's total. ``speedups`` turns those into per-repeat ratios
against a baseline, and ``spread`` says them as a median and a range: a
conclusion about speed rests on repeats, not on one run. Used by the main
job, the benchmarks, the dashboard and the notebooks.
"""

import statistics
import time
from collections.abc import Callable

import torch


def clock(device: torch.device) -> float:
    """Wall time in seconds, after waiting for work queued on a GPU (CUDA or MPS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def time_side_by_side(decoders: dict[str, Callable], prompts: list, warmup=None,
                      repeats: int = 2) -> dict:
    """``{name: dict(wall_s, runs_s, tokens, passes, outputs, stats)}`` for
    decoders ``name -> f(ids)`` returning a ``GenerationOutput``.

    Every prompt is decoded by every decoder back to back, in an order that
    rotates from prompt to prompt and repeat to repeat, so that no decoder is
    always the first after a pause or the one that runs next to a busy
    neighbour: each repeat's totals were made under the same machine load.

    warmup: one prompt every decoder reads first, untimed (None: already warm).
    wall_s is the fastest of ``repeats`` totals and runs_s every total, in
    order; tokens and passes are summed over the prompts; outputs are the
    token lists (the same on every repeat); stats, each prompt's stats of
    the last repeat.
    """
    if warmup is not None:
        for decode in decoders.values():
            decode(warmup)
    names = list(decoders)
    results = {name: dict(wall_s=float("inf"), runs_s=[]) for name in names}
    for repeat in range(repeats):
        runs = {name: [] for name in names}
        for i, ids in enumerate(prompts):
            shift = (repeat * len(prompts) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(decoders[name](ids))
        for name in names:
            total = sum(r.stats.wall_time_s for r in runs[name])
            results[name]["runs_s"].append(total)
            results[name].update(
                wall_s=min(results[name]["wall_s"], total),
                tokens=sum(len(r.tokens) for r in runs[name]),
                passes=sum(r.stats.target_calls for r in runs[name]),
                outputs=[r.tokens.tolist() for r in runs[name]],
                stats=[r.stats for r in runs[name]])
    return results


def speedups(results: dict, baseline: str) -> dict[str, list[float]]:
    """``{name: [baseline total / name's total, one per repeat]}`` from
    ``time_side_by_side``'s results: repeats ran interleaved, so each ratio
    compares runs made under the same machine load. A ratio of wall times is
    a ratio of speeds only when every decoder made as many tokens per prompt
    (greedy, or sampling without an end-of-text stop): a ValueError otherwise
    (compare tokens per second then)."""
    lengths = [len(tokens) for tokens in results[baseline]["outputs"]]
    for name, r in results.items():
        if [len(tokens) for tokens in r["outputs"]] != lengths:
            raise ValueError(f"speedups: {name!r} made other numbers of tokens per prompt "
                             f"than {baseline!r}, so their times do not compare; compare "
                             f"tokens per second (tokens / wall_s) instead")
    base = results[baseline]["runs_s"]
    return {name: [b / t for b, t in zip(base, r["runs_s"])] for name, r in results.items()}


def spread(values: list[float], unit: str = "x") -> str:
    """``'1.23x (1.10-1.31x, 3 runs)'``: the median, then the range."""
    return (f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f}{unit}, "
            f"{len(values)} runs)")


class CountCalls:
    """Counts the forward passes of models, and the seconds spent in them,
    inside any decoder (transformers' ``generate`` included), with forward
    pre-hooks and hooks::

        counter = CountCalls(target=pair.target, draft=pair.draft)
        with counter as calls:
            pair.target.generate(ids, assistant_model=pair.draft)
        calls["target"], calls["draft"], counter.seconds["target"]

    seconds: wall time inside each model's ``forward``. On a GPU pass
    ``synchronize=True`` to wait for the queued work at each pass's start and
    end (it then adds two syncs per pass); otherwise it is launch time only.
    What a decoder spends outside its models' passes is its loop overhead.
    """

    def __init__(self, synchronize: bool = False, **models):
        self.models, self.counts, self.hooks = models, dict.fromkeys(models, 0), []
        self.seconds = dict.fromkeys(models, 0.0)
        self.synchronize = synchronize

    def _now(self, model) -> float:
        if self.synchronize:
            return clock(next(model.parameters()).device)
        return time.perf_counter()

    def __enter__(self) -> dict:
        for name, model in self.models.items():
            started = []

            def pre_hook(module, args, name=name, started=started):
                started.append(self._now(module))

            def hook(module, args, output, name=name, started=started):
                self.counts[name] += 1
                if started:
                    self.seconds[name] += self._now(module) - started.pop()
            self.hooks.append(model.register_forward_pre_hook(pre_hook))
            self.hooks.append(model.register_forward_hook(hook))
        return self.counts

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
