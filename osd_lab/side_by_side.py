"""Time several decoders on the same prompts, side by side, the honest way.

Every decoder is warmed up on one prompt, then each is timed ``repeats``
times over all prompts, decoders interleaved, and the fastest total kept:
other programs on the machine only ever add time. Used by
``benchmarks/streaming.py`` and ``notebooks/09_speculative_streaming``.
"""

from collections.abc import Callable

from osd_lab.decoding import GenerationOutput


def target_passes(out: GenerationOutput) -> int:
    """Target forward passes a decoder made (the prompt's prefill not counted)."""
    stats = out.stats
    if "forward_passes" in stats:
        return stats["forward_passes"]
    return stats["target_calls"]


def time_side_by_side(decoders: dict[str, Callable], prompts: list, warmup=None,
                      repeats: int = 2) -> dict:
    """``{name: dict(wall_s, tokens, passes, outputs)}`` for decoders ``name -> f(ids)``.

    warmup: one prompt every decoder reads first, untimed (None: already warm).
    wall_s is the fastest of ``repeats`` totals; tokens and passes are summed
    over the prompts; outputs are the token lists (the same on every repeat).
    """
    if warmup is not None:
        for decode in decoders.values():
            decode(warmup)
    results = {name: dict(wall_s=float("inf")) for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            runs = [decode(ids) for ids in prompts]
            results[name].update(
                wall_s=min(results[name]["wall_s"], sum(r.stats["wall_time_s"] for r in runs)),
                tokens=sum(len(r.tokens) for r in runs),
                passes=sum(target_passes(r) for r in runs),
                outputs=[r.tokens.tolist() for r in runs])
    return results
