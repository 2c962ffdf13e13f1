"""Pairs with a chosen alpha at real shapes (benchmarks/random_pairs.py), in small."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import random_pairs  # noqa: E402
from random_pairs import QWEN2_SHAPES, calibrate, greedy_alpha, layered_pair, parameter_count  # noqa: E402

from osd_lab.decoding import autoregressive_generate, speculative_generate  # noqa: E402


@pytest.fixture
def pair():
    return layered_pair("layered-qwen2-tiny", "cpu")


def test_the_draft_is_the_targets_own_first_layers(pair):
    target_weights = {p.data_ptr() for p in pair.target.parameters()}
    draft_weights = [p.data_ptr() for p in pair.draft.parameters()]
    assert set(draft_weights) <= target_weights  # no memory of its own
    assert len(pair.draft.model.layers) == pair.draft_layers < len(pair.target.model.layers)
    assert sum(p.numel() for p in pair.target.parameters()) == parameter_count(
        QWEN2_SHAPES["tiny-4"])
    assert not any(t.is_meta for t in [*pair.draft.parameters(), *pair.draft.buffers()])


def test_scale_zero_makes_the_target_the_draft(pair):
    scale, alpha, confidence = calibrate(pair, 1.0)
    assert scale == 0.0 and alpha == 1.0 and 0 < confidence <= 1
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    torch.testing.assert_close(pair.target(ids).logits, pair.draft(ids).logits)
    with pytest.raises(ValueError, match="cannot be undone"):
        calibrate(pair, 0.8)


@pytest.mark.parametrize("alpha", [0.6, 0.8, 0.95])
def test_calibration_reaches_the_alpha_asked_for(pair, alpha):
    scale, measured, _ = calibrate(pair, alpha)
    assert 0 < scale < 1
    assert abs(measured - alpha) <= 0.1  # 128 positions of a 4-layer model
    prompts = torch.randint(5, 4096, (4, 12), generator=torch.Generator().manual_seed(1))
    assert greedy_alpha(pair.target, pair.draft, prompts, 24) == pytest.approx(
        greedy_alpha(pair.target, pair.draft, prompts, 24))  # deterministic


@pytest.mark.exactness
@pytest.mark.parametrize("alpha", [0.6, 0.95])
def test_speculative_decoding_on_it_is_exact(pair, alpha):
    calibrate(pair, alpha)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    plain = autoregressive_generate(pair.target, ids, 40).tokens
    for policy in ("constant", "heuristic"):
        out = speculative_generate(pair.target, pair.draft, ids, 40, draft_len_policy=policy)
        assert torch.equal(out.tokens, plain)
    out = speculative_generate(pair.target, pair.draft, ids, 40, stop_rule="confidence")
    assert torch.equal(out.tokens, plain)


def test_bad_settings_are_refused_before_any_allocation(pair, monkeypatch):
    for alpha in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            calibrate(pair, alpha)
    with pytest.raises(ValueError, match="name must be one of"):
        layered_pair("layered-gpt9", "cpu")

    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated a model")
    monkeypatch.setattr(random_pairs, "free_memory_bytes", lambda device: 2**20)
    monkeypatch.setattr(random_pairs, "Qwen2ForCausalLM", no_allocation)
    with pytest.raises(ValueError, match="GiB of weights"):
        layered_pair("layered-qwen2.5", "cpu")
