"""LoRA mode of the online decoder and the settings for real drafts (osd_lab.finetune)."""

import copy
import importlib

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import PROMPTS, tiny_model
from osd_lab.decoding import autoregressive_generate
from osd_lab.finetune import add_lora, default_lr, default_warmup_updates, master_weights
from osd_lab.models import warn_if_draft_larger
from osd_lab.online import OnlineConfig, OnlineSpeculativeDecoder, make_stream





def snapshot(model):
    """Each weight with a copy of its values (LoRA renames the weights it wraps:
    ``q_proj.weight`` becomes ``q_proj.base_layer.weight``, the same tensor)."""
    return [(p, p.detach().clone()) for p in model.parameters()]


def adapters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def serves_the_targets_text(decoder, target, tokenizer):
    """Serve sql, sql, math prompts; each answer must be the target's greedy text."""
    for prompt in PROMPTS["sql"] * 2 + PROMPTS["math"]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = autoregressive_generate(target, ids, 10,
                                           eos_token_id=tokenizer.eos_token_id).tokens
        assert decoder.serve(prompt) == tokenizer.decode(expected, skip_special_tokens=True)


# -----------------------------------------------------------------------------
# add_lora

@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_add_lora_changes_nothing_until_a_step_and_freezes_the_base(arch):
    pytest.importorskip("peft")
    model = tiny_model(arch)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    assert add_lora(model, 4) is model and type(model).__name__.endswith(("LMHeadModel",
                                                                          "ForCausalLM"))
    assert torch.equal(model(ids).logits, before)  # B starts at zero
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_adapters_train_in_float32_in_a_bfloat16_model():
    pytest.importorskip("peft")
    model = tiny_model("qwen2", dtype=torch.bfloat16)
    add_lora(model, 4)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    logits = model(torch.tensor([[3, 4, 5]])).logits  # the mixed-dtype forward runs
    assert logits.dtype == torch.bfloat16 and logits.isfinite().all()


# -----------------------------------------------------------------------------
# the online decoder in LoRA mode

def test_lora_updates_leave_the_base_weights_bit_identical(text_pair, tokenizer):
    pytest.importorskip("peft")
    target, draft = text_pair
    base = snapshot(draft)
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=12,
                                                    lora_rank=4, lr=1e-2))
    assert decoder.drafts["draft"] is draft  # the served draft is the same model object
    start = adapters(draft)
    for domain, prompt in make_stream("iid", PROMPTS, 6):
        decoder.serve(prompt, domain)
    assert len(decoder.history["updates"]) == 3 and not decoder.history["skipped"]
    assert all(torch.equal(weight, saved) for weight, saved in base)
    assert {id(w) for w, _ in base} <= {id(p) for p in draft.parameters()}
    assert any(not torch.equal(a, start[n]) for n, a in adapters(draft).items())
    # the optimiser holds only the adapters
    held = {id(p) for group in decoder.optimizers["draft"].param_groups for p in group["params"]}
    assert held == {id(p) for n, p in draft.named_parameters() if "lora_" in n}


@pytest.mark.exactness
@pytest.mark.parametrize("buffer_top_k", [None, 8])
def test_lora_mode_greedy_output_is_still_the_targets(text_pair, tokenizer, buffer_top_k):
    pytest.importorskip("peft")
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=10,
                                                    lora_rank=4, lr=1e-2,
                                                    buffer_top_k=buffer_top_k))
    serves_the_targets_text(decoder, target, tokenizer)
    assert decoder.history["updates"]


def test_a_bad_lora_update_leaves_the_adapters_and_the_optimiser_as_they_were(text_pair,
                                                                               tokenizer):
    pytest.importorskip("peft")
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=12,
                                                    lora_rank=4))
    for domain, prompt in make_stream("iid", PROMPTS, 2):
        decoder.serve(prompt, domain)
    assert len(decoder.history["updates"]) == 1  # a good step: the optimiser has state
    optimizer = decoder.optimizers["draft"]
    weights = {n: p.detach().clone() for n, p in draft.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict()["state"])
    for group in optimizer.param_groups:
        group["lr"] = 1e10
    decoder.update()
    assert decoder.history["skipped"] == [(2, "draft")]
    assert all(torch.equal(weights[n], p) for n, p in draft.named_parameters())
    after = optimizer.state_dict()["state"]
    assert after.keys() == state.keys() and all(
        torch.equal(after[i][k], state[i][k]) for i in state for k in state[i])


# -----------------------------------------------------------------------------
# full fine-tuning: float32 master weights, no undo copy for a large draft

def test_a_half_precision_draft_trains_float32_master_weights(tokenizer):
    """bfloat16 rounds a step under ~2^-8 of a weight away; the optimiser steps
    float32 copies instead, and the served draft is their rounding."""
    target = tiny_model("llama", vocab_size=len(tokenizer), dtype=torch.bfloat16)
    draft = copy.deepcopy(target)
    before = [p.detach().float().clone() for p in draft.parameters()]
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=12, lr=1e-4,
                                                    temperature=1.0, update_below_alpha=None))
    for prompt in PROMPTS["sql"] + PROMPTS["math"]:
        decoder.serve(prompt)
    master = decoder.masters["draft"]
    assert len(decoder.history["updates"]) >= 2 and not decoder.history["skipped"]
    assert {m.dtype for m in master} == {torch.float32}
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(draft.parameters(), master))
    moved = sum((m != b).sum().item() for m, b in zip(master, before))
    served_moved = sum((p.float() != b).sum().item() for p, b in zip(draft.parameters(), before))
    print(f"master weights moved: {moved}, served bfloat16 weights moved: {served_moved}")
    assert moved > 0.4 * sum(b.numel() for b in before)  # every weight with a gradient
    assert served_moved < moved / 2  # most steps are below bfloat16's resolution so far
    assert next(draft.parameters()).dtype == torch.bfloat16  # still served in bfloat16


def test_lora_and_float32_drafts_need_no_master_weights(text_pair, tokenizer):
    pytest.importorskip("peft")
    target, draft = text_pair
    assert OnlineSpeculativeDecoder(target, draft, tokenizer).masters["draft"] is None
    half = tiny_model("qwen2", dtype=torch.bfloat16)
    add_lora(half, 4)
    assert master_weights(half) is None  # the adapters are float32 already


def test_over_the_undo_limit_an_update_keeps_no_copy_and_a_broken_one_raises(
        text_pair, tokenizer, monkeypatch):
    """A real-size draft (0.5B: 6 GB of weights and AdamW moments) gets no undo
    copy: a good step is taken as before; a step that breaks the draft raises
    rather than serving it."""
    target, draft = text_pair
    monkeypatch.setattr(importlib.import_module("osd_lab.finetune"), "UNDO_LIMIT", 0)
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=12,
                                                    update_below_alpha=None))
    optimizer = decoder.optimizers["draft"]
    monkeypatch.setattr(optimizer, "state_dict", lambda: pytest.fail("state copied for undo"))
    for domain, prompt in make_stream("iid", PROMPTS, 2):
        decoder.serve(prompt, domain)
    assert len(decoder.history["updates"]) == 1
    for group in optimizer.param_groups:
        group["lr"] = 1e10
    with pytest.raises(RuntimeError, match="no copy was kept to undo it.*lora_rank"):
        decoder.update()


# -----------------------------------------------------------------------------
# learning rate and warm-up by draft size

def qwen_on_meta(hidden, layers, heads, intermediate):
    """A Qwen2 of real size on the meta device: shapes without memory."""
    config = Qwen2Config(vocab_size=151936, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=2,
                         intermediate_size=intermediate, tie_word_embeddings=True)
    with torch.device("meta"):
        return Qwen2ForCausalLM(config)


def test_default_lr_by_draft_size(zoo):
    assert default_lr(zoo.draft) == 1e-3 and default_warmup_updates(zoo.draft) == 0
    qwen_05b = qwen_on_meta(896, 24, 14, 4864)
    assert default_lr(qwen_05b) == 1e-5 and default_lr(qwen_05b, lora_rank=16) == 1e-4
    assert default_warmup_updates(qwen_05b) == 8
    assert default_lr(zoo.draft, lora_rank=16) == 1e-3


def test_warm_up_ramps_the_learning_rate_over_the_updates_taken(text_pair, tokenizer):
    target, draft = text_pair
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=12, lr=1e-3,
                                                    warmup_updates=3))
    lrs = [decoder.optimizers["draft"].param_groups[0]["lr"]]
    for prompt in PROMPTS["sql"] * 2 + PROMPTS["math"] * 2:
        decoder.serve(prompt)
        lrs.append(decoder.optimizers["draft"].param_groups[0]["lr"])
    taken = len(decoder.history["updates"])
    assert lrs[0] == pytest.approx(0.25e-3) and taken >= 3
    assert lrs[-1] == pytest.approx(1e-3) and lrs == sorted(lrs)


# -----------------------------------------------------------------------------
# bad settings

def test_lora_without_peft_is_a_clear_error_and_changes_no_draft(text_pair, tokenizer,
                                                                 monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails
    target, draft = text_pair
    with pytest.raises(ImportError, match="lora_rank needs the peft package"):
        OnlineSpeculativeDecoder(target, draft, tokenizer, OnlineConfig(lora_rank=4))
    assert all(p.requires_grad for p in draft.parameters())


def test_a_draft_larger_than_its_target_warns():
    small, large = tiny_model("llama", layers=1), tiny_model("llama", layers=3)
    with pytest.warns(UserWarning, match="the draft .* is larger than the target"):
        warn_if_draft_larger(small, large, "swapped")


# -----------------------------------------------------------------------------
# the default, lora_rank="auto": LoRA above LORA_ABOVE draft parameters

def lora_above(monkeypatch, threshold):
    """Move the draft size above which the default adds LoRA (a tiny draft
    stands for a 0.5B one)."""
    monkeypatch.setattr(importlib.import_module("osd_lab.online"), "LORA_ABOVE", threshold)


def trains_only_adapters(decoder, draft):
    held = {id(p) for group in decoder.optimizers["draft"].param_groups for p in group["params"]}
    lora = {id(p) for n, p in draft.named_parameters() if "lora_" in n}
    return bool(lora) and held == lora and not any(
        p.requires_grad for n, p in draft.named_parameters() if "lora_" not in n)


def test_the_default_gives_a_draft_over_the_threshold_lora_adapters(text_pair, tokenizer,
                                                                    monkeypatch):
    pytest.importorskip("peft")
    from osd_lab.finetune import num_parameters
    from osd_lab.online import LORA_RANK
    target, draft = text_pair
    lora_above(monkeypatch, num_parameters(draft) - 1)
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer)
    assert decoder.lora_ranks == {"draft": LORA_RANK} and trains_only_adapters(decoder, draft)
    assert decoder.optimizers["draft"].param_groups[0]["lr"] == default_lr(draft, LORA_RANK)


def test_the_default_fine_tunes_every_weight_of_a_small_draft_as_before(text_pair, tokenizer):
    """Under LORA_ABOVE (the zoo's 2M draft) the default is what lora_rank=None
    was: the same weights after the same updates, bit for bit."""
    target, draft = text_pair
    explicit = copy.deepcopy(draft)
    decoders = [OnlineSpeculativeDecoder(target, d, tokenizer, update_interval=2,
                                         max_new_tokens=12, update_below_alpha=None,
                                         draft_len_policy="constant", draft_len=4, **kwargs)
                for d, kwargs in ((draft, {}), (explicit, dict(lora_rank=None)))]
    assert decoders[0].lora_ranks == {"draft": None}
    for decoder in decoders:
        for domain, prompt in make_stream("iid", PROMPTS, 4):
            decoder.serve(prompt, domain)
    assert len(decoders[0].history["updates"]) == 2
    assert decoders[0].history["alpha"] == decoders[1].history["alpha"]
    assert all(torch.equal(a, b) for a, b in zip(draft.parameters(), explicit.parameters()))
    assert all(p.requires_grad for p in draft.parameters())


def test_the_zoo_draft_is_fully_fine_tuned_by_default(zoo):
    decoder = OnlineSpeculativeDecoder(zoo.target, copy.deepcopy(zoo.draft), zoo.tokenizer)
    assert decoder.lora_ranks == {"draft": None}


def test_lora_rank_none_asks_for_full_fine_tuning_above_the_threshold(text_pair, tokenizer,
                                                                      monkeypatch):
    target, draft = text_pair
    lora_above(monkeypatch, 0)
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer, OnlineConfig(lora_rank=None))
    assert decoder.lora_ranks == {"draft": None}
    assert all(p.requires_grad for p in draft.parameters())
    assert not any("lora_" in n for n, _ in draft.named_parameters())


def test_the_default_chooses_per_draft(tokenizer, monkeypatch):
    pytest.importorskip("peft")
    from osd_lab.finetune import num_parameters
    from osd_lab.online import LORA_RANK, OracleRouter
    target = tiny_model("llama", vocab_size=len(tokenizer), layers=3)
    drafts = {"sql": tiny_model("llama", vocab_size=len(tokenizer), layers=3, seed=1),
              "math": tiny_model("llama", vocab_size=len(tokenizer), layers=1, seed=2)}
    lora_above(monkeypatch, num_parameters(drafts["math"]))  # the 1-layer draft is not over
    decoder = OnlineSpeculativeDecoder(target, drafts, tokenizer,
                                       router=OracleRouter(drafts, fallback="sql"))
    assert decoder.lora_ranks == {"sql": LORA_RANK, "math": None}
    assert all(p.requires_grad for p in drafts["math"].parameters())


@pytest.mark.exactness
def test_the_default_lora_choice_keeps_greedy_output_the_targets(text_pair, tokenizer,
                                                                 monkeypatch):
    pytest.importorskip("peft")
    from osd_lab.online import LORA_RANK
    target, draft = text_pair
    lora_above(monkeypatch, 0)
    decoder = OnlineSpeculativeDecoder(target, draft, tokenizer,
                                       OnlineConfig(update_interval=1, max_new_tokens=10, lr=1e-2,
                                                    update_below_alpha=None))
    assert decoder.lora_ranks == {"draft": LORA_RANK}
    start = adapters(draft)
    serves_the_targets_text(decoder, target, tokenizer)
    assert decoder.history["updates"]
    assert any(not torch.equal(a, start[n]) for n, a in adapters(draft).items())  # it learnt


def test_without_peft_the_default_still_fine_tunes_a_small_draft_and_names_the_fix(
        text_pair, tokenizer, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails
    target, draft = text_pair
    assert OnlineSpeculativeDecoder(target, draft, tokenizer).lora_ranks == {"draft": None}
    lora_above(monkeypatch, 0)
    with pytest.raises(ImportError, match=r"needs the peft package.*pip install.*lora_rank=None"):
        OnlineSpeculativeDecoder(target, draft, tokenizer)
    assert all(p.requires_grad for p in draft.parameters())
