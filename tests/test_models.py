import pytest
import torch
from transformers import AutoTokenizer

from conftest import tiny_model
from osd_lab.models import (PRESETS, ZOO_DIR, check_same_tokenizer, load_pair,
                            shared_vocab_size)


def test_zoo_loads_offline(zoo, monkeypatch):
    assert zoo.name == "zoo" and zoo.vocab_size == len(zoo.tokenizer)
    assert zoo.target.dtype == torch.float32 and not zoo.target.training
    n_target, n_draft = zoo.target.num_parameters(), zoo.draft.num_parameters()
    assert 10e6 <= n_target <= 40e6 and 1e6 <= n_draft <= 3e6
    ids = zoo.tokenizer("SELECT 1").input_ids
    assert ids[0] == zoo.tokenizer.bos_token_id


def test_zoo_ships_small():
    size = sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file())
    assert size <= 60e6


def test_uncached_preset_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"pair 'pythia'.*EleutherAI/pythia-70m.*hf download"):
        load_pair("pythia", device="cpu")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown pair"):
        load_pair("gpt-17")
    assert "qwen2.5" in PRESETS


def test_local_tuple_pair(tmp_path):
    zoo_tok = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    for part, seed in (("draft", 0), ("target", 1)):
        model = tiny_model("gpt2", seed, vocab_size=len(zoo_tok) + 64 * seed)  # padded
        model.save_pretrained(tmp_path / part)
        zoo_tok.save_pretrained(tmp_path / part)
    pair = load_pair((tmp_path / "draft", tmp_path / "target"), device="cpu")
    assert pair.vocab_size == len(zoo_tok)  # the smaller of the two padded sizes


def test_different_tokenizers_refused(zoo):
    other = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    other.add_tokens(["<extra_token>"])
    with pytest.raises(ValueError, match="different tokenizers"):
        check_same_tokenizer(other, zoo.tokenizer)


def test_vocab_too_small_refused(zoo):
    small = tiny_model("llama", vocab_size=100)
    with pytest.raises(ValueError, match="score only 100"):
        shared_vocab_size(small, small, zoo.tokenizer)
