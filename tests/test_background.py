"""Background updates: exact output whatever weights swap in, swaps only
between queries, a trainer that fails leaves serving intact, clean shutdown."""

import gc
import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import (PROMPTS, chi_square_p_value, exact_target_distribution, noisy_copy,
                      tiny_model)
from osd_lab.background import BackgroundTrainer
from osd_lab.decoding import autoregressive_generate
from osd_lab.online import OnlineSpeculativeDecoder

needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
pytestmark = needs_two_cores


@pytest.fixture()
def pair(tokenizer):
    target = tiny_model("llama", seed=0, vocab_size=len(tokenizer))
    return target, noisy_copy(target, 0.5, seed=1)


def background(target, draft, tokenizer, **kwargs):
    settings = dict(update_interval=1, max_new_tokens=10, draft_len_policy="constant",
                    draft_len=3, update_mode="background", threads=2)
    return OnlineSpeculativeDecoder(target, draft, tokenizer, **{**settings, **kwargs})


def fingerprint(model) -> float:
    return sum(p.double().sum().item() for p in model.parameters())


def test_auto_mode_is_background_with_two_threads_and_sync_with_one(pair, tokenizer):
    target, draft = pair
    settings = dict(draft_len_policy="constant", max_new_tokens=10)
    with OnlineSpeculativeDecoder(target, draft, tokenizer, threads=2, **settings) as two:
        assert two.update_mode == "background" and two.trainer is not None
    one = OnlineSpeculativeDecoder(target, draft, tokenizer, threads=1, **settings)
    assert one.update_mode == "sync" and one.trainer is None


@pytest.mark.exactness
def test_greedy_output_is_the_targets_while_weights_swap_in(pair, tokenizer):
    target, draft = pair
    before = fingerprint(draft)
    with background(target, draft, tokenizer) as decoder:
        for i, prompt in enumerate(PROMPTS["sql"] * 3 + PROMPTS["math"] * 3):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            expected = autoregressive_generate(target, ids, 10,
                                               eos_token_id=tokenizer.eos_token_id).tokens
            assert decoder.serve(prompt) == tokenizer.decode(expected, skip_special_tokens=True)
            if i % 2:
                decoder.trainer.wait()  # the next query swaps its weights in
    h = decoder.history
    assert h["updates"] and h["swaps"] and not h["trainer_errors"]
    assert sum(h["update_s"]) < 0.05  # off the serving path: handing them over, no more
    assert fingerprint(draft) != before and decoder.trainer_cpu_s > 0
    assert not decoder.trainer.alive()


def test_weights_swap_between_queries_never_during_one(pair, tokenizer, monkeypatch):
    target, draft = pair
    decoder = background(target, draft, tokenizer)
    real_update = decoder.update

    def slow_update(name="draft"):  # a trainer slower than serving
        taken = real_update(name)
        time.sleep(0.05)
        return taken

    monkeypatch.setattr(decoder, "update", slow_update)
    seen, query = [], [0]
    draft.register_forward_pre_hook(lambda module, args: seen.append((query[0],
                                                                      fingerprint(module))))
    for i, prompt in enumerate(PROMPTS["sql"] * 6):
        query[0] = i
        decoder.serve(prompt)
    decoder.close()
    per_query = {}
    for i, value in seen:
        per_query.setdefault(i, set()).add(value)
    assert all(len(values) == 1 for values in per_query.values())  # one set of weights each
    assert len({v for values in per_query.values() for v in values}) > 1  # swaps did happen
    assert decoder.history["swaps"]


def test_a_trainer_that_raises_leaves_serving_and_the_buffer_intact(pair, tokenizer,
                                                                    monkeypatch):
    target, draft = pair
    before = [p.clone() for p in draft.parameters()]
    decoder = background(target, draft, tokenizer)
    monkeypatch.setattr(decoder, "update", lambda name="draft": 1 / 0)
    texts = []
    for prompt in PROMPTS["sql"] * 2:
        texts.append(decoder.serve(prompt))
        decoder.trainer.wait()  # each update fails before the next is submitted
    assert texts[2] == decoder.serve(PROMPTS["sql"][0])  # still serving, still exact
    decoder.close()
    errors = decoder.history["trainer_errors"]
    assert len(errors) == 5 and all("ZeroDivisionError" in e for _, _, e in errors)
    assert len(decoder.buffers["draft"]) == 5  # no buffered query lost
    assert all(torch.equal(a, b) for a, b in zip(before, draft.parameters()))


def test_a_waiting_update_is_not_queued_twice():
    """A trainer slower than the traffic takes fewer updates, never a growing queue."""
    started, go, calls = threading.Event(), threading.Event(), []

    class Owner:
        def update(self, name):
            started.set()
            go.wait()
            calls.append(name)

    owner = Owner()
    trainer = BackgroundTrainer(owner.update)
    assert trainer.submit("draft")
    started.wait()  # the first update runs (and waits for go)
    assert trainer.submit("draft") and not trainer.submit("draft")  # one waits, no more
    assert trainer.submit("sql")  # another draft's update queues beside it
    go.set()
    trainer.close()
    assert calls == ["draft", "draft", "sql"] and not trainer.alive()


def test_close_and_del_stop_the_trainer(pair, tokenizer):
    target, draft = pair
    decoder = background(target, draft, tokenizer)
    decoder.serve(PROMPTS["sql"][0])
    decoder.close()
    assert not decoder.trainer.alive()
    with pytest.raises(RuntimeError, match="the trainer is closed"):
        decoder.trainer.submit("draft")
    decoder = background(target, draft, tokenizer)
    decoder.serve(PROMPTS["sql"][0])
    trainer = decoder.trainer
    del decoder
    gc.collect()
    for _ in range(100):  # the thread ends once its update is done
        if not trainer.alive():
            break
        time.sleep(0.05)
    assert not trainer.alive()


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_mode="async"), "update_mode must be one of"),
    (dict(threads=0), r"threads must be an integer in \[1, "),
    (dict(threads=(os.cpu_count() or 1) + 1), r"threads must be an integer in \[1, "),
    (dict(threads=1.5), "threads must be an integer"),
    (dict(threads=1), "update_mode='background' needs threads >= 2"),
])
def test_bad_trainer_settings(pair, tokenizer, kwargs, message):
    target, draft = pair
    with pytest.raises(ValueError, match=message):
        background(target, draft, tokenizer, **kwargs)


class IdTokenizer:
    """Token ids as text ("0 2"): serve() on a vocabulary small enough to enumerate."""
    eos_token_id = None

    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[int(t) for t in text.split()]]))

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(str(int(t)) for t in tokens)


@pytest.mark.exactness
def test_sampled_output_is_the_targets_while_the_draft_trains():
    """Chi-square at significance 0.001 over the first two tokens, updates in
    the background after every query (seeded)."""
    vocab, length, runs = 4, 2, 1200
    target = tiny_model("llama", seed=0, vocab_size=vocab)
    draft = tiny_model("llama", seed=1, vocab_size=vocab, layers=1)
    with torch.no_grad():  # soften both so every sequence is possible
        target.get_output_embeddings().weight.mul_(0.08)
        draft.get_output_embeddings().weight.mul_(0.8)
    exact = exact_target_distribution(target, [0, 2], length,
                                      dict(temperature=1.0, top_k=0, top_p=1.0))
    counts = dict.fromkeys(exact, 0)
    with background(target, draft, IdTokenizer(), max_new_tokens=length, temperature=1.0,
                    buffer_top_k=None, seed=99, draft_len=2) as decoder:
        for _ in range(runs):
            counts[tuple(int(t) for t in decoder.serve("0 2").split())] += 1
    assert decoder.history["swaps"]
    assert chi_square_p_value(exact, counts, runs) > 0.001
