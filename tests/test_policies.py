"""Draft-length policies and stopping rules: exact under every choice, and
each does what it says (goodput switches a useless draft off and drafts deep
with a perfect one; stopping rules end blocks early)."""

import pytest
import torch

from conftest import (ARCHITECTURES, chi_square_p_value, exact_target_distribution, noisy_copy,
                      tiny_model)
from osd_lab.cost import SpeculationCosts
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.measure import measure_costs
from osd_lab.policies import GoodputPolicy, should_stop

FLAT = SpeculationCosts(0.1, (1.0, 1.05, 1.1, 1.15, 1.2))  # a cheap draft, a flat verify

CHOICES = [dict(draft_len_policy="goodput", costs=FLAT),
           dict(draft_len_policy="heuristic", stop_rule="confidence"),
           dict(draft_len_policy="goodput", costs=FLAT, stop_rule="entropy"),
           dict(draft_len_policy="constant", draft_len=5, stop_rule="confidence",
                stop_threshold=0.9)]


@pytest.mark.exactness
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_output_is_the_targets_under_every_policy(arch, device):
    target = tiny_model(arch, seed=0, device=device)
    drafts = (noisy_copy(target, 0.2, seed=1), tiny_model(arch, seed=5, layers=1, device=device))
    for seed in range(2):
        prompt = torch.randint(2, 90, (1, 3 + 4 * seed), generator=torch.Generator().manual_seed(seed))
        expected = autoregressive_generate(target, prompt, 24).tokens
        for draft in drafts:
            for kwargs in CHOICES:
                out = speculative_generate(target, draft, prompt, 24, **kwargs)
                assert torch.equal(out.tokens, expected), (seed, kwargs)


@pytest.mark.exactness
@pytest.mark.parametrize("kwargs", CHOICES[1:3])
def test_sampled_output_is_the_targets_under_goodput_and_stop_rules(kwargs, device):
    """Chi-square test at significance 0.001 on the first three tokens (seeded)."""
    vocab, length, runs = 4, 3, 2000
    target = tiny_model("llama", seed=0, vocab_size=vocab, device=device)
    draft = tiny_model("llama", seed=1, vocab_size=vocab, layers=1, device=device)
    with torch.no_grad():  # soften both so every sequence is possible and rules fire
        target.get_output_embeddings().weight.mul_(0.08)
        draft.get_output_embeddings().weight.mul_(0.8)
    settings = dict(temperature=1.0, top_k=0, top_p=1.0)
    exact = exact_target_distribution(target, [0, 2], length, settings)
    generator = torch.Generator(device=device).manual_seed(99)
    counts = dict.fromkeys(exact, 0)
    for _ in range(runs):
        out = speculative_generate(target, draft, [0, 2], length, generator=generator,
                                   **settings, **kwargs)
        counts[tuple(out.tokens.tolist())] += 1
    assert chi_square_p_value(exact, counts, runs) > 0.001


def test_goodput_switches_a_useless_draft_off_and_drafts_deep_with_a_perfect_one():
    target = tiny_model("llama", seed=0)
    useless = tiny_model("llama", seed=7, layers=1)
    prompt = [3, 4, 5]
    off = speculative_generate(target, useless, prompt, 40, draft_len_policy="goodput", costs=FLAT)
    assert off.stats.draft_lens.count(0) > len(off.stats.draft_lens) / 2
    deep = speculative_generate(target, target, prompt, 40, draft_len_policy="goodput", costs=FLAT)
    assert max(deep.stats.draft_lens) >= 8 and deep.stats.tau > 5


def test_goodput_policy_follows_alpha_and_costs():
    policy = GoodputPolicy(FLAT, alpha=0.9, max_draft_len=12)
    deep = policy.next_draft_len()
    policy.observe(drafted=40, accepted=0, decided_alpha=[0.0] * 40,
                   capped=False)  # the draft stopped matching
    assert policy.alpha < 0.01 and deep >= 4
    lens = [policy.next_draft_len() for _ in range(60)]
    ones = [i for i, n in enumerate(lens) if n]
    # the first probe RESUME_GAP (2) steps after drafting stopped, then after 4, 8, 16 plain steps
    assert ones == [1, 5, 13, 29] and set(lens) == {0, 1}
    fresh = GoodputPolicy(FLAT, alpha=0.0)  # never drafted: probes at once, then waits 16, 32
    lens = [fresh.next_draft_len() for _ in range(60)]
    assert [i for i, n in enumerate(lens) if n] == [0, 16, 48]
    assert (fresh.best_draft_len(), fresh.best_draft_len(alpha=0.9)) == (0, deep)
    state = vars(fresh).copy()
    fresh.best_draft_len()  # asks without probing: nothing changes
    assert vars(fresh) == state
    costly = GoodputPolicy(SpeculationCosts(0.9, (1.0, 2.0, 3.0)), alpha=0.7)
    assert costly.next_draft_len() == 0  # a draft as slow as the target never pays...
    assert not any(costly.next_draft_len() for _ in range(100))  # ... so it never probes
    assert costly.can_pay is False and policy.can_pay is True


def test_a_changed_draft_is_probed_again_soon():
    policy = GoodputPolicy(FLAT, alpha=0.0)
    lens = [policy.next_draft_len() for _ in range(60)]  # probes at 0, 16, 48: waits 64 now
    policy.draft_changed()  # an online update: the backed-off wait was another draft's
    lens = [policy.next_draft_len() for _ in range(10)]
    # 11 plain steps since the last probe, more than RESUME_GAP: it probes at once, then after 4
    assert [i for i, n in enumerate(lens) if n] == [0, 4]


def test_one_goodput_policy_carries_alpha_across_calls():
    target = tiny_model("llama", seed=0)
    policy = GoodputPolicy(FLAT, alpha=0.5)
    speculative_generate(target, target, [1, 2], 20, draft_len_policy=policy)
    assert policy.alpha > 0.9  # the target drafting for itself: alpha = 1


def test_stop_rules():
    sure = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    flat = torch.zeros(1, 4)
    token = torch.tensor([0])
    assert not should_stop("confidence", sure, token, 0.4)
    assert should_stop("confidence", flat, token, 0.4)  # p = 0.25
    assert not should_stop("entropy", sure, token, 0.4)
    assert should_stop("entropy", flat, token, 0.4)  # 1 - sqrt(0.4 ln 4) = 0.26
    target = tiny_model("llama", seed=0)
    draft = noisy_copy(target, 0.3, seed=2)
    out = speculative_generate(target, draft, [1, 2], 30, draft_len_policy="constant",
                               draft_len=6, stop_rule="confidence", stop_threshold=0.99)
    assert min(out.stats.draft_lens) < 6  # blocks ended early


def test_goodput_block_is_a_floor_for_the_stop_rule():
    """With goodput and a stopping rule, the rule only decides how far beyond
    goodput's own block: a draft that agrees always (the target itself) at
    costs where 8 tokens pay is never cut short, though the rule at threshold
    0.99 doubts every token of a random model."""
    target = tiny_model("llama", seed=0)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    costs = SpeculationCosts(0.1, (1.0,) * 9)
    policy = GoodputPolicy(costs, alpha=0.9, max_draft_len=8)
    out = speculative_generate(target, target, ids, 40, draft_len_policy=policy,
                               stop_rule="confidence", stop_threshold=0.99)
    assert out.stats.draft_lens[:3] == [8, 8, 8]
    assert torch.equal(out.tokens, autoregressive_generate(target, ids, 40).tokens)


def test_measured_costs_are_sane():
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=1, layers=1)
    costs = measure_costs(target, draft, repeats=1, cached=False)
    assert costs.verify[0] == 1.0 and len(costs.verify) == 17 and costs.draft_step > 0
    # measured, not forced to grow with n (on a CPU 3 tokens can cost more than 5)
    assert all(0 < v < float("inf") for v in costs.verify)
    assert measure_costs(target, draft) is measure_costs(target, draft)  # cached


@pytest.mark.parametrize("kwargs, message", [
    (dict(draft_len_policy="fastest"), "draft_len_policy must be one of"),
    (dict(stop_rule="doubt"), "stop_rule must be one of"),
    (dict(stop_rule="confidence", stop_threshold=1.5), "stop_threshold must be"),
    (dict(stop_rule="entropy", stop_threshold=float("nan")), "stop_threshold must be"),
    (dict(draft_len_policy="constant", costs=FLAT), "costs are read by the goodput policy"),
    (dict(draft_len_policy="goodput", costs=FLAT, draft_len=0), "draft_len must be"),
    (dict(draft_len_policy=GoodputPolicy(FLAT), draft_len=4), "leave them None"),
])
def test_bad_policy_settings_are_refused(kwargs, message):
    target = tiny_model("llama", seed=0)
    with pytest.raises(ValueError, match=message):
        speculative_generate(target, target, [0, 1], 5, **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: SpeculationCosts(-0.1, (1.0, 1.1)), "draft_step must be"),
    (lambda: SpeculationCosts(0.1, (2.0, 1.1)), "verify must start with 1.0"),
    (lambda: SpeculationCosts(0.1, (1.0, float("nan"))), r"verify\[1\] must be"),
    (lambda: SpeculationCosts(float("inf"), (1.0,)), "draft_step must be"),
    (lambda: GoodputPolicy(FLAT, alpha=1.2), "alpha must be"),
    (lambda: GoodputPolicy(FLAT, alpha=float("nan")), "alpha must be"),
    (lambda: GoodputPolicy(FLAT, max_draft_len=0), "max_draft_len must be"),
    (lambda: GoodputPolicy(FLAT, max_draft_len=10**9), r"max_draft_len must be .*\[1, 1024\]"),
    (lambda: GoodputPolicy(FLAT, smoothing=0), "smoothing must be"),
    (lambda: GoodputPolicy(FLAT, probe_every=0), "probe_every must be"),
    (lambda: GoodputPolicy((1.0, 2.0)), "costs must be SpeculationCosts"),
])
def test_bad_costs_and_policies_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_count_calls_counts_forward_passes_inside_generate():
    from osd_lab.timing import CountCalls
    target, draft = tiny_model("llama", seed=0), tiny_model("llama", seed=1, layers=1)
    ids = torch.tensor([[3, 4, 5]])
    with CountCalls(target=target, draft=draft) as calls:
        out = speculative_generate(target, draft, ids, 8, draft_len_policy="constant")
    # no prefill pass of its own: the first step's passes read the prompt
    assert calls == {"target": out.stats.target_calls, "draft": out.stats.draft_calls}
    with CountCalls(target=target) as calls:
        target.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert calls["target"] == 5
    target(ids)  # hooks removed on exit
    assert calls["target"] == 5


def test_goodput_with_a_stop_rule_drafts_deep_and_lets_the_rule_end_blocks():
    target = tiny_model("llama", seed=0)
    out = speculative_generate(target, target, [3, 4], 30, draft_len_policy="goodput",
                               costs=FLAT, draft_len=12, stop_rule="confidence",
                               stop_threshold=0.0)  # a rule that never fires
    assert out.stats.draft_lens[0] == 12  # the cap, not goodput's choice at alpha 0.5
