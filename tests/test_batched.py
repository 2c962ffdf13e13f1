"""Batched speculative decoding (BASS): exact per row, isolated rows, bad input."""

import pytest
import torch
from transformers import AutoTokenizer

from conftest import (ARCHITECTURES, chi_square_p_value, exact_target_distribution, noisy_copy,
                      tiny_model)
from osd_lab.__main__ import main
from osd_lab.batched import batched_autoregressive_generate, batched_speculative_generate
from osd_lab.decoding import autoregressive_generate
from osd_lab.models import ZOO_DIR
from osd_lab.online import OnlineConfig, OnlineSpeculativeDecoder, OracleRouter
from osd_lab.policies import BASS_LIMIT, BASS_START, bass_draft_len

LENGTHS = (1, 6, 11, 3, 9)  # mixed prompt lengths, one of a single token


def random_prompts(lengths, seed=0, vocab=96):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=gen) for n in lengths]


def greedy(model, prompts, max_new_tokens, eos_token_id=None):
    return [autoregressive_generate(model, p, max_new_tokens, eos_token_id=eos_token_id).tokens
            for p in prompts]


def assert_rows_equal(expected, actual):
    assert len(expected) == len(actual)
    for row, (e, a) in enumerate(zip(expected, actual)):
        assert torch.equal(e, a), (row, e.tolist(), a.tolist())


@pytest.mark.exactness
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_rows_equal_their_own_greedy_output_tiny(arch):
    target = tiny_model(arch)
    draft = noisy_copy(target, 0.2)
    prompts = random_prompts(LENGTHS)
    free = greedy(target, prompts, 16)
    eos = int(free[1][4])  # some rows stop early, at different positions
    expected = greedy(target, prompts, 16, eos_token_id=eos)
    assert len({len(e) for e in expected}) > 1
    assert_rows_equal(expected, batched_autoregressive_generate(
        target, prompts, 16, eos_token_id=eos).tokens)
    for policy, draft_len in (("constant", 1), ("constant", 3), ("heuristic", 2), ("bass", None)):
        out = batched_speculative_generate(target, draft, prompts, 16, draft_len=draft_len,
                                           draft_len_policy=policy, eos_token_id=eos)
        assert_rows_equal(expected, out.tokens)
    assert max(n for seq in out.stats.sequences for n in seq.accepted) > 0


@pytest.mark.exactness
def test_greedy_rows_equal_their_own_greedy_output_zoo(zoo):
    from osd_lab.zoo.corpus import load_corpus
    corpus = load_corpus()
    texts = [corpus[d]["prompts"][i] for d in ("sql", "prose", "math") for i in (0, 1)]
    prompts = [zoo.tokenizer(t, return_tensors="pt").input_ids[0] for t in texts]
    eos = zoo.tokenizer.eos_token_id
    expected = greedy(zoo.target, prompts, 20, eos_token_id=eos)
    for policy in ("constant", "bass"):
        out = batched_speculative_generate(zoo.target, zoo.draft, prompts, 20,
                                           draft_len_policy=policy, eos_token_id=eos,
                                           vocab_size=zoo.vocab_size)
        assert_rows_equal(expected, out.tokens)
    sql, prose = out.stats.sequences[0], out.stats.sequences[2]
    assert sql.verified_alpha > prose.verified_alpha  # the draft's own domain


def test_one_row_cannot_change_another():
    target = tiny_model("gpt2")  # absolute positions: padding must not shift them
    draft = noisy_copy(target, 0.2)
    row = random_prompts([5])[0]
    outputs = [batched_speculative_generate(target, draft, [row, other], 12, draft_len=3).tokens[0]
               for other in random_prompts([1, 17, 40], seed=3)]
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_rows_near_the_context_end_stay_inside_it():
    target = tiny_model("gpt2")  # 128 absolute positions: one more is an index error
    prompts = random_prompts([118, 3])
    out = batched_speculative_generate(target, target, prompts, 10, draft_len=8)
    assert_rows_equal(greedy(target, prompts, 10), out.tokens)


def test_stats_and_finished_rows_leave_the_batch():
    target = tiny_model("llama")
    prompts = random_prompts(LENGTHS)
    # an identical draft accepts everything: BASS grows the draft length
    out = batched_speculative_generate(target, target, prompts, 30, draft_len_policy="bass")
    assert out.stats.draft_lens[:3] == [BASS_START, BASS_START + 2, BASS_START + 4]
    assert all(seq.verified_alpha == 1.0 for seq in out.stats.sequences)
    # rows of different lengths finish at different steps and leave the batch
    out = batched_speculative_generate(target, noisy_copy(target, 0.2), prompts, 10,
                                       draft_len=2)
    sizes = out.stats.batch_sizes
    assert sizes[0] == len(prompts) and sizes == sorted(sizes, reverse=True)
    assert out.stats.new_tokens == sum(len(t) for t in out.tokens) == 10 * len(prompts)
    assert out.stats.target_calls == len(sizes)
    for seq in out.stats.sequences:
        assert seq.new_tokens == 10 and seq.target_calls == len(seq.accepted)
        assert len(seq.decided_alpha) <= min(10, sum(seq.draft_lens))


def test_every_row_hits_eos_at_once_and_single_token_rows():
    target = tiny_model("qwen2")
    prompts = random_prompts([1, 1, 1])
    first = greedy(target, prompts[:1], 1)[0]
    prompts = [prompts[0]] * 3
    out = batched_speculative_generate(target, noisy_copy(target, 0.2), prompts, 8,
                                       draft_len=3, eos_token_id=int(first))
    assert [t.tolist() for t in out.tokens] == [first.tolist()] * 3
    assert out.stats.target_calls == 1


def test_bass_schedule():
    # full acceptance: +2 up to the limit; otherwise about a tenth less, more when repeated
    assert bass_draft_len(7, 7, False) == (9, False)
    assert bass_draft_len(31, 31, True) == (BASS_LIMIT, False)
    assert bass_draft_len(9, 3, False) == (8, True)  # ceil(9 / 10) = 1
    assert bass_draft_len(8, 3, True) == (6, True)  # 1 + 1 after a shrink
    assert bass_draft_len(25, 0, False) == (22, True)  # ceil(25 / 10) = 3
    assert bass_draft_len(1, 0, True) == (1, True)  # never below 1
    assert bass_draft_len(11, 10, True) == (10, True)  # nor below the best row's accepted
    assert bass_draft_len(9, 8, False) == (8, True)


@pytest.mark.exactness
def test_sampled_rows_are_distributed_as_target():
    """Chi-square (significance 0.001) on each row's first three tokens, two
    prompt lengths in one seeded batch."""
    vocab, length, copies = 4, 3, 1500
    target = tiny_model("llama", seed=0, vocab_size=vocab)
    draft = tiny_model("llama", seed=1, vocab_size=vocab, layers=1)  # a poor draft
    with torch.no_grad():  # soften the target so every sequence is possible
        target.get_output_embeddings().weight.mul_(0.08)
        draft.get_output_embeddings().weight.mul_(0.8)
    settings = dict(temperature=1.0, top_k=0, top_p=1.0)
    short, long = [0, 2], [3, 0, 2, 2, 3]
    prompts = [torch.tensor(short), torch.tensor(long)] * copies
    out = batched_speculative_generate(target, draft, prompts, length, draft_len=2,
                                       generator=torch.Generator().manual_seed(7), **settings)
    assert sum(seq.accepted[0] < 2 for seq in out.stats.sequences) > copies * 0.4
    for start, prompt in enumerate((short, long)):
        exact = exact_target_distribution(target, prompt, length, settings)
        counts = dict.fromkeys(exact, 0)
        for tokens in out.tokens[start::2]:
            counts[tuple(tokens.tolist())] += 1
        p_value = chi_square_p_value(exact, counts, copies)
        assert p_value > 0.001, (prompt, p_value)


def test_bad_input():
    target = tiny_model("llama")
    draft = noisy_copy(target)
    ok = random_prompts([3, 4])
    cases = [
        (dict(prompts=[]), "non-empty list"),
        (dict(prompts=ok[0]), "list of 1-D"),
        (dict(prompts=[ok[0], torch.tensor([], dtype=torch.long)]), "prompts[1]: empty prompt"),
        (dict(prompts=[ok[0], torch.zeros(120, dtype=torch.long)]), "prompts[1]: prompt (120"),
        (dict(prompts=[ok[0], ok[1].to("meta")]), "prompts[1] is on meta"),
        (dict(prompts=ok, draft_len=0), "draft_len"),
        (dict(prompts=ok, draft_len_policy="magic"), "draft_len_policy"),
        (dict(prompts=ok, max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=ok, temperature=-1), "temperature"),
    ]
    for kwargs, message in cases:
        kwargs = dict(max_new_tokens=10) | kwargs
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
            batched_speculative_generate(target, draft, **kwargs)
    with pytest.raises(ValueError, match="non-empty list"):
        batched_autoregressive_generate(target, [], 4)
    # a generator on another device than the models: refused before any work
    target_meta, draft_meta = tiny_model("llama").to("meta"), noisy_copy(target).to("meta")
    with pytest.raises(ValueError, match="generator is on cpu"):
        batched_speculative_generate(target_meta, draft_meta, [p.to("meta") for p in ok], 4,
                                     generator=torch.Generator())


# -----------------------------------------------------------------------------
# serving in batches

@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")


def test_serve_batch_splits_by_draft_and_records_per_row(tokenizer):
    target = tiny_model("llama", vocab_size=len(tokenizer))
    drafts = {"sql": noisy_copy(target, 0.5, seed=1), "math": noisy_copy(target, 0.5, seed=2)}
    decoder = OnlineSpeculativeDecoder(target, drafts, tokenizer,
                                       OnlineConfig(update_interval=2, max_new_tokens=8),
                                       router=OracleRouter(drafts, "sql"))
    prompts = ["SELECT name FROM", "Question: Ann has 3 apples.", "SELECT id FROM t WHERE",
               "def f(x):"]
    domains = ["sql", "math", "sql", "code"]
    texts = decoder.serve_batch(prompts, domains)
    h = decoder.history
    assert h["domain"] == domains and h["draft"] == ["sql", "math", "sql", "sql"]
    assert h["notes"][3] and "fallback" not in str(h["notes"][:3]) and h["notes"][0] is None
    assert len(decoder.buffers["sql"]) + len(decoder.buffers["math"]) >= 1
    for seq, prompt_len, kept in [*decoder.buffers["sql"], *decoder.buffers["math"]]:
        positions = len(kept.top_log_probs)  # a compact (top-k) distribution per token
        assert len(seq) > prompt_len and positions == len(seq) - prompt_len
    # 4 queries, interval 2: two updates fall due after the batch; the first trains
    # every draft with new queries, the second finds none left
    trained = [name for _, name, *_ in h["updates"]] + [name for _, name in h["skipped"]]
    assert sorted(trained) == sorted({name for name in h["draft"]})
    # greedy: the same texts as serving one query at a time
    single = OnlineSpeculativeDecoder(target, drafts, tokenizer,
                                      OnlineConfig(update_interval=100, max_new_tokens=8),
                                      router=OracleRouter(drafts, "sql"))
    assert texts == [single.serve(p, d) for p, d in zip(prompts, domains)]
    with pytest.raises(ValueError, match="at least one prompt"):
        decoder.serve_batch([])


def test_main_job_batch_size_flag_is_checked_first(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-size", "0"])
    assert exit_info.value.code == 2 and "--batch-size must be" in capsys.readouterr().err
