import pytest
import torch
from transformers import AutoTokenizer

from conftest import tiny_model
from osd_lab.models import (PRESETS, ZOO_DIR, check_same_tokenizer, load_pair,
                            shared_vocab_size)


def test_zoo_loads(zoo):
    assert zoo.name == "zoo" and zoo.vocab_size == len(zoo.tokenizer)
    assert zoo.target.dtype == torch.float32 and not zoo.target.training
    n_target, n_draft = zoo.target.num_parameters(), zoo.draft.num_parameters()
    assert 10e6 <= n_target <= 40e6 and 1e6 <= n_draft <= 3e6
    ids = zoo.tokenizer("SELECT 1").input_ids
    assert ids[0] == zoo.tokenizer.bos_token_id


def test_zoo_loads_with_network_off(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is off in this test")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pair = load_pair("zoo", device="cpu")
    assert pair.target.num_parameters() > pair.draft.num_parameters()


def test_zoo_ships_small():
    size = sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file())
    assert size <= 60e6


def test_zoo_all_is_the_zoo_target_with_the_all_domain_draft(zoo):
    pair = load_pair("zoo-all", device="cpu")
    assert pair.name == "zoo-all" and pair.vocab_size == zoo.vocab_size
    assert pair.draft.config.num_hidden_layers == zoo.draft.config.num_hidden_layers == 1
    assert all(torch.equal(a, b) for a, b in zip(pair.target.parameters(),
                                                  zoo.target.parameters()))
    assert not torch.equal(pair.draft.lm_head.weight, zoo.draft.lm_head.weight)


def test_uncached_preset_fails_clearly(monkeypatch):
    """Offline by default, the peft adapter lookup included: transformers 5.x
    asked the hub for an adapter config despite local_files_only (23 s of
    retries without a network) unless adapter_kwargs said it too."""
    from transformers.models.auto import auto_factory
    asked = []
    find = auto_factory.find_adapter_config_file

    def spy(model_id, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        return find(model_id, **kwargs)

    monkeypatch.setattr(auto_factory, "find_adapter_config_file", spy)
    monkeypatch.setitem(PRESETS, "absent", ("osd-lab/no-such-target", "osd-lab/no-such-draft"))
    with pytest.raises(OSError, match=r"pair 'absent'.*osd-lab/no-such-draft.*hf download"):
        load_pair("absent", device="cpu")
    assert asked and all(asked)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown pair"):
        load_pair("gpt-17")
    assert "qwen2.5" in PRESETS


@pytest.mark.parametrize("name", [None, ("a",), ("a", "b", "c"), ("a", 2), ["a", "b"]])
def test_load_pair_refuses_a_name_it_does_not_take(name):
    """Issue 21: None and 1- or 3-tuples were unpacking errors."""
    with pytest.raises(ValueError, match=r"name must be 'zoo', 'zoo-all', one of \['gpt2', "
                                         r"'pythia', 'qwen2.5', 'smollm2'\], or a \(target, "
                                         r"draft\) tuple of two hub ids or paths, got "):
        load_pair(name, device="cpu")


def test_local_tuple_pair(tmp_path):
    zoo_tok = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    for part, seed in (("draft", 0), ("target", 1)):
        model = tiny_model("gpt2", seed, vocab_size=len(zoo_tok) + 64 * seed)  # padded
        model.save_pretrained(tmp_path / part)
        zoo_tok.save_pretrained(tmp_path / part)
    pair = load_pair((tmp_path / "target", tmp_path / "draft"), device="cpu")  # (target, draft)
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
