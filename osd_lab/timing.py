"""Timing, the one place for it: a clock that waits for the GPU, and
decoders timed side by side on the same prompts, the honest way.

``time_side_by_side`` warms every decoder up on one prompt, then times each
``repeats`` times over all prompts, decoders interleaved, and keeps the
fastest total: other programs on the machine only ever add time. Used by
the main job, the benchmarks, the dashboard and the notebooks.
"""

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
    """``{name: dict(wall_s, tokens, passes, outputs, stats)}`` for decoders
    ``name -> f(ids)`` returning a ``GenerationOutput``.

    warmup: one prompt every decoder reads first, untimed (None: already warm).
    wall_s is the fastest of ``repeats`` totals; tokens and passes are summed
    over the prompts; outputs are the token lists (the same on every repeat);
    stats, each prompt's ``stats`` dict of the last repeat.
    """
    if warmup is not None:
        for decode in decoders.values():
            decode(warmup)
    results = {name: dict(wall_s=float("inf")) for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            runs = [decode(ids) for ids in prompts]
            results[name].update(
                wall_s=min(results[name]["wall_s"], sum(r.stats.wall_time_s for r in runs)),
                tokens=sum(len(r.tokens) for r in runs),
                passes=sum(r.stats.target_calls for r in runs),
                outputs=[r.tokens.tolist() for r in runs], stats=[r.stats for r in runs])
    return results


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
