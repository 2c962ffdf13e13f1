"""The online decoder as a server: served speed with updates counted against
plain decoding of the same queries, which drafts an update touches, the
draft-length policy, and exporting the adapted draft."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import PROMPTS, noisy_copy, tiny_model
from osd_lab.cost import SpeculationCosts
from osd_lab.evaluation import (acceptance_rate, alpha_by_domain, break_even, latencies,
                               served_speed, speed_by_block)
from osd_lab.online import OnlineConfig, OnlineSpeculativeDecoder, OracleRouter, make_stream
from osd_lab.policies import GoodputPolicy

FLAT = SpeculationCosts(0.1, (1.0, 1.05, 1.1, 1.15, 1.2))


def test_served_speed_counts_updates_beside_a_baseline_of_the_same_queries(text_pair, tokenizer):
    decoder = OnlineSpeculativeDecoder(*text_pair, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=10,
                                                    baseline=True, update_mode="sync"),
                                       costs=FLAT)
    stream = make_stream("sharp", PROMPTS, 8)
    for domain, prompt in stream:
        decoder.serve(prompt, domain)
    h = decoder.history
    assert len(h["update_s"]) == len(h["baseline_s"]) == len(h["baseline_tokens"]) == 8
    assert [q for q, *_ in h["updates"]] == [2, 4, 6, 8]
    assert all(h["update_s"][q - 1] > 0 for q, *_ in h["updates"])  # timed where they ran
    assert sum(s > 0 for s in h["update_s"]) == 4
    # greedy: plain decoding writes the same tokens, so the same counts
    assert h["baseline_tokens"] == h["new_tokens"]
    speed = served_speed(h)
    decode, update = sum(h["latency_s"]), sum(h["update_s"])
    assert speed["served_tps"] == pytest.approx(sum(h["new_tokens"]) / (decode + update))
    assert speed["update_share"] == pytest.approx(update / (decode + update))
    assert speed["speedup"] == pytest.approx(speed["served_tps"] / speed["baseline_tps"])
    blocks = speed_by_block(h)
    assert set(blocks) == {"sql", "math"} and blocks["sql"]["last"]["queries"] == 1
    assert blocks["math"]["all"]["queries"] == 4


def test_break_even_is_where_served_time_stays_below_plain_and_latencies_count_updates():
    history = dict(latency_s=[1.0, 0.5, 0.5, 0.2, 0.2], update_s=[0.5, 0.0, 0.6, 0.0, 0.0],
                   baseline_s=[1.0, 1.0, 0.6, 0.6, 0.6])
    # served so far 1.5, 2.0, 3.1, 3.3, 3.5 against plain 1.0, 2.0, 2.6, 3.2, 3.8:
    # below at query 5 only (query 2 ties, and 3 and 4 go back above)
    assert break_even(history, range(5)) == 5
    assert break_even(history, range(4)) is None
    assert break_even(history, [3, 4]) == 1
    lat = latencies(history, range(5))
    assert lat["served"][0] == pytest.approx(0.5) and lat["plain"][0] == pytest.approx(0.6)
    assert lat["served"][1] == pytest.approx(1.1 + 0.8 * 0.4)  # p95 between 1.1 and 1.5


def test_served_speed_needs_a_baseline(text_pair, tokenizer):
    decoder = OnlineSpeculativeDecoder(*text_pair, tokenizer, OnlineConfig(max_new_tokens=6),
                                       costs=FLAT)
    decoder.serve(PROMPTS["sql"][0])
    with pytest.raises(ValueError, match="baseline=True"):
        served_speed(decoder.history)
    with pytest.raises(ValueError, match="last_fraction"):
        speed_by_block(decoder.history, last_fraction=0)


def test_batched_serving_records_a_baseline_and_update_time(text_pair, tokenizer):
    decoder = OnlineSpeculativeDecoder(*text_pair, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=8,
                                                    baseline=True),
                                       costs=FLAT)
    decoder.serve_batch(PROMPTS["sql"] + PROMPTS["math"], ["sql"] * 2 + ["math"] * 2)
    h = decoder.history
    assert h["baseline_tokens"] == h["new_tokens"] and len(h["baseline_s"]) == 4
    assert h["update_s"][-1] > 0 and h["update_s"][:3] == [0.0] * 3
    with pytest.raises(ValueError, match="draft_len_policy must be one of"):
        decoder.serve_batch(PROMPTS["sql"], draft_len_policy="goodput")


def test_an_update_trains_only_drafts_that_served_new_queries(text_pair, tokenizer):
    target, draft = text_pair
    drafts = {"sql": draft, "math": noisy_copy(target, 0.5, seed=2)}
    decoder = OnlineSpeculativeDecoder(target, drafts, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=10),
                                       costs=FLAT, router=OracleRouter(drafts, fallback="sql"))
    math_before = [p.clone() for p in drafts["math"].parameters()]
    for prompt in PROMPTS["sql"] * 2:
        decoder.serve(prompt, "sql")
    assert {name for _, name, *_ in decoder.history["updates"]} == {"sql"}
    assert all(torch.equal(a, b) for a, b in zip(math_before, drafts["math"].parameters()))


def test_goodput_policy_is_kept_per_draft_across_queries(text_pair, tokenizer):
    target, _ = text_pair
    decoder = OnlineSpeculativeDecoder(target, target, tokenizer,
                                       OnlineConfig(max_new_tokens=12, update_interval=100),
                                       costs=FLAT)
    policy = decoder.policies["draft"]
    assert isinstance(policy, GoodputPolicy) and policy.alpha == 0.5
    for prompt in PROMPTS["sql"]:
        decoder.serve(prompt)
    assert policy.alpha > 0.9  # the target drafting for itself
    assert decoder.history["draft_len"][-1] > decoder.history["draft_len"][0]


@pytest.mark.parametrize("kwargs", [dict(draft_len_policy="constant", draft_len=3),
                                    dict(draft_len_policy="heuristic", stop_rule="confidence")])
def test_other_policies_serve_the_targets_output(text_pair, tokenizer, kwargs):
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer, max_new_tokens=10,
                                       update_interval=1, **kwargs)
    ids = tokenizer(PROMPTS["math"][1], return_tensors="pt").input_ids
    expected = target.generate(ids, max_new_tokens=10, do_sample=False,
                               eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
    for _ in range(3):  # the draft changes between them; the output must not
        assert decoder.serve(PROMPTS["math"][1]) == tokenizer.decode(expected,
                                                                     skip_special_tokens=True)


def test_save_draft_round_trips_with_identical_alpha(text_pair, tokenizer, tmp_path):
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=10),
                                       costs=FLAT)
    for prompt in PROMPTS["sql"]:
        decoder.serve(prompt)
    assert decoder.history["updates"]  # the draft moved before it was saved
    folder = decoder.save_draft(tmp_path / "draft")
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()
    prompts = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS["math"]]
    assert (acceptance_rate(target, draft, prompts, max_new_tokens=10)
            == acceptance_rate(target, reloaded, prompts, max_new_tokens=10))
    assert alpha_by_domain(target, reloaded, {"math": prompts}, max_new_tokens=10)["math"] \
        == acceptance_rate(target, draft, prompts, max_new_tokens=10)["alpha"]
    with pytest.raises(ValueError, match="non-empty folder"):
        decoder.save_draft(folder)
    decoder.save_draft(folder, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="must be a folder"):
        decoder.save_draft(tmp_path / "file")
    with pytest.raises(ValueError, match="name must be one of"):
        decoder.save_draft(tmp_path / "other", name="sql")


@pytest.mark.parametrize("kwargs, message", [
    (dict(draft_len_policy="fastest"), "draft_len_policy must be one of"),
    (dict(draft_len_policy="constant", draft_len=0), "draft_len must be"),
    (dict(stop_rule="hunch"), "stop_rule must be one of"),
    (dict(stop_rule="entropy", stop_threshold=-0.1), "stop_threshold must be"),
    (dict(costs=(0.1, 1.0)), "costs must be SpeculationCosts"),
    (dict(draft_len_policy="constant", costs=FLAT), "costs are read by the goodput policy"),
    (dict(baseline=1), "baseline must be one of"),
])
def test_bad_serving_settings(text_pair, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnlineSpeculativeDecoder(*text_pair, tokenizer, **kwargs)


def test_save_draft_folds_lora_adapters_into_a_standard_checkpoint(text_pair, tokenizer, tmp_path):
    pytest.importorskip("peft")
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=10,
                                                    lora_rank=4, lr=1e-2),
                                       costs=FLAT)
    for prompt in PROMPTS["sql"]:
        decoder.serve(prompt)
    assert decoder.history["updates"]
    reloaded = AutoModelForCausalLM.from_pretrained(decoder.save_draft(tmp_path / "draft"))
    assert not any(hasattr(m, "base_layer") for m in reloaded.modules())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, draft(ids).logits, atol=1e-5)


def test_a_draft_that_already_matches_takes_no_update(tokenizer):
    target = tiny_model("llama", seed=0, vocab_size=len(tokenizer))
    runs = {}
    for threshold in (0.3, None):
        draft = noisy_copy(target, 0.1, seed=1)  # close to the target, not equal
        decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                           OnlineConfig(update_interval=1, max_new_tokens=12,
                                                        draft_len=2, draft_len_policy="constant",
                                                        update_below_alpha=threshold))
        for prompt in PROMPTS["sql"] * 3:
            decoder.serve(prompt)
        runs[threshold] = decoder
    assert runs[0.3].running_alpha["draft"] >= 0.3
    assert runs[0.3].history["updates"] == [] and len(runs[None].history["updates"]) > 0


def test_bad_update_below_alpha_is_refused(text_pair, tokenizer):
    for value in (0, 1.5, float("nan"), "high"):
        with pytest.raises(ValueError, match="update_below_alpha must be"):
            OnlineSpeculativeDecoder(*text_pair, tokenizer, OnlineConfig(update_below_alpha=value))
