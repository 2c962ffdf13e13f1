"""Autoregressive and speculative decoding, both with KV caches.

* ``autoregressive_generate``: one forward pass per new token. With the cache,
  each pass feeds only the newest token and attends to the keys and values
  stored for the prefix; without it, each pass re-reads the whole sequence.
  Taught in ``notebooks/01_sampling_and_kv_cache``.
* ``speculative_generate``: a draft proposes ``draft_len`` tokens, the target
  scores them all in one pass, ``verify`` keeps a prefix of them, and both
  caches are cropped back to what was kept. Taught in
  ``notebooks/02_speculative_decoding`` and ``03_when_is_it_fast``.
"""

import torch
from transformers import PreTrainedModel

from osd_lab.cache import forward, new_cache, rollback
from osd_lab.checks import check_choice, check_generator, check_int, check_token_ids
from osd_lab.cost import MAX_DRAFT_LEN, SpeculationCosts
from osd_lab.measure import measure_costs
from osd_lab.models import context_length, output_vocab_size
from osd_lab.policies import (DEFAULT_DRAFT_LEN_POLICY, DRAFT_LEN_POLICIES, STOP_THRESHOLD,
                              ConstantPolicy, GoodputPolicy, HeuristicPolicy, check_stop_rule,
                              should_stop)
from osd_lab.sampling import check_sampling_args, check_top_logits
from osd_lab.step import (MODEL_EOS, DecodingStats, GenerationOutput, Proposal, Sampler,
                          check_eos, decode, first_eos)
from osd_lab.timing import clock


def check_prompt(model: PreTrainedModel, input_ids, max_new_tokens: int) -> torch.Tensor:
    """Validate a prompt and length; return ids of shape ``(1, T)`` on the model's device."""
    check_int("max_new_tokens", max_new_tokens, low=1)
    vocab = model.get_input_embeddings().num_embeddings  # ids the model can read
    input_ids = check_token_ids("input_ids", input_ids, vocab)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one prompt of shape (T,) or (1, T), got "
                         f"{tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt: input_ids must hold at least one token "
                         "(e.g. the BOS token)")
    limit = context_length(model)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's context of {limit} "
                         f"tokens: shorten the prompt or ask for fewer tokens")
    return input_ids.to(model.device)


@torch.inference_mode()
def autoregressive_generate(model: PreTrainedModel, input_ids, max_new_tokens: int, *,
                            temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                            eos_token_id: int | list | str | None = MODEL_EOS,
                            generator: torch.Generator | None = None,
                            use_cache: bool = True) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens, one forward pass each.

    input_ids: ``(T,)`` or ``(1, T)`` prompt token ids.
    temperature, top_k, top_p: see ``logits_to_probs``; temperature 0 is greedy
        and then equals ``model.generate(do_sample=False)`` token for token.
    eos_token_id: stop after this token, or after any of a list of them (it
        is included in the output); default: the model's generation config
        (``"model"``); None never stops early.
    generator: a ``torch.Generator`` on the model's device, for reproducible sampling.
    use_cache: keep a KV cache (the default); False re-runs the whole sequence
        at every step, to show what the cache saves.

    Returns ``GenerationOutput(tokens (N,), stats)``, ``stats`` an
    ``osd_lab.step.DecodingStats``: ``new_tokens``, ``target_calls`` (one
    forward pass per token), ``wall_time_s``, ``tokens_per_s``.
    """
    input_ids = check_prompt(model, input_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    eos_ids = check_eos(eos_token_id, output_vocab_size(model), model.device, model)
    check_generator(generator, model.device)
    check_choice("use_cache", use_cache, (True, False))
    sampler = Sampler(temperature, top_k, top_p, generator)
    start = clock(model.device)
    cache = new_cache(model) if use_cache else None
    step_input = input_ids  # what the next forward pass reads
    new_tokens = []
    for _ in range(max_new_tokens):
        # 1. one forward pass: only the last position's logits matter
        logits = forward(model, step_input, cache, keep=1,
                         use_cache=use_cache).logits[:, -1]
        # 2. logits -> probabilities -> one token, shape (1,); greedy needs
        #    only the argmax, not a (1, V) one-hot distribution
        token, _, top = sampler.draw(logits)
        if top is not None:
            check_top_logits(top)
        new_tokens.append(token)
        # 3. with a cache the next pass reads the new token; without, the
        #    whole sequence (1, T + generated so far) again
        step_input = (token[:, None] if use_cache
                      else torch.cat([step_input, token[:, None]], dim=1))
        if first_eos(token, eos_ids) is not None:
            break
    wall = clock(model.device) - start
    tokens = torch.cat(new_tokens)
    stats = DecodingStats(target_calls=len(new_tokens), new_tokens=len(tokens),
                          wall_time_s=wall)
    return GenerationOutput(tokens, stats)


# -----------------------------------------------------------------------------
# speculative decoding with a draft model

DEFAULT_DRAFT_LEN = {"constant": 4, "heuristic": 4, "goodput": 16}  # goodput: the most


class ModelDrafter:
    """A smaller model that drafts a chain, one forward pass per token, with
    its own KV cache; a stopping rule (``osd_lab.policies``) may end a block
    where the draft doubts its own token."""

    def __init__(self, model: PreTrainedModel, input_ids: torch.Tensor, sampler: Sampler,
                 stop_rule: str | None = None, stop_threshold: float = STOP_THRESHOLD):
        self.model, self.sampler, self.cache = model, sampler, new_cache(model)
        self.stop_rule, self.stop_threshold = stop_rule, stop_threshold
        # Invariant: the cache holds every token but `pending` (1, P): the
        # whole prompt at the start, then 1 token (2 after a fully accepted block)
        self.pending = input_ids
        self.can_stop_early = stop_rule is not None

    def propose(self, block, room: int) -> Proposal:
        limit = min(block.most, room)
        tokens, q, tops = [], [], []
        step_input = self.pending
        for i in range(limit):
            logits = forward(self.model, step_input, self.cache, keep=1).logits[:, -1]  # (1, V)
            token, q_i, top = self.sampler.draw(logits)  # (1,): no device sync when greedy
            tokens.append(token)
            if q_i is None:
                tops.append(top)
            else:
                q.append(q_i)
            step_input = token[:, None]
            if self.stop_rule and block.floor <= i + 1 < limit and should_stop(
                    self.stop_rule, logits[..., :self.sampler.vocab_size], token,
                    self.stop_threshold):
                break  # the draft doubts this token: let the target check what we have
        return Proposal(torch.cat(tokens) if tokens else self.pending.new_zeros(0),
                        q=torch.cat(q) if q else None, tops=tops, passes=len(tokens))

    def commit(self, proposal, path, num_accepted, next_token, target_output=None) -> None:
        drafted = len(proposal.tokens)  # it read pending + x_1..x_{g-1}
        if num_accepted < drafted:
            rollback(self.cache, drafted - 1 - num_accepted)
            self.pending = next_token[:, None]
        else:  # all accepted: it has not read x_g (nor pending, if nothing was drafted)
            unread = proposal.tokens[None, -1:] if drafted else self.pending
            self.pending = torch.cat([unread, next_token[:, None]], dim=1)


class CachedTarget:
    """The target model with its KV cache: scores a chain in one pass."""

    def __init__(self, model: PreTrainedModel, input_ids: torch.Tensor):
        self.model, self.device, self.cache = model, model.device, new_cache(model)
        # Invariant: the cache holds every token but `pending` (1, P): the whole
        # prompt at the start, read in the first step's pass (no prefill of its own)
        self.pending = input_ids

    def score(self, proposal):
        drafted = len(proposal.tokens)
        ids = torch.cat([self.pending, proposal.tokens[None]], dim=1)  # (1, P + g)
        return forward(self.model, ids, self.cache, keep=drafted + 1).logits, None

    def commit(self, proposal, path, num_accepted, next_token) -> None:
        rollback(self.cache, len(proposal.tokens) - num_accepted)  # keep up to x_n
        self.pending = next_token[:, None]


def check_pair(target, draft, vocab_size):
    """Validate a (target, draft) pair; return the vocabulary size both score."""
    if target.device != draft.device:
        raise ValueError(f"target is on {target.device} but draft on {draft.device}: "
                         f"move both to one device, e.g. draft.to(target.device)")
    sizes = output_vocab_size(target), output_vocab_size(draft)
    if vocab_size is None:
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"target scores {sizes[0]} tokens but draft {sizes[1]}: different "
                f"vocabularies. If both share one tokenizer and only pad their "
                f"embeddings differently, pass vocab_size=len(tokenizer) "
                f"(load_pair's ModelPair.vocab_size).")
        vocab_size = sizes[0]
    check_int("vocab_size", vocab_size, low=1)
    if vocab_size > min(sizes):
        raise ValueError(f"vocab_size={vocab_size} but the models score {sizes} tokens")
    return vocab_size


def make_policy(target, draft, draft_len_policy, draft_len=None, costs=None):
    """A draft-length policy object from its name ("constant", "heuristic",
    "goodput") and settings, or the policy object given (whose settings are its own)."""
    if not isinstance(draft_len_policy, str):
        if not hasattr(draft_len_policy, "next_block"):
            raise ValueError(f"draft_len_policy must be one of {DRAFT_LEN_POLICIES} or a "
                             f"policy object (osd_lab.policies), got {draft_len_policy!r}")
        if costs is not None or draft_len is not None:
            raise ValueError("costs and draft_len belong to the policy object passed as "
                             "draft_len_policy: leave them None")
        return draft_len_policy
    check_choice("draft_len_policy", draft_len_policy, DRAFT_LEN_POLICIES)
    draft_len = DEFAULT_DRAFT_LEN[draft_len_policy] if draft_len is None else draft_len
    # goodput weighs every length up to draft_len at each step: 10**9 would hang
    check_int("draft_len", draft_len, 1, MAX_DRAFT_LEN)
    if draft_len_policy != "goodput":
        if costs is not None:
            raise ValueError(f"costs are read by the goodput policy only, not by "
                             f"draft_len_policy={draft_len_policy!r}")
        return (ConstantPolicy if draft_len_policy == "constant" else HeuristicPolicy)(draft_len)
    if costs is None:
        costs = measure_costs(target, draft)
    return GoodputPolicy(costs, max_draft_len=draft_len)


@torch.inference_mode()
def speculative_generate(target: PreTrainedModel, draft: PreTrainedModel, input_ids,
                         max_new_tokens: int, *, draft_len: int | None = None,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                         eos_token_id: int | list | str | None = MODEL_EOS,
                         generator: torch.Generator | None = None,
                         draft_len_policy=DEFAULT_DRAFT_LEN_POLICY,
                         stop_rule: str | None = "auto", stop_threshold: float | None = None,
                         costs: SpeculationCosts | None = None,
                         vocab_size: int | None = None,
                         record_target_logits: bool = False) -> GenerationOutput:
    """Speculative decoding of one prompt: the output is distributed as the target's.

    input_ids: ``(T,)`` or ``(1, T)`` prompt token ids.
    draft_len_policy: how many tokens to draft at each step
        (``osd_lab.policies``): "constant", "heuristic" (transformers'),
        "goodput" (the default: the most expected tokens per second from the
        running alpha and the measured ``costs``; 0 when the draft does not
        pay), or a policy object (e.g. a ``GoodputPolicy`` that carries its
        alpha across calls).
    draft_len: tokens drafted per step (gamma) with "constant", the starting
        value with "heuristic", the most with "goodput" (default 4, 4, 16);
        at most ``osd_lab.cost.MAX_DRAFT_LEN`` (1024). A block never holds
        more than the tokens still to make, whatever ``draft_len`` says.
    stop_rule, stop_threshold: end a block early when the draft's own
        confidence says a rejection is likely (with "goodput": goodput's
        block at least, then on, up to ``draft_len``, while the rule lets it):
        "auto" (the default: "confidence" with goodput, none with "constant"
        and "heuristic"; ``osd_lab.policies.DEFAULT_STOP_RULE``), None,
        "confidence" (transformers' rule, threshold 0.4) or "entropy"
        (AdaEDL), see ``osd_lab.policies``.
    costs: ``SpeculationCosts`` for "goodput" (default: measured once per
        pair with ``osd_lab.measure.measure_costs``: under a second on the zoo,
        45 s for a 1.5B target in float32 on a 2-core CPU, once per session).
    temperature, top_k, top_p: applied to both models' logits; temperature 0 is
        greedy, and the output then equals greedy ``autoregressive_generate``.
    eos_token_id: stop after this token (or any of a list of them), inclusive;
        the statistics stop there too. Default ``"model"``: the target's
        generation config; None never stops early.
    vocab_size: compare logits on ids ``[0, vocab_size)``, for pairs that pad
        their vocabularies differently (default: both must be equal).
    record_target_logits: also return ``stats.target_logits`` ``(N, V)``,
        the target's raw logits that predicted each new token (computed during
        verification anyway; used for online distillation, ``osd_lab.online``).

    The loop is ``osd_lab.step.decode``: a ``ModelDrafter`` proposes, a
    ``CachedTarget`` scores, ``verify_block`` keeps a prefix, both caches
    roll back. Returns ``GenerationOutput(tokens (N,), stats)``, ``stats`` an
    ``osd_lab.step.DecodingStats`` (alpha, decided alpha, tau, acceptance by
    position, calls, corrections, time).
    """
    input_ids = check_prompt(target, input_ids, max_new_tokens)
    check_prompt(draft, input_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, target.device)
    vocab_size = check_pair(target, draft, vocab_size)
    eos_ids = check_eos(eos_token_id, vocab_size, target.device, target)
    check_choice("record_target_logits", record_target_logits, (True, False))
    stop_rule, stop_threshold = check_stop_rule(stop_rule, stop_threshold, draft_len_policy)
    policy = make_policy(target, draft, draft_len_policy, draft_len, costs)
    sampler = Sampler(temperature, top_k, top_p, generator, vocab_size)
    return decode(CachedTarget(target, input_ids),
                  ModelDrafter(draft, input_ids, sampler, stop_rule, stop_threshold),
                  policy, sampler, max_new_tokens, eos_ids, record_target_logits)
