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

import numbers
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from osd_lab.cache import forward, new_cache, rollback
from osd_lab.checks import (ArgumentError, check_choice, check_generator, check_int,
                            check_token_ids)
from osd_lab.cost import MAX_DRAFT_LEN, SpeculationCosts, measure_costs
from osd_lab.models import context_length, output_vocab_size
from osd_lab.policies import (DEFAULT_DRAFT_LEN_POLICY, DRAFT_LEN_POLICIES, PROBE_LEN,
                              GoodputPolicy, check_stop_rule, next_draft_len, should_stop)
from osd_lab.sampling import (check_sampling_args, check_top_logits, greedy_token,
                              logits_to_probs, sample)
from osd_lab.timing import clock
from osd_lab.verify import overlap, verify


@dataclass
class GenerationOutput:
    """New tokens ``(N,)`` and what it cost to make them."""

    tokens: torch.Tensor
    stats: dict = field(default_factory=dict)


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


MODEL_EOS = "model"  # the default eos_token_id: the model's generation config


def check_eos(eos_token_id, vocab_size: int, device: torch.device,
              model: PreTrainedModel | None = None) -> torch.Tensor | None:
    """Validate ``eos_token_id``: an id, a list of ids (as generation configs
    give), None (never stop early), or ``"model"`` (``MODEL_EOS``, every
    decoder's and alpha function's default): ``model``'s
    ``generation_config.eos_token_id``. Returns the ids as a 1-D tensor on
    ``device``, or None."""
    if isinstance(eos_token_id, str) and eos_token_id == MODEL_EOS:
        config = getattr(model, "generation_config", None)
        model_eos = getattr(config, "eos_token_id", None)
        try:
            return check_eos(model_eos, vocab_size, device)
        except ValueError as err:
            raise ArgumentError(f"eos_token_id={MODEL_EOS!r} reads the model's "
                                f"generation_config.eos_token_id, {model_eos!r}, which is not "
                                f"a token id in [0, {vocab_size}): pass eos_token_id (an id, "
                                f"a list of ids, or None to never stop early)") from err
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    if not ids or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                          and 0 <= i < vocab_size for i in ids):
        raise ArgumentError(f"eos_token_id must be a token id in [0, {vocab_size}), a "
                            f"non-empty list of them, None (never stop early) or "
                            f"{MODEL_EOS!r} (the model's generation config), got "
                            f"{eos_token_id!r}")
    return torch.tensor([int(i) for i in ids], device=device)


def first_eos(tokens: torch.Tensor, eos_ids: torch.Tensor | None) -> int | None:
    """Index of the first end-of-sequence id in ``tokens`` ``(N,)``, or None."""
    if eos_ids is None:
        return None
    hits = torch.isin(tokens, eos_ids).nonzero()
    return int(hits[0]) if len(hits) else None


@torch.inference_mode()
def autoregressive_generate(model: PreTrainedModel, input_ids, max_new_tokens: int,
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

    Returns ``GenerationOutput(tokens (N,), stats)`` with ``stats`` holding
    ``new_tokens``, ``forward_passes``, ``wall_time_s`` and ``tokens_per_s``.
    """
    input_ids = check_prompt(model, input_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    eos_ids = check_eos(eos_token_id, output_vocab_size(model), model.device, model)
    check_generator(generator, model.device)
    check_choice("use_cache", use_cache, (True, False))
    start = clock(model.device)
    cache = new_cache(model) if use_cache else None
    sequence = input_ids  # (1, T + generated so far)
    step_input = input_ids  # what the next forward pass reads
    new_tokens = []
    for _ in range(max_new_tokens):
        # 1. one forward pass: only the last position's logits matter
        logits = forward(model, step_input, cache, keep=1,
                         use_cache=use_cache).logits[:, -1]
        # 2. logits -> probabilities -> one token, shape (1,); greedy needs
        #    only the argmax, not a (1, V) one-hot distribution
        if temperature == 0:
            top, token = greedy_token(logits)
            check_top_logits(top)
        else:
            token = sample(logits_to_probs(logits, temperature, top_k, top_p), generator,
                           validate=False)  # checked once, above
        new_tokens.append(token)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        # 3. with a cache the next pass reads one token; without, everything
        step_input = token[:, None] if use_cache else sequence
        if first_eos(token, eos_ids) is not None:
            break
    wall = clock(model.device) - start
    tokens = torch.cat(new_tokens)
    stats = dict(new_tokens=len(tokens), forward_passes=len(new_tokens),
                 wall_time_s=wall, tokens_per_s=len(tokens) / wall)
    return GenerationOutput(tokens, stats)


# -----------------------------------------------------------------------------
# speculative decoding

DEFAULT_DRAFT_LEN = {"constant": 4, "heuristic": 4, "goodput": 16}  # goodput: the most


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


def make_policy(target, draft, draft_len_policy, draft_len, costs):
    """Validate a draft-length policy; return ``(policy, draft_len)`` where
    policy is the name or, for "goodput", a fresh ``GoodputPolicy``."""
    if isinstance(draft_len_policy, GoodputPolicy):
        if costs is not None or draft_len is not None:
            raise ValueError("costs and draft_len belong to the GoodputPolicy passed as "
                             "draft_len_policy: leave them None")
        return draft_len_policy, draft_len_policy.max_draft_len
    check_choice("draft_len_policy", draft_len_policy, DRAFT_LEN_POLICIES)
    draft_len = DEFAULT_DRAFT_LEN[draft_len_policy] if draft_len is None else draft_len
    # goodput weighs every length up to draft_len at each step: 10**9 would hang
    check_int("draft_len", draft_len, 1, MAX_DRAFT_LEN)
    if draft_len_policy != "goodput":
        if costs is not None:
            raise ValueError(f"costs are read by the goodput policy only, not by "
                             f"draft_len_policy={draft_len_policy!r}")
        return draft_len_policy, draft_len
    if costs is None:
        costs = measure_costs(target, draft)
    return GoodputPolicy(costs, max_draft_len=draft_len), draft_len


@torch.inference_mode()
def speculative_generate(target: PreTrainedModel, draft: PreTrainedModel, input_ids,
                         max_new_tokens: int, draft_len: int | None = None,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                         eos_token_id: int | list | str | None = MODEL_EOS,
                         generator: torch.Generator | None = None,
                         draft_len_policy: str | GoodputPolicy = DEFAULT_DRAFT_LEN_POLICY,
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
        pay), or a ``GoodputPolicy`` that carries its alpha across calls.
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
        pair with ``osd_lab.cost.measure_costs``: under a second on the zoo, 45 s
        for a 1.5B target in float32 on a 2-core CPU, once per session).
    temperature, top_k, top_p: applied to both models' logits; temperature 0 is
        greedy, and the output then equals greedy ``autoregressive_generate``.
    eos_token_id: stop after this token (or any of a list of them), inclusive;
        the statistics stop there too. Default ``"model"``: the target's
        generation config; None never stops early.
    vocab_size: compare logits on ids ``[0, vocab_size)``, for pairs that pad
        their vocabularies differently (default: both must be equal).
    record_target_logits: also return ``stats["target_logits"]`` ``(N, V)``,
        the target's raw logits that predicted each new token (computed during
        verification anyway; used for online distillation, ``osd_lab.online``).

    Returns ``GenerationOutput(tokens (N,), stats)``; ``stats`` has, per step,
    ``alpha`` (exact sum_v min(p, q) at each drafted position), ``accepted``
    and ``draft_lens``; ``decided_alpha``, the alphas of the positions
    verification decided (the accepted ones and the first rejected one, whose
    prefix is the output's); ``verified_alpha`` (their mean: the alpha that
    predicts speed), ``mean_alpha`` (the mean over all drafted positions, also
    those after a rejection, whose prefix is thrown away),
    ``acceptance_by_position``, ``tau`` (new tokens per target call),
    ``corrections`` (indices of new tokens where
    the target overruled the draft), ``target_calls``, ``draft_calls``,
    ``new_tokens``, ``wall_time_s`` and ``tokens_per_s``.
    """
    input_ids = check_prompt(target, input_ids, max_new_tokens)
    check_prompt(draft, input_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, target.device)
    vocab_size = check_pair(target, draft, vocab_size)
    eos_ids = check_eos(eos_token_id, vocab_size, target.device, target)
    check_choice("record_target_logits", record_target_logits, (True, False))
    stop_rule, stop_threshold = check_stop_rule(stop_rule, stop_threshold, draft_len_policy)
    policy, draft_len = make_policy(target, draft, draft_len_policy, draft_len, costs)

    def probs(logits):  # (..., V_model) -> processed (..., vocab_size)
        return logits_to_probs(logits[..., :vocab_size], temperature, top_k, top_p)

    # Greedy (temperature 0) needs no (..., V) distributions: p and q are one-hot
    # on the argmaxes, so a drafted token is accepted iff it is the target's
    # argmax, the next token is the target's argmax, and alpha = sum_v min(p, q)
    # is exactly 1 or 0. The same tokens and statistics, without passes over V.
    greedy = temperature == 0

    start = clock(target.device)
    stats = dict(alpha=[], decided_alpha=[], accepted=[], draft_lens=[], target_calls=0,
                 draft_calls=0, corrections=[], target_logits=[])
    target_cache, draft_cache = new_cache(target), new_cache(draft)
    # Invariant: the models have yet to read `pending` (the draft also x_G after
    # a fully accepted block); at the start that is the whole prompt, read in
    # the first step's passes (as transformers does: no pass of its own).
    target_pending = draft_pending = input_ids  # (1, T)
    new_tokens = []  # list of (n,) tensors
    num_new, gamma = 0, draft_len
    while num_new < max_new_tokens:
        floor = 0  # the stopping rule may end the block after this many tokens
        if isinstance(policy, GoodputPolicy):
            gamma = policy.next_draft_len()
            if stop_rule and gamma and policy.probing:  # a probe: PROBE_LEN tokens,
                floor = gamma = min(PROBE_LEN, policy.max_draft_len)  # the rule unread
            elif stop_rule and gamma:  # goodput's block at least, on while the draft is sure
                floor, gamma = gamma, policy.max_draft_len
        room = max_new_tokens - num_new - 1  # leave room for the next token
        # 1. the draft proposes up to gamma tokens, one forward pass each
        drafted, q, tops = [], [], []
        draft_input = draft_pending
        for i in range(min(gamma, room)):
            logits = forward(draft, draft_input, draft_cache, keep=1).logits[:, -1]
            if greedy:  # no device sync: x_i stays where the draft reads it
                top_i, x_i = greedy_token(logits[..., :vocab_size])  # (1,), (1,)
                tops.append(top_i)
            else:
                q_i = probs(logits)
                x_i = sample(q_i, generator, validate=False)  # (1,)
                q.append(q_i)
            drafted.append(x_i)
            draft_input = x_i[:, None]
            if stop_rule and floor <= i + 1 < min(gamma, room) and should_stop(
                    stop_rule, logits[..., :vocab_size], x_i, stop_threshold):
                break  # the draft doubts x_i: let the target check what we have
        g = len(drafted)
        stats["draft_calls"] += g
        drafted = torch.stack(drafted, 1) if g else input_ids.new_zeros(1, 0)  # (1, g)
        q = torch.stack(q, 1) if q else None  # (1, g, V), None when greedy
        # 2. the target scores pending + all drafted tokens in one pass
        target_input = torch.cat([target_pending, drafted], dim=1)  # (1, P + g)
        target_logits = forward(target, target_input, target_cache, keep=g + 1).logits  # (1, g + 1, V)
        if greedy:
            top, target_tokens = greedy_token(target_logits[..., :vocab_size])  # (1, g + 1)
            check_top_logits(torch.cat([top[0]] + tops))  # one sync for the whole step
        else:
            p = probs(target_logits)  # (1, g + 1, V)
        stats["target_calls"] += 1
        # 3. keep a prefix of the draft, then one token from the target
        if g:
            if greedy:  # accept while the target's argmax agrees
                agree = target_tokens[:, :g] == drafted  # (1, g)
                n = int(agree.cumprod(-1).sum())
                next_token = target_tokens[:, n]  # (1,)
                stats["alpha"].append(agree[0].float().tolist())
            else:
                result = verify(p, q, drafted, generator, validate=False)
                n, next_token = int(result.num_accepted), result.next_token
                stats["alpha"].append(overlap(p[0, :g], q[0], validate=False).tolist())
            stats["decided_alpha"] += stats["alpha"][-1][:n + 1]  # accepted + first rejected
            if isinstance(policy, GoodputPolicy):
                policy.observe(stats["alpha"][-1][:n + 1])
            if n < g:  # the target overruled the draft here
                stats["corrections"].append(num_new + n)
        else:
            n = 0
            next_token = target_tokens[:, 0] if greedy else sample(p[:, 0], generator,
                                                                   validate=False)
        stats["accepted"].append(n)
        if record_target_logits:  # the rows that predicted the n + 1 kept tokens
            stats["target_logits"].append(target_logits[0, :n + 1, :vocab_size])
        stats["draft_lens"].append(g)
        step_tokens = torch.cat([drafted[0, :n], next_token])  # (n + 1,)
        # 4. roll the caches back to "all but the newest token"
        rollback(target_cache, g - n)  # it read pending + x_1..x_g; keep up to x_n
        if n < g:
            rollback(draft_cache, g - 1 - n)  # it read pending + x_1..x_{g-1}
            draft_pending = next_token[:, None]
        else:  # all accepted: the draft has not read x_g (nor pending, if g = 0)
            unread = drafted[:, -1:] if g else draft_pending
            draft_pending = torch.cat([unread, next_token[:, None]], dim=1)
        target_pending = next_token[:, None]
        # 5. stop at EOS (inclusive) or at max_new_tokens
        eos_at = first_eos(step_tokens, eos_ids)
        if eos_at is not None:
            new_tokens.append(step_tokens[:eos_at + 1])
            if eos_at < n:  # EOS was an accepted draft token: the rest never happened
                stats["accepted"][-1] = eos_at + 1
                decided = stats["decided_alpha"]  # this step added min(n + 1, g) to it
                del decided[len(decided) - min(n + 1, g) + eos_at + 1:]
                if n < g:
                    stats["corrections"].pop()
            break
        new_tokens.append(step_tokens)
        num_new += n + 1
        if policy == "heuristic" and gamma <= room:  # not cut short by max_new_tokens
            gamma = next_draft_len(policy, gamma, n if n < g else gamma)

    wall = clock(target.device) - start
    tokens = torch.cat(new_tokens)
    drafted_at = [sum(g > i for g in stats["draft_lens"]) for i in range(max(stats["draft_lens"]))]
    accepted_at = [sum(n > i for n in stats["accepted"]) for i in range(len(drafted_at))]
    all_alpha = [a for step in stats["alpha"] for a in step]
    if record_target_logits:
        stats["target_logits"] = torch.cat(stats["target_logits"])[:len(tokens)]  # (N, V)
    stats.update(
        new_tokens=len(tokens), wall_time_s=wall, tokens_per_s=len(tokens) / wall,
        tau=len(tokens) / stats["target_calls"],
        mean_alpha=sum(all_alpha) / len(all_alpha) if all_alpha else float("nan"),
        verified_alpha=(sum(stats["decided_alpha"]) / len(stats["decided_alpha"])
                        if stats["decided_alpha"] else float("nan")),
        acceptance_by_position=[a / d for a, d in zip(accepted_at, drafted_at)])
    return GenerationOutput(tokens, stats)
