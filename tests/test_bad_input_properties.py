"""Property-based: for any arguments, good or careless, a public function either
returns a valid result or raises ``ValueError``/``TypeError`` naming an
offending argument. Never NaN output, never a silent coercion, never a bare
torch or Python error.

Each test states, independently of ``osd_lab.checks``, which arguments are
acceptable; a call with only acceptable arguments must succeed with a valid
result, and a call with any other must raise, naming one of the others.
"""

import math
import numbers
import re
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis is a test extra (make test installs it; "
                    "make test-min does not)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import TINY_VOCAB, noisy_copy, tiny_model
from osd_lab.cost import expected_tokens_per_step, optimal_draft_len, speedup
from osd_lab.dashboard import check_settings
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.distill import distill
from osd_lab.divergences import DIVERGENCES, token_divergence
from osd_lab.online import (STREAMS, LearnedRouter, OnlineConfig, OnlineSpeculativeDecoder,
                            make_stream)
from osd_lab.sampling import logits_to_probs, sample, set_seed
from osd_lab.verify import overlap, residual_distribution, verify

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=25)  # calls that run a model
TALLY = Counter()  # calls made, and how many had a bad argument (printed with -s)


# -----------------------------------------------------------------------------
# what "acceptable" means, written out here, not imported

def is_int(value, low=None, high=None):
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def is_real(value, low=None, high=None, low_open=False, high_open=False):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value)
            and (low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))


def check_outcome(call, arguments, valid, may_refuse=()):
    """``arguments``: ``{name: acceptable?}``. Run ``call``: with a bad argument
    it must raise naming one; with none, return what ``valid`` accepts (or raise
    naming one of ``may_refuse``, for data-dependent limits)."""
    bad = [name for name, ok in arguments.items() if not ok]
    TALLY["calls"] += 1
    TALLY["bad calls"] += bool(bad)
    try:
        result = call()
    except (ValueError, TypeError) as err:
        named = bad or list(may_refuse)
        assert named, f"good arguments refused: {err}"
        assert any(re.search(rf"(?<![\w-]){re.escape(n)}(?!\w)", str(err)) for n in named), \
            f"the message names none of {named}: {err}"
        return
    assert not bad, f"bad {bad} accepted silently, returned {result!r}"
    valid(result)


def is_distribution(probs, shape):
    assert probs.shape == shape and probs.dtype == torch.float32
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(shape[:-1]), atol=1e-4)


def are_tokens(tokens, shape, vocab):
    assert tokens.shape == shape and tokens.dtype == torch.long
    assert ((tokens >= 0) & (tokens < vocab)).all()


# -----------------------------------------------------------------------------
# strategies: careless values of every kind

NAN, INF = float("nan"), float("inf")
ODD = [None, "1", [1], True, False, NAN, INF, -INF, 2.0, 1.5, np.int64(2), np.float32(0.5)]
numbers_any = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 1e-40, 1e-50, 1e-320, 1e300] + ODD),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 10))
ints_any = st.one_of(st.integers(-3, 12), st.sampled_from(ODD))


def tensor_from(kind, seed, shape):
    """A tensor of ``shape``, valid or broken in one way (``kind``)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "empty last dim":
        return torch.zeros(*shape[:-1], 0)
    if kind == "ints":
        return torch.randint(0, 5, shape, generator=gen)
    if kind == "list":
        return torch.rand(shape, generator=gen).tolist()
    scale = {"huge": 1e30, "large": 1e4}.get(kind, 3.0)
    logits = scale * torch.randn(shape, generator=gen)
    if kind == "nan":
        logits.view(-1)[0] = NAN
    if kind == "inf":
        logits.view(-1)[-1] = INF
    return logits


logits_kinds = st.sampled_from(["normal", "large", "huge", "nan", "inf", "ints", "list",
                                "empty last dim"])
seeds = st.integers(0, 2**16)


def probs_from(kind, seed, shape):
    """Probabilities of ``shape``, valid or broken in one way (``kind``)."""
    if kind in ("ints", "list", "empty last dim"):
        return tensor_from(kind, seed, shape)
    probs = torch.softmax(tensor_from("normal", seed, shape), -1)
    if kind == "unnormalised":
        return probs * 2
    if kind == "negative":  # still summing to 1
        probs[..., 1] += probs[..., 0] + 0.1
        probs[..., 0] = -0.1
    if kind == "nan":
        probs.view(-1)[0] = NAN
    if kind == "one-hot":  # greedy: valid
        probs = torch.nn.functional.one_hot(probs.argmax(-1), shape[-1]).float()
    return probs


probs_kinds = st.sampled_from(["valid", "one-hot", "unnormalised", "negative", "nan", "ints",
                               "list", "empty last dim"])
GOOD_PROBS = ("valid", "one-hot")


# -----------------------------------------------------------------------------
# sampling and verification

@FAST
@given(kind=logits_kinds, seed=seeds, temperature=numbers_any, top_k=ints_any,
       top_p=numbers_any)
@example(kind="normal", seed=0, temperature=1e-40, top_k=0, top_p=1.0)  # issue 13: NaN
@example(kind="huge", seed=0, temperature=1e-320, top_k=3, top_p=1.0)
@example(kind="normal", seed=0, temperature=1.0, top_k=0, top_p=1e-50)  # issue 13: NaN
@example(kind="normal", seed=0, temperature=2.0, top_k=2.0, top_p=1.0)  # 2.0 is no integer
def test_logits_to_probs(kind, seed, temperature, top_k, top_p):
    logits = tensor_from(kind, seed, (2, 7))
    check_outcome(lambda: logits_to_probs(logits, temperature, top_k, top_p),
                  {"logits": kind in ("normal", "large", "huge"),
                   "temperature": is_real(temperature, low=0),
                   "top_k": is_int(top_k, low=0),
                   "top_p": is_real(top_p, 0, 1, low_open=True)},
                  lambda probs: is_distribution(probs, (2, 7)))


@FAST
@given(kind=probs_kinds, seed=seeds, generator=st.sampled_from(["none", "cpu", "not one"]))
def test_sample(kind, seed, generator):
    probs = probs_from(kind, seed, (3, 6))
    gen = {"none": None, "cpu": torch.Generator().manual_seed(seed), "not one": 7}[generator]
    check_outcome(lambda: sample(probs, gen),
                  {"probs": kind in GOOD_PROBS, "generator": generator != "not one"},
                  lambda tokens: are_tokens(tokens, (3,), 6))


@FAST
@given(p_kind=probs_kinds, q_kind=probs_kinds, seed=seeds, same_shape=st.booleans())
def test_overlap_and_residual(p_kind, q_kind, seed, same_shape):
    p = probs_from(p_kind, seed, (2, 5))
    q = probs_from(q_kind, seed + 1, (2, 5) if same_shape else (2, 6))
    arguments = {"p": p_kind in GOOD_PROBS, "q": q_kind in GOOD_PROBS and same_shape}

    def is_alpha(alpha):
        assert alpha.shape == (2,) and torch.isfinite(alpha).all()
        assert ((alpha >= 0) & (alpha <= 1 + 1e-5)).all()

    check_outcome(lambda: overlap(p, q), arguments, is_alpha)
    check_outcome(lambda: residual_distribution(p, q), arguments,
                  lambda r: is_distribution(r, (2, 5)))


@FAST
@given(p_kind=probs_kinds, q_kind=probs_kinds, seed=seeds,
       tokens=st.sampled_from(["valid", "out of range", "negative", "floats", "wrong shape"]))
def test_verify(p_kind, q_kind, seed, tokens):
    batch, gamma, vocab = 2, 3, 6
    p = probs_from(p_kind, seed, (batch, gamma + 1, vocab))
    q = probs_from(q_kind, seed + 1, (batch, gamma, vocab))
    draft_tokens = {"valid": torch.randint(0, vocab, (batch, gamma)),
                    "out of range": torch.full((batch, gamma), vocab),
                    "negative": torch.full((batch, gamma), -1),
                    "floats": torch.full((batch, gamma), 1.0),
                    "wrong shape": torch.zeros(batch, gamma + 1, dtype=torch.long)}[tokens]

    def is_verification(result):
        assert ((result.num_accepted >= 0) & (result.num_accepted <= gamma)).all()
        are_tokens(result.next_token, (batch,), vocab)
        assert torch.isfinite(result.accept_prob).all()

    check_outcome(lambda: verify(p, q, draft_tokens, torch.Generator().manual_seed(seed)),
                  {"p": p_kind in GOOD_PROBS, "q": q_kind in GOOD_PROBS,
                   "draft_tokens": tokens == "valid"}, is_verification)


@FAST
@given(seed=st.one_of(st.integers(-2, 2**32 + 1), st.sampled_from(ODD)))
def test_set_seed(seed):
    check_outcome(lambda: set_seed(seed), {"seed": is_int(seed, 0, 2**32 - 1)},
                  lambda result: None)


# -----------------------------------------------------------------------------
# the cost model and the divergences

@FAST
@given(alpha=numbers_any, draft_len=st.one_of(st.integers(-2, 10**6), st.sampled_from(ODD)),
       cost_ratio=numbers_any, max_draft_len=ints_any)
def test_cost_model(alpha, draft_len, cost_ratio, max_draft_len):
    good_alpha, good_ratio = is_real(alpha, 0, 1), is_real(cost_ratio, low=0)

    def is_positive_number(value):
        assert math.isfinite(value) and value > 0

    check_outcome(lambda: expected_tokens_per_step(alpha, draft_len),
                  {"alpha": good_alpha, "draft_len": is_int(draft_len, low=0)},
                  is_positive_number)
    check_outcome(lambda: speedup(alpha, draft_len, cost_ratio),
                  {"alpha": good_alpha, "draft_len": is_int(draft_len, low=0),
                   "cost_ratio": good_ratio}, is_positive_number)
    check_outcome(lambda: optimal_draft_len(alpha, cost_ratio, max_draft_len),
                  {"alpha": good_alpha, "cost_ratio": good_ratio,
                   "max_draft_len": is_int(max_draft_len, 1, 1024)},
                  lambda best: is_int(best, 1, max_draft_len) or pytest.fail(best))


@FAST
@given(kind=st.sampled_from(DIVERGENCES + ("kl", "", None, 1)),
       target_kind=st.sampled_from(["normal", "large", "huge", "ints", "list"]),
       draft_kind=st.sampled_from(["normal", "large", "ints"]), seed=seeds,
       same_shape=st.booleans(), temperature=numbers_any, beta=numbers_any)
def test_divergences(kind, target_kind, draft_kind, seed, same_shape, temperature, beta):
    """Finite logits here: NaN or inf logits give NaN by design (the training
    loops skip such a step; see test_distill and test_online)."""
    target_logits = tensor_from(target_kind, seed, (2, 5))
    draft_logits = tensor_from(draft_kind, seed + 1, (2, 5) if same_shape else (2, 4))

    def is_divergence(values):
        assert values.shape == (2,) and torch.isfinite(values).all() and (values >= -1e-4).all()

    # a temperature so small that the logits overflow float32 may be refused, by name
    check_outcome(lambda: token_divergence(kind, target_logits, draft_logits, temperature, beta),
                  {"kind": kind in DIVERGENCES,
                   "target_logits": target_kind in ("normal", "large", "huge"),
                   "draft_logits": draft_kind in ("normal", "large") and same_shape,
                   "temperature": is_real(temperature, low=0, low_open=True),
                   "beta": kind != "jsd" or is_real(beta, 0, 1, True, True)},
                  is_divergence, may_refuse=("temperature",))


# -----------------------------------------------------------------------------
# decoding with tiny models

@pytest.fixture(scope="module")
def models():
    target = tiny_model("llama", layers=1)
    return target, noisy_copy(target, 0.5)


prompts_any = st.one_of(
    st.lists(st.integers(-2, TINY_VOCAB + 2), max_size=5),
    st.lists(st.sampled_from([1.0, 2.5, 3.0]), min_size=1, max_size=3),
    st.sampled_from(["tensor", "float tensor", "2 rows", "(1, T)", "text", None]))
eos_any = st.one_of(st.none(), st.integers(-1, TINY_VOCAB),
                    st.lists(st.integers(0, 99), max_size=2),
                    st.sampled_from([2.0, True, "1"]))


def prompt_from(spec):
    """The prompt a strategy value names, and whether it is acceptable."""
    if isinstance(spec, list):
        ok = len(spec) > 0 and all(is_int(i, 0, TINY_VOCAB - 1) for i in spec)
        return spec, ok
    prompt = {"tensor": torch.tensor([3, 4, 5]), "float tensor": torch.tensor([3.0, 4.0]),
              "2 rows": torch.ones(2, 3, dtype=torch.long),
              "(1, T)": torch.tensor([[3, 4]]), "text": "SELECT", None: None}[spec]
    return prompt, spec in ("tensor", "(1, T)")


def is_eos(eos, vocab):
    ids = eos if isinstance(eos, list) else [eos]
    return eos is None or (len(ids) > 0 and all(is_int(i, 0, vocab - 1) for i in ids))


@SLOW
@given(prompt=prompts_any, max_new_tokens=st.one_of(st.integers(-1, 6), st.sampled_from(ODD)),
       temperature=numbers_any, top_k=ints_any, eos=eos_any, use_cache=st.sampled_from(
           [True, False, 1, "no"]))
def test_autoregressive_generate(models, prompt, max_new_tokens, temperature, top_k, eos,
                                 use_cache):
    prompt, prompt_ok = prompt_from(prompt)
    generator = torch.Generator().manual_seed(0)

    def is_output(out):
        assert 1 <= len(out.tokens) <= max_new_tokens
        are_tokens(out.tokens, out.tokens.shape, TINY_VOCAB)

    check_outcome(lambda: autoregressive_generate(models[0], prompt, max_new_tokens,
                                                  temperature=temperature, top_k=top_k,
                                                  eos_token_id=eos, generator=generator,
                                                  use_cache=use_cache),
                  {"input_ids": prompt_ok, "max_new_tokens": is_int(max_new_tokens, low=1),
                   "temperature": is_real(temperature, low=0), "top_k": is_int(top_k, low=0),
                   "eos_token_id": is_eos(eos, TINY_VOCAB),
                   "use_cache": use_cache in (True, False) and isinstance(use_cache, bool)},
                  is_output)


@SLOW
@given(prompt=prompts_any, max_new_tokens=st.one_of(st.integers(-1, 6), st.sampled_from(ODD)),
       draft_len=ints_any, temperature=numbers_any, top_p=numbers_any,
       vocab_size=st.one_of(st.none(), st.integers(-1, TINY_VOCAB + 1), st.sampled_from(ODD)),
       policy=st.sampled_from(["constant", "heuristic", "magic", None]), eos=eos_any)
def test_speculative_generate(models, prompt, max_new_tokens, draft_len, temperature, top_p,
                              vocab_size, policy, eos):
    prompt, prompt_ok = prompt_from(prompt)
    shared = TINY_VOCAB if vocab_size is None else vocab_size

    def is_output(out):
        assert 1 <= len(out.tokens) <= max_new_tokens
        are_tokens(out.tokens, out.tokens.shape, shared)
        assert all(0 <= a <= 1 + 1e-5 for a in out.stats.decided_alpha)

    check_outcome(lambda: speculative_generate(*models, prompt, max_new_tokens,
                                               draft_len=draft_len, temperature=temperature,
                                               top_p=top_p, eos_token_id=eos,
                                               draft_len_policy=policy, vocab_size=vocab_size,
                                               generator=torch.Generator().manual_seed(0)),
                  {"input_ids": prompt_ok, "max_new_tokens": is_int(max_new_tokens, low=1),
                   "draft_len": is_int(draft_len, low=1),
                   "temperature": is_real(temperature, low=0),
                   "top_p": is_real(top_p, 0, 1, low_open=True),
                   "vocab_size": vocab_size is None or is_int(vocab_size, 1, TINY_VOCAB),
                   "draft_len_policy": policy in ("constant", "heuristic"),
                   "eos_token_id": is_eos(eos, shared if is_int(shared, 1) else 1)},
                  is_output)


# -----------------------------------------------------------------------------
# training and serving settings

@SLOW
@given(loss=st.sampled_from(DIVERGENCES + ("kl",)), data=st.sampled_from(
           ("fixed", "target", "draft", "mixed", "web")),
       steps=st.one_of(st.integers(-1, 2), st.sampled_from(ODD)), lr=numbers_any,
       batch_size=st.one_of(st.integers(-1, 2), st.sampled_from(ODD)), mix_ratio=numbers_any,
       temperature=numbers_any, max_new_tokens=st.one_of(st.integers(-1, 3),
                                                        st.sampled_from(ODD)))
def test_distill_settings(models, loss, data, steps, lr, batch_size, mix_ratio, temperature,
                          max_new_tokens):
    target, draft = models[0], noisy_copy(models[0], 0.5)
    prompts = [torch.tensor([3, 4, 5]), torch.tensor([6, 7])]

    def is_history(history):
        assert len(history["loss"]) + len(history["skipped"]) == steps
        assert all(math.isfinite(v) for v in history["loss"])
        assert all(torch.isfinite(p).all() for p in draft.parameters())

    check_outcome(lambda: distill(target, draft, prompts, loss=loss, data=data, steps=steps,
                                  lr=lr, batch_size=batch_size, mix_ratio=mix_ratio,
                                  temperature=temperature, max_new_tokens=max_new_tokens,
                                  progress=False),
                  {"loss": loss in DIVERGENCES, "data": data != "web",
                   "steps": is_int(steps, low=0), "lr": is_real(lr, low=0, low_open=True),
                   "batch_size": is_int(batch_size, low=1),
                   "mix_ratio": is_real(mix_ratio, 0, 1),
                   "temperature": is_real(temperature, low=0, low_open=True),
                   "max_new_tokens": is_int(max_new_tokens, low=1)},
                  is_history, may_refuse=("temperature",))


@FAST
@given(update_interval=ints_any, buffer_size=ints_any, draft_len=ints_any, lr=numbers_any,
       max_new_tokens=ints_any, temperature=numbers_any, keep_fraction=numbers_any,
       loss=st.sampled_from(DIVERGENCES + ("mse",)), seed=ints_any)
def test_online_decoder_settings(models, update_interval, buffer_size, draft_len, lr,
                                 max_new_tokens, temperature, keep_fraction, loss, seed):
    check_outcome(lambda: OnlineSpeculativeDecoder(
        *models, tokenizer=None,
        config=OnlineConfig(update_interval=update_interval, buffer_size=buffer_size,
                            draft_len=draft_len, lr=lr, max_new_tokens=max_new_tokens,
                            temperature=temperature, keep_fraction=keep_fraction, loss=loss,
                            seed=seed)),
                  {"update_interval": is_int(update_interval, low=1),
                   "buffer_size": is_int(buffer_size, low=1),
                   "draft_len": is_int(draft_len, low=1),
                   "lr": is_real(lr, 0, 1, low_open=True),
                   "max_new_tokens": is_int(max_new_tokens, low=2),
                   "temperature": is_real(temperature, low=0),
                   "keep_fraction": keep_fraction is None or is_real(keep_fraction, 0, 1, True),
                   "loss": loss in DIVERGENCES, "seed": is_int(seed, low=0)},
                  lambda decoder: None)


@FAST
@given(kind=st.sampled_from(STREAMS + ("tidal", None)),
       num_queries=st.one_of(st.integers(-2, 40), st.sampled_from(ODD)), seed=ints_any,
       vocab_size=ints_any, min_confidence=numbers_any)
def test_streams_and_routers(kind, num_queries, seed, vocab_size, min_confidence):
    prompts = {"sql": ["SELECT 1"], "math": ["1 + 1"]}

    def is_stream(stream):
        assert len(stream) == num_queries and all(p in prompts[d] for d, p in stream)

    check_outcome(lambda: make_stream(kind, prompts, num_queries, seed=seed),
                  {"stream": kind in STREAMS, "num_queries": is_int(num_queries, low=1),
                   "seed": is_int(seed, low=0)}, is_stream)
    check_outcome(lambda: LearnedRouter(("sql", "math"), "sql", vocab_size,
                                        min_confidence=min_confidence, seed=seed),
                  {"vocab_size": is_int(vocab_size, low=1),
                   "min_confidence": is_real(min_confidence, 0, 1),
                   "seed": is_int(seed, low=0)}, lambda router: None)


@FAST
@given(draft_len=ints_any, update_interval=st.one_of(st.integers(0, 70), st.sampled_from(ODD)),
       temperature=numbers_any, loss=st.sampled_from(DIVERGENCES + ("l2",)),
       stream=st.sampled_from(STREAMS + ("calm",)),
       queries=st.one_of(st.integers(-1, 1200), st.sampled_from(ODD)))
def test_dashboard_settings(draft_len, update_interval, temperature, loss, stream, queries):
    check_outcome(lambda: check_settings(draft_len, update_interval, temperature, loss, stream,
                                         queries),
                  {"draft_len": is_int(draft_len, 1, 16),
                   "update_interval": is_int(update_interval, 1, 64),
                   "temperature": is_real(temperature, 0, 2), "loss": loss in DIVERGENCES,
                   "stream": stream in STREAMS, "queries": is_int(queries, 1, 1000)},
                  lambda result: None)


def test_tally():
    """Runs last in this file: how many calls the properties made (see with -s)."""
    print(f"\nbad-input properties: {TALLY['calls']} calls, {TALLY['bad calls']} with a bad "
          f"argument")
