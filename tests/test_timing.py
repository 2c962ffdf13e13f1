"""osd_lab.timing: decoders interleaved in a rotating order, ratios per repeat."""

import pytest
import torch

from osd_lab.step import DecodingStats, GenerationOutput
from osd_lab.timing import speedups, spread, time_side_by_side


def test_time_side_by_side_rotates_the_order_and_keeps_every_repeat():
    order = []

    def decoder(name, seconds):
        def decode(ids):
            order.append(name)
            return GenerationOutput(torch.tensor([1, 2]),
                                    DecodingStats(target_calls=2, new_tokens=2,
                                                  wall_time_s=seconds))
        return decode

    decoders = {"a": decoder("a", 2.0), "b": decoder("b", 1.0), "c": decoder("c", 4.0)}
    results = time_side_by_side(decoders, prompts=[0, 1], warmup=0, repeats=3)
    assert order[:3] == ["a", "b", "c"]  # the warm-up
    firsts = [order[3 + 3 * k] for k in range(6)]  # who went first, prompt by prompt
    assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]  # each leads equally often
    assert results["a"]["runs_s"] == [4.0] * 3 and results["a"]["wall_s"] == 4.0
    assert results["b"]["tokens"] == 4 and results["b"]["passes"] == 4
    assert speedups(results, "a") == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [0.5] * 3}
    assert spread([1.0, 1.5, 1.2]) == "1.20x (1.00-1.50x, 3 runs)"
    results["c"]["outputs"] = [[1], [1, 2]]  # stopped earlier on a prompt: times do not compare
    with pytest.raises(ValueError, match="'c' made other numbers of tokens"):
        speedups(results, "a")
