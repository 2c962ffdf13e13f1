"""Stopping at EOS: lists of ids, statistics trimmed with the tokens; the recorded target logits."""

import pytest
import torch

from conftest import noisy_copy, tiny_model
from test_streaming import tiny_streaming
from osd_lab.batched import batched_autoregressive_generate, batched_speculative_generate
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.evaluation import acceptance_rate
from osd_lab.metrics import acceptance_along_greedy
from osd_lab.streaming import streaming_generate

PROMPT = torch.tensor([[0, 11, 12]])


def first_new_token_at(tokens, index):
    """A token of ``tokens`` that first occurs at ``index`` (an EOS stand-in)."""
    for i in range(index, len(tokens)):
        if tokens.index(tokens[i]) == i:
            return i, tokens[i]
    raise AssertionError("no token occurs first after index")


@pytest.mark.exactness
def test_stats_are_trimmed_when_eos_is_an_accepted_draft_token():
    target = tiny_model("gpt2")
    full = autoregressive_generate(target, PROMPT, 20).tokens.tolist()
    at, eos = first_new_token_at(full, 2)
    # the target as its own draft: the first block of 8 is accepted whole, EOS inside it
    out = speculative_generate(target, target, PROMPT, 20, draft_len_policy="constant", draft_len=8, eos_token_id=eos)
    assert out.tokens.tolist() == full[:at + 1]
    s = out.stats
    assert s.accepted == [at + 1] and s.corrections == []
    assert len(s.decided_alpha) == at + 1 and s.verified_alpha == pytest.approx(1.0)


@pytest.mark.exactness
def test_trimmed_stats_add_up_with_a_noisy_draft():
    target = tiny_model("llama")
    draft = noisy_copy(target, 0.3)
    full = autoregressive_generate(target, PROMPT, 30).tokens.tolist()
    for index in range(1, 12):
        at, eos = first_new_token_at(full, index)
        out = speculative_generate(target, draft, PROMPT, 30, draft_len_policy="constant", draft_len=4, eos_token_id=eos)
        s = out.stats
        assert out.tokens.tolist() == full[:at + 1]
        # every new token is an accepted draft token or the target's own, one per step at most
        target_made = len(out.tokens) - sum(s.accepted)
        assert target_made in (s.target_calls - 1, s.target_calls)
        assert all(c < len(out.tokens) for c in s.corrections)
        assert len(s.decided_alpha) <= sum(s.accepted) + len(s.corrections)


@pytest.mark.exactness
def test_eos_token_id_may_be_a_list():
    target = tiny_model("qwen2")
    full = autoregressive_generate(target, PROMPT, 20).tokens.tolist()
    at, eos = first_new_token_at(full, 5)
    never = next(t for t in range(96) if t not in full)
    for eos_ids in ([never, eos], (eos,), torch.tensor([eos, never])):
        ar = autoregressive_generate(target, PROMPT, 20, eos_token_id=eos_ids)
        spec = speculative_generate(target, noisy_copy(target, 0.3), PROMPT, 20,
                                    eos_token_id=eos_ids)
        assert ar.tokens.tolist() == spec.tokens.tolist() == full[:at + 1]


@pytest.mark.exactness
@pytest.mark.parametrize("as_list", [False, True])
def test_every_decoder_and_alpha_function_stops_at_the_models_eos_by_default(as_list):
    """eos_token_id defaults to "model": the generation config's id (or ids);
    None decodes past it."""
    target = tiny_model("qwen2")
    draft = noisy_copy(target, 0.3)
    full = autoregressive_generate(target, PROMPT, 20).tokens.tolist()
    at, eos = first_new_token_at(full, 5)
    target.generation_config.eos_token_id = [95, eos] if as_list and eos != 95 else eos
    expected = full[:at + 1]
    assert autoregressive_generate(target, PROMPT, 20).tokens.tolist() == expected
    assert speculative_generate(target, draft, PROMPT, 20).tokens.tolist() == expected
    assert batched_autoregressive_generate(target, [PROMPT[0]], 20).tokens[0].tolist() == expected
    assert batched_speculative_generate(target, draft, [PROMPT[0]], 20).tokens[0].tolist() == expected
    assert len(acceptance_along_greedy(target, draft, PROMPT, 20)["alpha"]) == at + 1
    stopped = acceptance_rate(target, draft, [PROMPT], max_new_tokens=20)
    past = acceptance_rate(target, draft, [PROMPT], max_new_tokens=20, eos_token_id=None)
    assert stopped["alpha"] != past["alpha"]
    assert len(autoregressive_generate(target, PROMPT, 20, eos_token_id=None).tokens) == 20
    streaming = tiny_streaming()
    base_full = autoregressive_generate(streaming.base, PROMPT, 20).tokens.tolist()
    at, eos = first_new_token_at(base_full, 5)
    streaming.base.generation_config.eos_token_id = eos
    assert streaming_generate(streaming, PROMPT, 20).tokens.tolist() == base_full[:at + 1]


def test_a_models_eos_outside_the_vocabulary_is_a_clear_error():
    target = tiny_model("llama")
    target.generation_config.eos_token_id = 50256  # e.g. GPT-2's, on a 96-token model
    for call in (lambda: autoregressive_generate(target, PROMPT, 5),
                 lambda: speculative_generate(target, target, PROMPT, 5)):
        with pytest.raises(ValueError, match=r"eos_token_id='model' reads the model's "
                                             r"generation_config.eos_token_id, 50256"):
            call()


@pytest.mark.exactness
def test_streaming_stats_are_trimmed_at_eos():
    model = tiny_streaming()
    full = autoregressive_generate(model.base, PROMPT, 30).tokens.tolist()
    for index in range(1, 12):
        at, eos = first_new_token_at(full, index)
        for tree_nodes in (None, 4):
            out = streaming_generate(model, PROMPT, 30, eos_token_id=eos, tree_nodes=tree_nodes)
            s = out.stats
            assert out.tokens.tolist() == full[:at + 1]
            # each pass makes one token of its own beyond the drafts it accepted
            # (the last one none, when EOS was an accepted draft)
            own = len(out.tokens) - sum(s.accepted)
            assert own in (s.target_calls - 1, s.target_calls)
            assert len(s.decided_alpha) <= len(out.tokens)


@pytest.mark.parametrize("eos", [-1, 96, 2.0, True, [], [3, 1000], "1"])
def test_bad_eos_token_id(eos):
    target = tiny_model("llama")
    with pytest.raises(ValueError, match=r"eos_token_id must be a token id in \[0, 96\)"):
        autoregressive_generate(target, PROMPT, 5, eos_token_id=eos)
    with pytest.raises(ValueError, match="eos_token_id"):
        speculative_generate(target, target, PROMPT, 5, eos_token_id=eos)


@pytest.mark.exactness
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_recorded_target_logits_are_a_fresh_target_pass(arch):
    """Row i predicted new token i: under greedy it argmaxes to it, and it equals
    the logits of one full target pass over prompt + output."""
    target = tiny_model(arch)
    out = speculative_generate(target, noisy_copy(target, 0.4), PROMPT, 24, draft_len_policy="constant", draft_len=3,
                               record_target_logits=True)
    logits = out.stats.target_logits  # (N, V)
    assert logits.shape == (len(out.tokens), 96)
    assert torch.equal(logits.argmax(-1), out.tokens)
    with torch.no_grad():
        full = target(torch.cat([PROMPT[0], out.tokens])[None]).logits[0]  # (T + N, V)
    fresh = full[PROMPT.shape[1] - 1:-1]  # the rows that predicted each new token
    torch.testing.assert_close(logits, fresh, rtol=1e-4, atol=1e-4)
