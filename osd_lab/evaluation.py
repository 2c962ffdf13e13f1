"""Evaluation, the one place for it: exact alpha over held-out prompts, and
the served speed of an online decoder with every cost counted.

* ``acceptance_rate``: exact alpha (sum_v min(p, q), over the positions
  verification decided) and tau of a pair over prompts, stopping at EOS.
* ``alpha_by_domain``: the same per domain.
* ``served_speed``: tokens served / (decoding + update time) over some
  queries of an ``OnlineSpeculativeDecoder``'s history, against
  autoregressive decoding of the same queries timed in the same run.
* ``speed_by_block``: ``served_speed`` per domain block of a stream, over
  the whole block and its last part, with its break-even and latencies.
* ``break_even``: after how many queries the served time so far fell below
  plain decoding's for good; ``latencies``: per-query p50 and p95, served
  and plain.

Used by the main job, the benchmarks, the dashboard and notebooks 04-07.
"""

import torch

from osd_lab.checks import check_float, check_int, check_prompt_list, check_seed
from osd_lab.decoding import speculative_generate
from osd_lab.step import MODEL_EOS


def acceptance_rate(target, draft, prompts, *, draft_len=4, temperature=0.0, max_new_tokens=32,
                    eos_token_id=MODEL_EOS, vocab_size=None, seed=0):
    """Exact alpha and tau (tokens per target call) of speculative decoding over
    ``prompts`` (each ``(T,)`` or ``(1, T)`` token ids), with a constant
    ``draft_len``, decoding each prompt until ``eos_token_id`` or
    ``max_new_tokens``: what comes after the end of a document is not the
    document's domain (default ``"model"``: the target's generation config;
    None measures past it). alpha is the mean of sum_v min(p, q) over the drafted
    positions that verification decided (the accepted ones and the first
    rejected one of each step); positions after a rejection sit on a prefix
    that is thrown away. max_new_tokens must be >= 2: with 1, nothing is drafted.
    """
    check_prompt_list("prompts", prompts, target.get_input_embeddings().num_embeddings,
                      one_row_ok=True)
    check_int("max_new_tokens", max_new_tokens, low=2)
    seed = check_seed(seed)
    generator = torch.Generator(device=target.device).manual_seed(seed)
    alphas, new_tokens, target_calls = [], 0, 0
    for prompt in prompts:
        out = speculative_generate(target, draft, prompt, max_new_tokens, draft_len=draft_len,
                                   draft_len_policy="constant", temperature=temperature,
                                   eos_token_id=eos_token_id, generator=generator,
                                   vocab_size=vocab_size)
        alphas += out.stats.decided_alpha
        new_tokens += out.stats.new_tokens
        target_calls += out.stats.target_calls
    return {"alpha": sum(alphas) / len(alphas), "tau": new_tokens / target_calls}


def alpha_by_domain(target, draft, prompts_by_domain: dict, **kwargs) -> dict:
    """``{domain: alpha}`` with ``acceptance_rate(target, draft, prompts, **kwargs)``."""
    return {domain: acceptance_rate(target, draft, prompts, **kwargs)["alpha"]
            for domain, prompts in prompts_by_domain.items()}


def served_speed(history: dict, queries=None) -> dict:
    """Served speed over ``queries`` (indices; default all) of an online
    decoder's ``history``, recorded with ``baseline=True``.

    Returns ``served_tps`` (tokens served / (decoding + update seconds)),
    ``baseline_tps`` (the same queries decoded autoregressively in the same
    run), ``speedup`` (their ratio), ``update_share`` (update seconds / all
    serving seconds) and ``queries`` (how many).
    """
    if not history.get("baseline_s"):
        raise ValueError("history has no baseline: serve with "
                         "OnlineSpeculativeDecoder(..., baseline=True)")
    queries = range(len(history["domain"])) if queries is None else list(queries)
    if not queries:
        raise ValueError("served_speed needs at least one query")
    decode = sum(history["latency_s"][i] for i in queries)
    update = sum(history["update_s"][i] for i in queries)
    served = sum(history["new_tokens"][i] for i in queries) / (decode + update)
    baseline = (sum(history["baseline_tokens"][i] for i in queries)
                / sum(history["baseline_s"][i] for i in queries))
    return dict(served_tps=served, baseline_tps=baseline, speedup=served / baseline,
                update_share=update / (decode + update), queries=len(queries))


def query_seconds(history: dict, i: int) -> float:
    """Query ``i``'s serving time: its decoding and the updates run after it
    (the server answers nothing while they run)."""
    return history["latency_s"][i] + history["update_s"][i]


def break_even(history: dict, queries) -> int | None:
    """How many of ``queries`` (indices, in order) were served before the
    serving time so far fell below plain decoding's for good: the first n from
    which it stays below up to the last query; None if it is not below then."""
    served = plain = 0.0
    first = None
    for n, i in enumerate(queries, start=1):
        served += query_seconds(history, i)
        plain += history["baseline_s"][i]
        first = (first or n) if served < plain else None
    return first


def latencies(history: dict, queries) -> dict:
    """Per-query latency in seconds over ``queries``: ``{"served": (p50, p95),
    "plain": (p50, p95)}``, served counting the updates run after a query."""
    levels = torch.tensor([0.5, 0.95], dtype=torch.float64)
    served = torch.tensor([query_seconds(history, i) for i in queries], dtype=torch.float64)
    plain = torch.tensor([history["baseline_s"][i] for i in queries], dtype=torch.float64)
    return {"served": tuple(served.quantile(levels).tolist()),
            "plain": tuple(plain.quantile(levels).tolist())}


def speed_by_block(history: dict, last_fraction: float = 1 / 3) -> dict:
    """``{domain: {"all": served_speed, "last": served_speed, "break_even": n,
    "latency": latencies, "queries": indices}}`` per domain block of a stream (a
    domain's queries, in order), "last" over the block's last ``last_fraction``
    of queries (at least one)."""
    check_float("last_fraction", last_fraction, 0, 1, low_open=True)
    blocks = {}
    for i, domain in enumerate(history["domain"]):
        blocks.setdefault(domain, []).append(i)
    return {domain: {"all": served_speed(history, queries),
                     "last": served_speed(history, queries[-max(1, round(len(queries)
                                                                         * last_fraction)):]),
                     "break_even": break_even(history, queries),
                     "latency": latencies(history, queries), "queries": queries}
            for domain, queries in blocks.items()}
