"""Speculative Streaming and the Medusa baseline: exactness, the mask, bad input."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import chi_square_p_value, tiny_model
from test_speculative import exact_target_distribution
from transformers import LlamaConfig, LlamaForCausalLM

from osd_lab.cache import forward, new_cache
from osd_lab.cost import SpeculationCosts
from osd_lab.decoding import autoregressive_generate
from osd_lab.medusa import MedusaHeads, MedusaModel, load_medusa_model
from osd_lab.streaming import (Streams, StreamingModel, ancestor_mask, draft_tree,
                               load_streaming_model, multi_stream_mask, save_weights,
                               stream_attention_mask, streaming_generate, tune_base)
from osd_lab.zoo.corpus import DOMAINS, load_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
from train_streams import future_ngram_loss  # noqa: E402


def tiny_streaming(gamma=3, layers=3, stream_layers=2, adapter_rank=2, seed=0):
    base = tiny_model("llama", layers=layers)
    torch.manual_seed(seed)
    streams = Streams(base, gamma, stream_layers, adapter_rank)
    with torch.no_grad():  # adapters start at zero; make them matter
        for adapter in streams.adapters.parameters():
            adapter.normal_(0, 0.3)
    return StreamingModel(base, streams).eval()


def tiny_medusa(gamma=3, seed=0):
    base = tiny_model("llama", layers=3)
    torch.manual_seed(seed)
    heads = MedusaHeads(base, gamma)
    with torch.no_grad():  # heads start at zero (the next-token head); make them differ
        for parameter in heads.parameters():
            parameter.normal_(0, 0.3)
    return MedusaModel(base, heads).eval()


def prompts(count, seed=0, vocab=96):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (int(torch.randint(1, 9, (1,), generator=gen)),),
                          generator=gen) for _ in range(count)]


# -----------------------------------------------------------------------------
# the mask


def test_multi_stream_mask_matches_hand_written():
    """Two tokens, two streams: rows/columns main 0, main 1, s(0,1), s(0,2), s(1,1), s(1,2)."""
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # main 0: itself
        [1, 1, 0, 0, 0, 0],  # main 1: main 0 and itself, never a stream
        [1, 0, 1, 0, 0, 0],  # stream 1 of token 0: main 0, itself
        [1, 0, 1, 1, 0, 0],  # stream 2 of token 0: main 0, stream 1 of token 0, itself
        [1, 1, 0, 0, 1, 0],  # stream 1 of token 1: main 0..1, itself
        [1, 1, 0, 0, 1, 1],  # stream 2 of token 1: main 0..1, its stream 1, itself
    ], dtype=torch.bool)
    assert torch.equal(multi_stream_mask(2, 2), expected)


def test_stream_mask_with_a_cache_and_a_tree():
    # one cached token, then pending (0) with children 1 and 2
    tree = ancestor_mask([-1, 0, 0], past_len=1)
    assert tree.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    streams = stream_attention_mask(tree, gamma=1)  # node 2's stream sees node 2, not 1
    assert streams.int().tolist() == [[1, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 0, 1, 0],
                                      [1, 1, 0, 1, 0, 0, 1]]


def test_draft_tree_keeps_the_best_paths_parents_first():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]))
    tokens, parents, depths = draft_tree(logits, tree_width=2, tree_nodes=3)
    # scores: 0 -> 0.6, 1 -> 0.3, 0.0 -> 0.30, 0.1 -> 0.24: keep 0, 1 (depth 1), 0.0
    assert tokens.tolist() == [0, 1, 0]
    assert parents.tolist() == [0, 0, 1]
    assert depths.tolist() == [1, 1, 2]


# -----------------------------------------------------------------------------
# exactness on tiny models


@pytest.mark.exactness
def test_main_stream_is_the_base_model_bit_for_bit():
    model = tiny_streaming()
    ids = prompts(1)[0][None]
    cache, base_cache = new_cache(model.base), new_cache(model.base)
    for chunk in (ids, torch.tensor([[5, 6, 7]]), torch.tensor([[9]])):
        main_logits, _ = model(chunk, cache)
        assert torch.equal(main_logits, forward(model.base, chunk, base_cache).logits)


@pytest.mark.exactness
def test_streams_with_a_cache_equal_streams_in_one_pass():
    """The mask and the cached main keys give each stream the same inputs."""
    model = tiny_streaming()
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    with torch.no_grad():
        _, whole = model(ids, new_cache(model.base))  # (1, 6, gamma, V)
        cache = new_cache(model.base)
        _, first = model(ids[:, :4], cache)
        _, rest = model(ids[:, 4:], cache)
    cached = torch.cat([first, rest], dim=1)
    # a pass over 2 tokens and one over 6 multiply in different kernels (MKL: row
    # by row below 4 rows), so float32 sums differ in rounding (2e-5 seen on
    # transformers 5.0); the streams' choices must not
    torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.argmax(-1), whole.argmax(-1))


@pytest.mark.exactness
@pytest.mark.parametrize("make", [tiny_streaming, tiny_medusa], ids=["streams", "heads"])
@pytest.mark.parametrize("tree", [False, True])
def test_drafts_of_the_kept_token_alone_equal_those_of_the_whole_pass(make, tree):
    """Decoding runs the streams (heads) after verification for one token only:
    their drafts must be those the whole pass gives that token."""
    model = make()
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    mask = positions = None
    if tree:  # tokens 4 and 5 are both children of token 3
        mask = ancestor_mask([-1, 0, 1, 2, 3, 3])
        positions = (mask.sum(1) - 1)[None]
    with torch.no_grad():
        _, whole = model(ids, new_cache(model.base), mask, positions)  # (1, 6, gamma, V)
        cache = new_cache(model.base)
        main = model.main_pass(ids, cache, mask, positions)
        for token in range(6):
            alone = model.draft_logits(main, [token], cache)  # (1, 1, gamma, V)
            torch.testing.assert_close(alone[0, 0], whole[0, token], atol=1e-4, rtol=1e-4)
            assert torch.equal(alone[0, 0].argmax(-1), whole[0, token].argmax(-1))


@pytest.mark.exactness
@pytest.mark.parametrize("drafter, gamma", [("streams", 1), ("streams", 2), ("streams", 3),
                                            ("streams", 4), ("medusa", 3)])
@pytest.mark.parametrize("tree_nodes", [None, 5])
def test_greedy_equals_the_base_model_tiny(gamma, drafter, tree_nodes):
    streaming = tiny_streaming(gamma=gamma)
    model = streaming if drafter == "streams" else \
        MedusaModel(streaming.base, MedusaHeads(streaming.base, gamma))  # zero heads: t + 1
    for ids in prompts(3, seed=gamma):
        expected = autoregressive_generate(model.base, ids, 16).tokens
        out = streaming_generate(model, ids, 16, tree_nodes=tree_nodes)
        assert torch.equal(out.tokens, expected)
        assert out.stats.new_tokens == 16
        assert out.stats.target_calls == len(out.stats.accepted)


@pytest.mark.exactness
def test_eos_stops_and_is_kept():
    model = tiny_streaming()
    ids = prompts(1)[0]
    full = autoregressive_generate(model.base, ids, 12).tokens
    eos = int(full[5])
    expected = full[:int((full == eos).nonzero()[0]) + 1]
    for tree_nodes in (None, 4):
        out = streaming_generate(model, ids, 12, eos_token_id=eos, tree_nodes=tree_nodes)
        assert torch.equal(out.tokens, expected)


@pytest.mark.exactness
def test_sampled_output_is_distributed_as_the_base_model():
    """Chi-square at significance 0.001 on the first four tokens (seeded).

    With these settings the test catches a verifier that resamples rejections
    from p instead of the residual (p-value 0.0001).
    """
    vocab, length, runs = 2, 4, 600
    base = tiny_model("llama", seed=0, vocab_size=vocab)
    torch.manual_seed(1)
    streams = Streams(base, gamma=2, num_stream_layers=1, adapter_rank=2)
    with torch.no_grad():  # drafts far from the model: a wrong residual would show
        for adapter in streams.adapters.parameters():
            adapter.normal_(0, 1.0)
    model = StreamingModel(base, streams).eval()
    settings = dict(temperature=1.0, top_k=0, top_p=1.0)
    exact = exact_target_distribution(base, [0, 1], length, settings)
    gen = torch.Generator().manual_seed(1234)
    counts = dict.fromkeys(exact, 0)
    rejections = 0
    for _ in range(runs):
        out = streaming_generate(model, [0, 1], length, generator=gen,
                                 draft_len_policy="constant", **settings)
        counts[tuple(out.tokens.tolist())] += 1
        rejections += out.stats.accepted[1] < out.stats.draft_lens[1]
    assert rejections > runs * 0.1  # the residual path is exercised
    assert chi_square_p_value(exact, counts, runs) > 0.001


@pytest.mark.exactness
def test_streams_run_only_where_a_block_is_drafted():
    """Goodput on costs at which drafting never pays drafts nothing and never
    runs the streams; on free costs it drafts; greedy output is the model's."""
    model = tiny_streaming(gamma=3)
    calls = []
    run_streams = model.draft_logits
    model.draft_logits = lambda *args: calls.append(1) or run_streams(*args)
    ids = prompts(1)[0]
    expected = autoregressive_generate(model.base, ids, 12).tokens
    never = SpeculationCosts(0.0, (1.0, 9.0, 9.5, 10.0))  # 2 tokens cost 9 plain passes
    off = streaming_generate(model, ids, 12, costs=never)
    assert torch.equal(off.tokens, expected)
    assert sum(off.stats.draft_lens) == 0 and calls == []
    free = SpeculationCosts(0.0, (1.0, 1.0, 1.0, 1.0))
    on = streaming_generate(model, ids, 12, costs=free)
    assert torch.equal(on.tokens, expected)
    assert sum(on.stats.draft_lens) > 0
    assert len(calls) == sum(g > 0 for g in on.stats.draft_lens)  # once per drafted block


# -----------------------------------------------------------------------------
# training objective, saving, bad input


def test_future_ngram_loss_targets_token_t_plus_j_plus_1():
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    positions = torch.tensor([0, 2])
    logits = torch.full((1, 2, 2, 5), -30.0)  # (B, P, gamma, V)
    for p, t in enumerate(positions.tolist()):
        for j in (1, 2):
            if t + j + 1 < 5:
                logits[0, p, j - 1, t + j + 1] = 30.0  # the right answer, where it exists
    assert future_ngram_loss(logits, ids, positions).item() < 1e-6


def test_weights_round_trip_and_mismatch(tmp_path):
    model = tiny_streaming()
    save_weights(model.streams, tmp_path, model.base)
    loaded = load_streaming_model(tmp_path, base=model.base)
    for a, b in zip(model.streams.parameters(), loaded.streams.parameters()):
        torch.testing.assert_close(a.half().float(), b)
    wider = LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=64, vocab_size=96,
                                         num_hidden_layers=3, num_attention_heads=4))
    save_weights(Streams(wider, 3, 2, 2), tmp_path, wider)  # trained on another model
    with pytest.raises(ValueError, match="trained on another base model"):
        load_streaming_model(tmp_path, base=model.base)
    other = tiny_model("llama", seed=5, layers=3)  # the same shapes, other weights
    save_weights(Streams(other, 3, 2, 2), tmp_path, other)
    with pytest.raises(ValueError, match="trained on another base model"):
        load_streaming_model(tmp_path, base=model.base)


@pytest.mark.exactness
def test_jointly_tuned_streams_decode_exactly_as_the_tuned_model(tmp_path):
    """base_rank: the base's stream layers are fine-tuned with the streams (LoRA
    shared by the main stream); loaded, the main stream is the merged model,
    greedy output is its own, and the base passed in is left as it was."""
    base = tiny_model("llama", layers=3)
    torch.manual_seed(0)
    streams = Streams(base, 3, 2, adapter_rank=0, base_rank=2)
    with torch.no_grad():
        for parameter in streams.base_adapters.parameters():
            parameter.normal_(0, 0.3)
    before = [p.clone() for p in base.parameters()]
    tune_base(base, streams)  # training: W + B A, differentiable
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    tuned_logits, _ = StreamingModel(base, streams)(ids, new_cache(base))
    tuned_logits.sum().backward()
    assert all(p.grad is not None for p in streams.base_adapters.parameters())
    save_weights(streams, tmp_path, tiny_model("llama", layers=3))  # fingerprint: the untuned base
    fresh = tiny_model("llama", layers=3)
    loaded = load_streaming_model(tmp_path, base=fresh)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))  # untouched
    assert loaded.base is not fresh
    with torch.no_grad():
        main, _ = loaded(ids, new_cache(loaded.base))
    torch.testing.assert_close(main, tuned_logits.detach(), atol=2e-2, rtol=2e-2)  # float16 saved
    for prompt in prompts(3):
        expected = autoregressive_generate(loaded.base, prompt, 12).tokens
        assert torch.equal(streaming_generate(loaded, prompt, 12).tokens, expected)
        assert torch.equal(streaming_generate(loaded, prompt, 12, tree_nodes=4).tokens, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0), r"gamma \(the number of streams\) must be an integer >= 1"),
    (dict(gamma=2.5), r"gamma \(the number of streams\) must be an integer >= 1"),
    (dict(num_stream_layers=0), r"num_stream_layers must be an integer in \[1, 3\]"),
    (dict(num_stream_layers=4), r"num_stream_layers must be an integer in \[1, 3\]"),
    (dict(adapter_rank=-1), "adapter_rank must be an integer >= 0"),
    (dict(base_rank=-1), "base_rank must be an integer >= 0"),
    (dict(base_rank=1.5), "base_rank must be an integer >= 0"),
])
def test_bad_stream_settings(kwargs, message):
    settings = dict(gamma=2, num_stream_layers=1) | kwargs
    with pytest.raises(ValueError, match=message):
        Streams(tiny_model("llama", layers=3), **settings)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2"])
def test_unsupported_architecture(arch):
    with pytest.raises(ValueError, match=r"support model_type \('llama',\)"):
        Streams(tiny_model(arch), 2, 1)
    with pytest.raises(ValueError, match=r"support model_type \('llama',\)"):
        MedusaHeads(tiny_model(arch), 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(draft_len=0), r"draft_len must be an integer in \[1, 3\]"),
    (dict(draft_len=4), r"draft_len must be an integer in \[1, 3\]"),
    (dict(tree_nodes=0), "tree_nodes must be an integer >= 1"),
    (dict(tree_nodes=4, tree_width=0), "tree_width must be an integer in"),
    (dict(tree_nodes=4, temperature=1.0), "tree_nodes needs temperature=0"),
    (dict(temperature=-1.0), "temperature must be"),
    (dict(draft_len_policy="heuristic"), "draft_len_policy must be one of"),
    (dict(tree_nodes=4, draft_len_policy="goodput"), "a tree .* drafts its nodes every pass"),
    (dict(draft_len_policy="constant", costs=SpeculationCosts(0.0, (1.0, 1.2))),
     "costs are read by the goodput policy only"),
])
def test_bad_generate_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        streaming_generate(tiny_streaming(), [2, 3], 4, **kwargs)


# -----------------------------------------------------------------------------
# the zoo with its shipped streams and heads


@pytest.mark.exactness
def test_zoo_greedy_equals_the_target(zoo):
    streaming = load_streaming_model(base=zoo.target)
    medusa = load_medusa_model(base=zoo.target)
    corpus = load_corpus()
    accepted = 0
    # the streams were fine-tuned with the target: their model is a tuned copy
    assert streaming.base is not zoo.target and medusa.base is zoo.target
    assert any(not torch.equal(a, b)
               for a, b in zip(streaming.base.parameters(), zoo.target.parameters()))
    for domain in DOMAINS:
        ids = zoo.tokenizer(corpus[domain]["prompts"][0]).input_ids
        for model, kwargs in [(streaming, dict(draft_len=2)), (streaming, {}),
                              (streaming, dict(draft_len_policy="constant")),
                              (streaming, dict(tree_nodes=8)), (medusa, {})]:
            expected = autoregressive_generate(model.base, ids, 16).tokens
            out = streaming_generate(model, ids, 16, **kwargs)
            assert torch.equal(out.tokens, expected), (domain, kwargs)
            accepted += sum(out.stats.accepted)
    assert accepted > 0  # the trained drafts do get accepted


def test_zoo_streams_are_small(zoo):
    streaming = load_streaming_model(base=zoo.target)
    medusa = load_medusa_model(base=zoo.target)
    assert streaming.gamma == medusa.gamma
    assert streaming.extra_parameters() < medusa.extra_parameters()
