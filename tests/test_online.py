import copy
import dataclasses
import math

import pytest
import torch

from conftest import PROMPTS, noisy_copy, tiny_model
from osd_lab.online import (LearnedRouter, OnlineConfig, OnlineSpeculativeDecoder,
                            OracleRouter, make_stream)



@pytest.fixture()
def pair(tokenizer, device):
    target = tiny_model("llama", seed=0, vocab_size=len(tokenizer), device=device)
    return target, noisy_copy(target, 0.5, seed=1)


def test_streams():
    sharp = make_stream("sharp", PROMPTS, 10)
    assert [d for d, _ in sharp] == ["sql"] * 5 + ["math"] * 5
    smooth = [d for d, _ in make_stream("smooth", PROMPTS, 200, seed=1)]
    assert smooth[:20].count("sql") > 15 and smooth[-20:].count("math") > 15
    iid = make_stream("iid", PROMPTS, 50, seed=2)
    assert {d for d, _ in iid} == {"sql", "math"} and iid == make_stream("iid", PROMPTS, 50, seed=2)
    assert all(p in PROMPTS[d] for d, p in iid)


@pytest.mark.parametrize("args, message", [
    (("tidal", PROMPTS, 5), "stream must be"),
    (("iid", PROMPTS, 0), "num_queries"),
    (("iid", {"sql": []}, 5), "empty stream"),
    (("iid", {}, 5), "empty stream"),
    (("iid", PROMPTS, 2.0), "num_queries must be an integer >= 1, got 2.0"),
    (("iid", PROMPTS, True), "num_queries"),
    (("iid", ["SELECT"], 5), "prompts_by_domain must be a dict"),
])
def test_bad_streams(args, message):
    with pytest.raises(ValueError, match=message):
        make_stream(*args)


def test_serve_records_corrections_and_updates(pair, tokenizer):
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=12,
                                                    batch_size=8))
    before = [p.clone() for p in draft.parameters()]
    for domain, prompt in make_stream("iid", PROMPTS, 6):
        text = decoder.serve(prompt, domain)
        assert isinstance(text, str)
    h = decoder.history
    # NaN: goodput drafted nothing in that query (no alpha to measure)
    assert len(h["alpha"]) == 6 and all(0 <= a <= 1 or math.isnan(a) for a in h["alpha"])
    assert len(decoder.buffers["draft"]) > 0
    assert [u[0] for u in h["updates"]] == [2, 4, 6]
    assert any(not torch.equal(a, b) for a, b in zip(before, draft.parameters()))


def test_adaspec_updates_draft_and_reference_on_fewer_tokens(pair, tokenizer, monkeypatch):
    import importlib
    distill = importlib.import_module("osd_lab.distill")  # the module, not osd_lab.distill
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=100, max_new_tokens=12,
                                                    keep_fraction=0.25))
    for prompt in PROMPTS["sql"] + PROMPTS["math"]:
        decoder.serve(prompt)
    reference = decoder.references["draft"]
    draft_before = [p.clone() for p in draft.parameters()]
    reference_before = [p.clone() for p in reference.parameters()]
    masks = []
    real_masked_mean = distill.masked_mean  # the updates are distillation steps
    monkeypatch.setattr(distill, "masked_mean",
                        lambda values, mask: masks.append(mask) or real_masked_mean(values, mask))
    decoder.update()
    reference_mask, draft_mask = masks  # the reference trains on all tokens, the draft on k
    assert draft_mask.sum() == max(1, int(0.25 * reference_mask.sum()))
    assert (draft_mask <= reference_mask).all()
    assert decoder.history["updates"] and not decoder.history["skipped"]
    assert any(not torch.equal(a, b) for a, b in zip(draft_before, draft.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(reference_before, reference.parameters()))


@pytest.mark.exactness
def test_an_update_makes_the_goodput_policy_probe_again_soon(pair, tokenizer):
    from osd_lab.cost import SpeculationCosts
    from osd_lab.policies import RESUME_GAP
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=8,
                                                    update_mode="sync", draft_len=4,
                                                    update_below_alpha=None),
                                       costs=SpeculationCosts(0.1, (1.0, 1.05, 1.1, 1.15, 1.2)))
    policy = decoder.policies["draft"]
    policy.probe_gap = 64  # backed off: the draft looked useless
    decoder.serve(PROMPTS["sql"][0])
    assert decoder.history["updates"] and policy.probe_gap == RESUME_GAP


def test_online_greedy_output_is_still_the_targets(pair, tokenizer):
    from osd_lab.decoding import autoregressive_generate
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=10))
    for prompt in PROMPTS["sql"] * 2:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = autoregressive_generate(target, ids, 10,
                                           eos_token_id=tokenizer.eos_token_id).tokens
        assert decoder.serve(prompt) == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("buffer_top_k", [None, 8])
def test_nan_update_is_skipped_and_draft_untouched(pair, tokenizer, buffer_top_k):
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=100, max_new_tokens=12,
                                                    buffer_top_k=buffer_top_k))
    decoder.serve(PROMPTS["sql"][0])
    sequence, prompt_len, kept = decoder.buffers["draft"][0]
    nan = (torch.full_like(kept, float("nan")) if buffer_top_k is None
           else kept._replace(top_log_probs=torch.full_like(kept.top_log_probs, float("nan"))))
    decoder.buffers["draft"].append((sequence, prompt_len, nan))
    decoder.config = dataclasses.replace(decoder.config, batch_size=len(decoder.buffers["draft"]))
    before = [p.clone() for p in draft.parameters()]
    decoder.update()
    assert decoder.history["skipped"] == [(1, "draft")] and not decoder.history["updates"]
    assert all(torch.equal(a, b) for a, b in zip(before, draft.parameters()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_interval=0), "update_interval"),
    (dict(buffer_size=0), "buffer_size"),
    (dict(draft_len=0), "draft_len"),
    (dict(loss="mse"), "loss"),
    (dict(keep_fraction=0), "keep_fraction"),
    (dict(keep_fraction=1.5), "keep_fraction"),
    (dict(update_interval=2.0), "update_interval must be an integer >= 1, got 2.0"),
    (dict(lr=float("nan")), r"lr must be a finite number in \(0, 1\], got nan"),
    (dict(lr=3.0), r"lr must be a finite number in \(0, 1\], got 3.0"),
    (dict(warmup_updates=-1), "warmup_updates must be an integer >= 0, got -1"),
    (dict(buffer_top_k=0), r"buffer_top_k must be an integer in \[1, 4096\], got 0"),
    (dict(buffer_top_k=5000), r"buffer_top_k must be an integer in \[1, 4096\], got 5000"),
    (dict(buffer_top_k=8.0), "buffer_top_k must be an integer"),
    (dict(lora_rank=0), r"lora_rank must be an integer in \[1, 32\], got 0"),
    (dict(lora_rank=33), r"lora_rank must be an integer in \[1, 32\], got 33"),
    (dict(lora_rank="lora"), r"lora_rank must be 'auto' \(LoRA of rank 16 for a draft of over "
                             r"100,000,000 parameters\), None \(full fine-tuning\) or an "
                             r"integer >= 1 \(a LoRA rank\), got 'lora'"),
    (dict(lora_rank="AUTO"), "lora_rank must be 'auto'.*got 'AUTO'"),
    (dict(lora_rank=16.0), "lora_rank must be 'auto'.*got 16.0"),
    (dict(lora_rank=True), "lora_rank must be 'auto'.*got True"),
    (dict(max_new_tokens=1), "max_new_tokens must be an integer >= 2, got 1"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(keep_fraction=float("nan")), "keep_fraction"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(seed=-1), "seed"),
    (dict(drafts={}), "drafts must be a model or a non-empty dict"),
    (dict(update_every=2), r"unknown setting\(s\) \['update_every'\].*'update_interval'"),
    (dict(config={"lr": 1e-3}), "config must be an OnlineConfig"),
])
def test_bad_settings(pair, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        if "drafts" in kwargs:
            OnlineSpeculativeDecoder(pair[0], tokenizer=tokenizer, **kwargs)
        else:
            OnlineSpeculativeDecoder(*pair, tokenizer, **kwargs)


def test_serve_refuses_a_prompt_that_is_not_text(text_pair, tokenizer):
    """Issue 21: serve(None) was the tokenizer's error about `text`."""
    decoder = OnlineSpeculativeDecoder(*text_pair, tokenizer,
                                       OnlineConfig(draft_len_policy="constant", max_new_tokens=4))
    for bad in (None, ["SELECT 1"], torch.tensor([3, 4])):
        with pytest.raises(ValueError, match=r"prompt must be a text \(str\), got "):
            decoder.serve(bad)
    assert decoder.history["domain"] == []  # nothing was served


def test_an_update_that_breaks_the_draft_is_undone(pair, tokenizer):
    """Issue 13: lr=1e10 passed the finite-weights guard and every later query
    failed. Now the guard also asks for finite logits on the batch it trained
    on, and restores the weights and the optimiser state."""
    target, draft = pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=12))
    for domain, prompt in make_stream("iid", PROMPTS, 2):
        decoder.serve(prompt, domain)
    assert len(decoder.history["updates"]) == 1  # a good step: the optimiser has state
    optimizer = decoder.optimizers["draft"]
    weights = [p.clone() for p in draft.parameters()]
    state = copy.deepcopy(optimizer.state_dict()["state"])
    for group in optimizer.param_groups:
        group["lr"] = 1e10
    decoder.update()
    assert decoder.history["skipped"] == [(2, "draft")]
    assert all(torch.equal(a, b) for a, b in zip(weights, draft.parameters()))
    after = optimizer.state_dict()["state"]
    assert after.keys() == state.keys() and all(
        torch.equal(after[i][k], state[i][k]) for i in state for k in state[i])
    for domain, prompt in make_stream("iid", PROMPTS, 2, seed=1):  # still serving
        assert isinstance(decoder.serve(prompt, domain), str)


def test_learned_router_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    router = LearnedRouter(("sql", "math"), fallback="sql", vocab_size=10, seed=5)
    assert torch.equal(torch.rand(3), expected)
    again = LearnedRouter(("sql", "math"), fallback="sql", vocab_size=10, seed=5)
    assert torch.equal(router.classifier.weight, again.classifier.weight)
    torch.manual_seed(5)  # the same weights as torch.nn.Linear after torch.manual_seed(seed)
    assert torch.allclose(router.classifier.weight, torch.nn.Linear(10, 2).weight)
    with pytest.raises(ValueError, match="fallback must be one of"):
        LearnedRouter(("sql", "math"), fallback="code", vocab_size=10)
    with pytest.raises(ValueError, match="fallback must be one of"):
        OracleRouter(("sql", "math"), fallback="code")


def test_several_drafts_with_routers(pair, tokenizer):
    target, draft = pair
    drafts = {"sql": draft, "math": noisy_copy(target, 0.5, seed=2)}
    with pytest.raises(ValueError, match="router"):
        OnlineSpeculativeDecoder(target, drafts, tokenizer)
    oracle = OnlineSpeculativeDecoder(target, drafts, tokenizer, OnlineConfig(max_new_tokens=8),
                                      router=OracleRouter(drafts, fallback="sql"))
    oracle.serve(PROMPTS["math"][0], "math")
    oracle.serve("def f(x):", "code")  # a domain with no draft: falls back, and says so
    assert oracle.history["draft"] == ["math", "sql"]
    assert oracle.history["notes"][0] is None and "unknown domain 'code'" in oracle.history["notes"][1]

    router = LearnedRouter(drafts, fallback="sql", vocab_size=len(tokenizer))
    learned = OnlineSpeculativeDecoder(target, drafts, tokenizer, OnlineConfig(max_new_tokens=4),
                                       router=router)
    for domain, prompt in make_stream("iid", PROMPTS, 40, seed=3):
        learned.serve(prompt, domain)
    late = list(zip(learned.history["domain"], learned.history["draft"]))[-10:]
    assert all(domain == name for domain, name in late)  # it has learned the two classes
    assert "unlike any seen" in learned.history["notes"][0]  # nothing learned yet
    learned.serve("def tokenize(path): yield from open(path)", "code")  # a domain never seen
    assert learned.history["draft"][-1] == "sql" and "unlike any seen" in learned.history["notes"][-1]


def test_learned_router_falls_back_when_unsure():
    router = LearnedRouter(("sql", "math"), fallback="sql", vocab_size=10)
    router.seen[:] = True  # every token known, but no class preferred
    torch.nn.init.zeros_(router.classifier.weight)
    torch.nn.init.zeros_(router.classifier.bias)
    name, note = router.route(torch.tensor([[1, 2, 3]]))
    assert name == "sql" and "unsure (0.50 < 0.6)" in note
