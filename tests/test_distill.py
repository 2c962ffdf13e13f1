import pytest
import torch

from conftest import ARCHITECTURES, noisy_copy, tiny_model
from osd_lab.distill import (acceptance_rate, adaspec, continuation_logits, distill, first_scored,
                             make_batch, select_tokens)


def prompts(n=6, length=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 90, (length,), generator=gen) for _ in range(n)]


def test_make_batch_aligns_logits_with_next_tokens():
    ids, mask = make_batch([torch.tensor([5, 6, 7, 8, 9]), torch.tensor([5, 6, 7])], [2, 2],
                           pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    # logits at t score token t + 1: continuation tokens 7, 8, 9 are scored at t = 1, 2, 3
    assert mask.tolist() == [[False, True, True, True], [False, True, False, False]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_continuation_logits_are_the_full_logits_from_the_first_scored_position(arch):
    """An update computes logits only from the first continuation position on."""
    model = tiny_model(arch)
    sequences = [torch.arange(3, 12), torch.arange(20, 27)]
    ids, mask = make_batch(sequences, [6, 4])
    start = first_scored(mask)
    assert start == 3 and not mask[:, :start].any()  # row 2's first continuation token: 4
    full = model(ids).logits[:, :-1]  # (B, L - 1, V)
    for begin in (0, start, ids.shape[1] - 2):
        part = continuation_logits(model, ids, begin, vocab_size=50)
        torch.testing.assert_close(part, full[:, begin:, :50], atol=1e-5, rtol=1e-5)
    assert first_scored(torch.zeros(2, 0, dtype=torch.bool)) == 0


def test_select_tokens_keeps_top_fraction_by_delta():
    draft_loss = torch.tensor([[5.0, 1.0, 3.0, 9.0, 2.0]])
    reference_loss = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False, True]])  # position 3 is not a target
    kept = select_tokens(draft_loss, reference_loss, mask, keep_fraction=0.5)
    assert kept.tolist() == [[True, False, True, False, False]]


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd", "tvd"])
@pytest.mark.parametrize("data", ["target", "draft", "mixed", "fixed"])
def test_distill_lowers_the_loss(loss, data, device):
    target = tiny_model("llama", seed=0, device=device)
    draft = noisy_copy(target, 0.5, seed=3)
    history = distill(target, draft, prompts(), loss=loss, data=data, steps=12, lr=3e-3,
                      batch_size=4, max_new_tokens=8, progress=False)
    assert len(history["loss"]) == 12 and not history["skipped"]
    assert sum(history["loss"][-3:]) < sum(history["loss"][:3])


def test_distill_raises_acceptance_and_reports_it(device):
    target = tiny_model("llama", seed=0, device=device)
    draft = noisy_copy(target, 0.5, seed=3)
    held_out = prompts(3, seed=9)
    history = distill(target, draft, prompts(8), steps=30, lr=3e-3, batch_size=4,
                      max_new_tokens=12, eval_prompts=held_out, eval_every=15, progress=False)
    steps = [row[0] for row in history["eval"]]
    assert steps == [0, 15, 30]
    assert history["eval"][-1][1] > history["eval"][0][1]  # alpha went up
    stats = acceptance_rate(target, draft, held_out)
    assert 0 <= stats["alpha"] <= 1 and stats["tau"] >= 1


def test_adaspec_trains_on_a_fraction_of_tokens(device):
    target = tiny_model("qwen2", seed=0, device=device)
    draft = noisy_copy(target, 0.5, seed=3)
    before = [p.clone() for p in draft.parameters()]
    history, reference = adaspec(target, draft, prompts(), keep_fraction=0.4, steps=6,
                                 batch_size=4, max_new_tokens=8, progress=False)
    assert all(0.3 <= k <= 0.45 for k in history["kept_fraction"])
    assert any(not torch.equal(a, b) for a, b in zip(before, draft.parameters()))
    assert all(not p.requires_grad for p in reference.parameters())


def test_nan_loss_skips_the_step_and_keeps_the_weights(device):
    target = tiny_model("llama", seed=0, device=device)
    with torch.no_grad():
        target.get_output_embeddings().weight[5, 0] = float("nan")
    draft = tiny_model("llama", seed=1, device=device)
    before = [p.clone() for p in draft.parameters()]
    history = distill(target, draft, prompts(), data="fixed", steps=3, batch_size=2,
                      progress=False)
    assert history["skipped"] == [1, 2, 3] and history["loss"] == []
    assert all(torch.equal(a, b) for a, b in zip(before, draft.parameters()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_fraction=0.0, reference="self"), "keep_fraction"),
    (dict(keep_fraction=1.5, reference="self"), "keep_fraction"),
    (dict(loss="kl"), "loss must be"),
    (dict(data="web"), "data must be"),
    # issue 13: lr=inf recorded a normal step and left non-finite weights
    (dict(lr=float("inf")), "lr must be a finite number > 0, got inf"),
    (dict(lr=0), "lr must be a finite number > 0, got 0"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an integer >= 1, got 2.0"),
    (dict(batch_size=0), "batch_size"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(mix_ratio=float("nan")), "mix_ratio"),
    (dict(vocab_size=-1), "vocab_size must be an integer in"),
    (dict(seed=-1), "seed must be an integer in"),
])
def test_bad_arguments(kwargs, message):
    target = tiny_model("llama")
    if kwargs.get("reference") == "self":
        kwargs["reference"] = target
    with pytest.raises(ValueError, match=message):
        distill(target, tiny_model("llama", 1), prompts(), steps=1, progress=False, **kwargs)


@pytest.mark.parametrize("bad_prompts, message", [
    ([], "prompts must be a non-empty list"),
    ([torch.tensor([2.0, 3.0])], r"prompts\[0\] must be integer token ids"),
    ([torch.tensor([2, 3]), torch.tensor([2, 96])], r"prompts\[1\] must be token ids in \[0, 96\)"),
    ([torch.tensor([[[2, 3]]])], r"prompts\[0\] must have shape \(T,\)"),
])
def test_bad_prompts(bad_prompts, message):
    with pytest.raises(ValueError, match=message):
        distill(tiny_model("llama"), tiny_model("llama", 1), bad_prompts, steps=1,
                progress=False)
    with pytest.raises(ValueError, match=message):
        acceptance_rate(tiny_model("llama"), tiny_model("llama", 1), bad_prompts)


@pytest.mark.parametrize("data, length, message", [
    ("fixed", 129, r"prompts\[1\] \(129 tokens, data='fixed'\) exceeds the models' context "
                   r"of 128 tokens"),
    ("target", 120, r"prompts\[1\] \(120 tokens\) \+ max_new_tokens \(9\) exceeds the "
                    r"models' context of 128 tokens"),
    ("mixed", 120, r"prompts\[1\] \(120 tokens\) \+ max_new_tokens \(9\)"),
])
def test_a_text_longer_than_the_context_is_refused(data, length, message):
    """Issue 21: data="fixed" trained on positions past the context (no error on
    llama); data="target" failed only inside the loop, naming input_ids."""
    texts = [torch.arange(2, 10), torch.randint(2, 90, (length,))]
    with pytest.raises(ValueError, match=message):
        distill(tiny_model("llama", layers=1), tiny_model("llama", 1, layers=1), texts,
                data=data, steps=1, max_new_tokens=9, progress=False)


def test_keep_fraction_none_with_a_reference_is_refused():
    """Issue 21: AdaSPEC selection with keep_fraction=None was a TypeError from
    inside select_tokens; without a reference keep_fraction is unread."""
    target = tiny_model("llama", layers=1)
    with pytest.raises(ValueError, match=r"keep_fraction \(AdaSPEC's k, with a reference\) "
                                         r"must be a finite number in \(0, 1\], got None"):
        distill(target, tiny_model("llama", 1, layers=1), prompts(), steps=1,
                reference=target, keep_fraction=None, progress=False)
    history = distill(target, tiny_model("llama", 1, layers=1), prompts(), data="fixed",
                      steps=1, batch_size=2, keep_fraction=None, progress=False)
    assert len(history["loss"]) + len(history["skipped"]) == 1


def test_acceptance_rate_needs_two_new_tokens():
    """With max_new_tokens=1 nothing is drafted: this was a ZeroDivisionError."""
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 2, got 1"):
        acceptance_rate(tiny_model("llama"), tiny_model("llama", 1), prompts(), max_new_tokens=1)


def test_a_step_that_breaks_the_draft_is_undone():
    """lr=1e10 leaves finite weights whose logits are not: the step is undone."""
    target = tiny_model("llama", seed=0)
    draft = noisy_copy(target, 0.5, seed=3)
    before = [p.clone() for p in draft.parameters()]
    history = distill(target, draft, prompts(), data="fixed", steps=2, lr=1e10, batch_size=2,
                      progress=False)
    assert history["skipped"] == [1, 2] and history["loss"] == []
    assert all(torch.equal(a, b) for a, b in zip(before, draft.parameters()))


def test_all_masked_batch_and_mismatched_vocab():
    target = tiny_model("llama")
    with pytest.raises(ValueError, match="keeps no position"):  # one-token texts: nothing to predict
        distill(target, tiny_model("llama", 1), [torch.tensor([4])], data="fixed", steps=1,
                progress=False)
    with pytest.raises(ValueError, match="same vocabulary"):
        distill(target, tiny_model("llama", 1, vocab_size=128), prompts(), data="fixed",
                steps=1, progress=False)
    history = distill(target, tiny_model("llama", 1, vocab_size=128), prompts(), data="fixed",
                      steps=1, progress=False, vocab_size=96)
    assert len(history["loss"]) == 1


def test_cut_prompts_are_seeded_prefixes():
    from transformers import AutoTokenizer

    from osd_lab.distill import cut_prompts
    from osd_lab.models import ZOO_DIR
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    texts = ["SELECT name, age FROM people WHERE age > 30 ORDER BY name;" * 4, "short"]
    prompts = cut_prompts(tokenizer, texts, seed=1)
    assert [p.tolist() for p in prompts] == [p.tolist() for p in cut_prompts(tokenizer, texts, 1)]
    for text, prompt in zip(texts, prompts):
        full = tokenizer(text, return_tensors="pt").input_ids[0]
        assert torch.equal(prompt, full[:len(prompt)])
        assert len(prompt) == min(len(full), 8) or 8 <= len(prompt) <= min(64, len(full) - 8)
