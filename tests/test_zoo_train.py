"""The zoo's training script (zoo/train.py): draft shapes, and a run that checkpoints
and resumes."""

import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
import train  # noqa: E402


def test_draft_shape_gives_the_zoo_draft_and_refuses_odd_widths():
    assert train.draft_shape(1, 192) == train.DRAFT_SHAPE
    assert train.draft_shape(2, 288)["num_attention_heads"] == 6
    with pytest.raises(ValueError, match="--draft-width must be a multiple of 48"):
        train.draft_shape(1, 200)


def test_an_interrupted_run_resumes_where_its_checkpoint_left_off(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CHECKPOINT_EVERY", 2)
    stream = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(0))
    settings = dict(steps=5, batch_size=2, seq_len=16, warmup=2, seed=3)
    whole = tiny_model("llama", seed=0, vocab_size=64)
    expected = train.train_lm(whole, stream, **settings)

    checkpoint = tmp_path / "run.pt"
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def interrupted(*args, **kwargs):  # the machine stops during step 5
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_lm(tiny_model("llama", seed=0, vocab_size=64), stream, **settings,
                       checkpoint=checkpoint)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert len(torch.load(checkpoint, weights_only=False)["losses"]) == 4
    resumed = tiny_model("llama", seed=0, vocab_size=64)
    losses = train.train_lm(resumed, stream, **settings, checkpoint=checkpoint)
    assert losses == pytest.approx(expected)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_the_streams_script_refuses_a_checkpoint_of_other_settings(tmp_path):
    """A rerun with other settings must not silently resume someone else's run."""
    import train_streams
    checkpoint = tmp_path / "streams.pt"
    torch.save(dict(settings=dict(steps=900, lr=3e-3)), checkpoint)
    trainable = torch.nn.Linear(2, 2)
    with pytest.raises(SystemExit, match="other settings"):
        train_streams.train(None, trainable, None, 150, 2, 8, 2, 3e-3, 0, checkpoint, 25,
                            "streams", settings=dict(steps=150, lr=3e-3))
