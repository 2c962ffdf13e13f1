"""The one speculative step: any drafter that keeps the protocol decodes
exactly, and the statistics mean one thing for every decoder."""

import pytest
import torch

from conftest import tiny_model
from osd_lab.decoding import CachedTarget, autoregressive_generate, speculative_generate
from osd_lab.policies import ConstantPolicy
from osd_lab.step import DecodingStats, Proposal, Sampler, decode, keep_tokens, verify_block

PROMPT = [3, 4, 5, 6, 3, 4, 5]


class PromptLookupDrafter:
    """Proposes the tokens that followed the last earlier occurrence of the
    newest token (prompt lookup decoding): no model, no distributions."""

    can_stop_early = False

    def __init__(self, prompt):
        self.sequence = list(prompt)

    def propose(self, block, room):
        depth = min(block.most, room)
        last = self.sequence[-1]
        earlier = [i for i, t in enumerate(self.sequence[:-1]) if t == last]
        guess = self.sequence[earlier[-1] + 1:][:depth] if earlier else []
        return Proposal(torch.tensor(guess, dtype=torch.long))

    def commit(self, proposal, path, num_accepted, next_token, target_output):
        self.sequence += proposal.tokens[:num_accepted].tolist() + next_token.tolist()


@pytest.mark.exactness
def test_a_drafter_of_its_own_decodes_exactly():
    target = tiny_model("llama", seed=0)
    expected = autoregressive_generate(target, PROMPT, 24, eos_token_id=None).tokens
    ids = torch.tensor([PROMPT])
    out = decode(CachedTarget(target, ids), PromptLookupDrafter(PROMPT), ConstantPolicy(4),
                 Sampler(), max_new_tokens=24, eos_ids=None)
    assert out.tokens.tolist() == expected.tolist()
    s = out.stats
    assert s.new_tokens == 24 and s.draft_calls == 0 and s.target_calls == len(s.accepted)
    assert len(out.tokens) == sum(s.accepted) + s.target_calls


@pytest.mark.exactness
def test_the_draft_model_drafter_is_the_default_call():
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=3, layers=1)
    out = speculative_generate(target, draft, PROMPT, 20, draft_len_policy="constant",
                               eos_token_id=None)
    expected = autoregressive_generate(target, PROMPT, 20, eos_token_id=None).tokens
    assert out.tokens.tolist() == expected.tolist()
    assert isinstance(out.stats, DecodingStats)


def test_record_stops_at_end_of_text():
    stats = DecodingStats()
    # 4 drafted, 3 accepted, but end-of-text was the second: 2 tokens kept
    stats.record(drafted=4, accepted=3, alpha=[1.0, 1.0, 1.0, 0.0], kept=2, position=5)
    assert stats.accepted == [2] and stats.decided_alpha == [1.0, 1.0]
    assert stats.corrections == []  # the rejection came after the end
    stats.record(drafted=3, accepted=1, alpha=[1.0, 0.0, 0.5], kept=2, position=7)
    assert stats.decided_alpha == [1.0, 1.0, 1.0, 0.0] and stats.corrections == [8]
    stats.record(drafted=0, accepted=0, alpha=[], kept=1, position=9)  # plain decoding
    assert stats.alpha == [[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.5]]
    assert stats.mean_acceptance_length == pytest.approx(1 + (2 + 1) / 2)  # drafting steps
    assert stats.acceptance_by_position == [1.0, 0.5, 0.0, 0.0]
    assert stats.verified_alpha == pytest.approx(0.75)


def test_keep_tokens_cuts_at_eos_and_at_the_limit():
    drafted = torch.tensor([7, 2, 9])
    tokens, done = keep_tokens(drafted, 3, torch.tensor([5]), torch.tensor([2]), left=10)
    assert tokens.tolist() == [7, 2] and done
    tokens, done = keep_tokens(drafted, 3, torch.tensor([5]), None, left=3)
    assert tokens.tolist() == [7, 2, 9] and done
    tokens, done = keep_tokens(drafted, 1, torch.tensor([5]), None, left=10)
    assert tokens.tolist() == [7, 5] and not done


def test_verify_block_greedy_keeps_the_agreeing_prefix_per_row():
    logits = torch.full((2, 4, 8), -5.0)
    logits[0, [0, 1, 2, 3], [1, 2, 3, 4]] = 5.0  # row 0: the target says 1, 2, 3, 4
    logits[1, [0, 1, 2, 3], [1, 6, 3, 4]] = 5.0  # row 1: 1, then 6
    drafted = torch.tensor([[1, 2, 3], [1, 2, 3]])
    verdict = verify_block(Sampler(), logits, drafted)
    assert verdict.num_accepted.tolist() == [3, 1] and verdict.next_token.tolist() == [4, 6]
    assert verdict.alpha.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
