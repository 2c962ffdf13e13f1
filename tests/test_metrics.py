import copy
import math

import pytest
import torch

from conftest import noisy_copy, tiny_model
from osd_lab.metrics import acceptance_along_greedy, alpha_on_documents
from osd_lab.sampling import logits_to_probs
from osd_lab.verify import overlap


def test_alpha_on_documents_by_hand_and_for_an_identical_draft():
    target = tiny_model("llama")
    draft = noisy_copy(target, 0.5, seed=1)
    docs = [torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(i))
            for i in range(3)]
    stats = alpha_on_documents(target, draft, docs, temperatures=(0.0, 1.0))
    with torch.no_grad():
        by_hand = [overlap(logits_to_probs(target(d).logits[0, :-1], 1.0),
                           logits_to_probs(draft(d).logits[0, :-1], 1.0)).mean() for d in docs]
    assert stats[1.0][0] == pytest.approx(torch.stack(by_hand).mean().item(), abs=1e-6)
    assert stats[1.0][1] == pytest.approx(torch.stack(by_hand).std().item() / 3 ** 0.5, abs=1e-6)
    same = alpha_on_documents(target, copy.deepcopy(target), docs, temperatures=(0.0, 1.0))
    assert all(mean == pytest.approx(1.0) and error == pytest.approx(0.0, abs=1e-6)
               for mean, error in same.values())


def test_acceptance_along_greedy_for_an_identical_draft():
    target = tiny_model("gpt2")
    out = acceptance_along_greedy(target, copy.deepcopy(target), torch.tensor([[0, 5, 7]]), 6)
    assert out["alpha"].shape == (6,) and out["agree"].all()
    assert torch.allclose(out["alpha"], torch.ones(6))


def test_bad_input_is_named():
    """Empty inputs were a ZeroDivisionError (perplexity) or a silent NaN (alpha)."""
    from transformers import AutoTokenizer

    from osd_lab.measure import decode_step_time
    from osd_lab.metrics import perplexity
    from osd_lab.models import ZOO_DIR
    model = tiny_model("llama")
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        perplexity(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_len must be an integer >= 2, got 1"):
        perplexity(model, tokenizer, ["SELECT 1"], max_len=1)
    with pytest.raises(ValueError, match="documents must be a non-empty list"):
        alpha_on_documents(model, model, [])
    with pytest.raises(ValueError, match="num_tokens must be an integer >= 1, got 0"):
        acceptance_along_greedy(model, model, torch.tensor([[0, 5]]), 0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        decode_step_time(model, steps=0)


def test_perplexity_refuses_a_text_longer_than_the_context(tokenizer):
    """Issue 21: a text longer than the model's context was scored on positions
    the model has no embedding for (llama) or crashed (GPT-2's IndexError)."""
    from osd_lab.metrics import perplexity
    model = tiny_model("gpt2", vocab_size=len(tokenizer))  # context: 128 tokens
    text = " ".join(["SELECT name FROM books WHERE id = 1;"] * 30)
    assert len(tokenizer(text).input_ids) > 128
    with pytest.raises(ValueError, match=r"texts\[1\] is 200 tokens long after the cut to "
                                         r"max_len=200, more than the model's context of 128 "
                                         r"tokens: pass max_len=128 or less"):
        perplexity(model, tokenizer, ["SELECT 1", text], max_len=200)
    assert math.isfinite(perplexity(model, tokenizer, [text], max_len=128))  # the cut documented


def test_acceptance_along_greedy_takes_a_prompt_as_the_decoders_do():
    """Issue 21: ids of shape (T,) were an IndexError from inside; now (T,),
    (1, T) and a list are one prompt, as in the decoders, and a batch is refused."""
    model = tiny_model("llama", layers=1)
    expected = acceptance_along_greedy(model, model, torch.tensor([[0, 5, 7]]), 4)
    for ids in (torch.tensor([0, 5, 7]), [[0, 5, 7]]):
        got = acceptance_along_greedy(model, model, ids, 4)
        assert torch.equal(got["agree"], expected["agree"])
        assert torch.allclose(got["alpha"], expected["alpha"])
    with pytest.raises(ValueError, match=r"input_ids must be one prompt of shape \(T,\) or "
                                         r"\(1, T\), got \(2, 3\)"):
        acceptance_along_greedy(model, model, torch.tensor([[0, 5, 7], [0, 5, 7]]), 4)


def test_acceptance_along_greedy_stops_at_end_of_text():
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=1, layers=1)
    ids = torch.tensor([[3, 4, 5]])
    full = acceptance_along_greedy(target, draft, ids, 12)
    eos = int(target(ids).logits[0, -1].argmax())  # the first token the target writes
    assert len(full["alpha"]) == 12
    assert len(acceptance_along_greedy(target, draft, ids, 12, eos_token_id=eos)["alpha"]) == 1
