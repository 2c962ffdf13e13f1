"""Batched speculative decoding: BASS (Qian et al., 2024, arXiv 2404.15778).

A server decodes B sequences at once. Each step the draft proposes the same
number of tokens g for every row, the target scores all B x (g + 1) of them
in one pass, and ``verify`` (already batched) keeps a different number of
them in each row: acceptance is *ragged*. One KV-cache tensor has one length,
so after a step the rows disagree about how much of it is theirs.

What this module implements (BASS-PAD, the paper's padded variant):

* prompts are **left-padded**; every forward pass gets a 2-D attention mask
  ``(B, L + W)`` and **explicit position ids** (a row's position counts only
  its real tokens, so RoPE models and GPT-2's absolute positions both see the
  positions they would see alone);
* after verification the caches are rolled back only as far as the row that
  kept the most allows; in every other row the rejected slots stay in the
  cache as **holes**, masked out of the attention mask for all later steps
  (the paper pads the accepted lengths to the longest and masks the padding);
* finished rows (EOS or ``max_new_tokens``) are **dropped** from the batch and
  from both caches, so they stop costing work;
* the draft length is common to the batch, set by a policy: "constant",
  "heuristic" (transformers' rule, on the most accepted in any row) or
  "bass", the paper's Algorithm 1 (``bass_draft_len``).

BASS-SPLIT (one attention kernel per row, no padding) needs custom kernels and
is not built here. Taught in ``notebooks/08_bass``.
"""

import math
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from osd_lab.cache import forward, keep_rows, new_cache, rollback
from osd_lab.checks import check_choice, check_generator, check_int
from osd_lab.decoding import MODEL_EOS, check_eos, check_pair, check_prompt, first_eos
from osd_lab.models import context_length, output_vocab_size
from osd_lab.policies import next_draft_len
from osd_lab.sampling import check_sampling_args, logits_to_probs, sample
from osd_lab.timing import clock
from osd_lab.verify import overlap, verify

# BASS Algorithm 1: start length, increase, limit, and the divisor of the decrease
BASS_START, BASS_INCREASE, BASS_LIMIT, BASS_MOD = 7, 2, 32, 10
BATCH_DRAFT_LEN_POLICIES = ("constant", "heuristic", "bass")


@dataclass
class BatchGenerationOutput:
    """New tokens of each of B prompts (a list of ``(N_b,)``) and what they cost."""

    tokens: list
    stats: dict = field(default_factory=dict)


def bass_draft_len(draft_len: int, max_accepted: int, shrinking: bool) -> tuple[int, bool]:
    """BASS's draft length for the next step (the paper's Algorithm 1).

    If some row accepted every drafted token (``max_accepted == draft_len``) the
    length grows by ``BASS_INCREASE`` up to ``BASS_LIMIT``; otherwise it shrinks
    by ceil(draft_len / ``BASS_MOD``), and by one more when the previous step
    shrank too (``shrinking``), but never below what the best row accepted,
    nor below 1: l = max(1, x, l - ceil(l / l_mod) - s). Returns the new
    length and whether this step shrank.
    """
    if max_accepted == draft_len:
        return min(draft_len + BASS_INCREASE, BASS_LIMIT), False
    shrink = math.ceil(draft_len / BASS_MOD) + int(shrinking)
    return max(1, max_accepted, draft_len - shrink), True


def check_prompts(models, prompts, max_new_tokens: int) -> list:
    """Validate a batch of prompts for every model; return them as ``(1, T_b)`` tensors."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of 1-D token-id tensors, got "
                         f"{type(prompts).__name__} of length {len(prompts)}"
                         if isinstance(prompts, (list, tuple)) else
                         f"prompts must be a list of 1-D token-id tensors, got "
                         f"{type(prompts).__name__}")
    device = models[0].device
    checked = []
    for i, prompt in enumerate(prompts):
        if torch.is_tensor(prompt) and prompt.device != device:
            raise ValueError(f"prompts[{i}] is on {prompt.device} but the models on {device}: "
                             f"move every prompt to the models' device")
        try:
            for model in models:
                ids = check_prompt(model, prompt, max_new_tokens)
        except ValueError as err:
            raise ValueError(f"prompts[{i}]: {err}") from None
        checked.append(ids)
    return checked


def left_pad(prompts: list, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(1, T_b)`` prompts into ids ``(B, T)`` and a mask ``(B, T)``, padded on the left."""
    width = max(p.shape[1] for p in prompts)
    ids = prompts[0].new_full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1]:] = p[0]
        mask[row, width - p.shape[1]:] = 1
    return ids, mask


# -----------------------------------------------------------------------------
# one model's KV cache, shared by rows of different lengths

class PaddedCache:
    """A model's KV cache for B rows, and a mask ``(B, L)`` of which slots are real.

    Slot l of row b holds a real token iff ``mask[b, l] == 1``; the others are
    left padding or holes left by rejected drafts, and no query attends to them.
    """

    def __init__(self, model: PreTrainedModel, batch_size: int):
        self.model, self.cache = model, new_cache(model)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=model.device)  # (B, L)

    def read(self, input_ids: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        """Run the model on ``(B, W)`` new slots (``input_mask`` marks the real
        ones); the cache grows by W. Returns logits ``(B, W, V)``."""
        # a row's position = how many real tokens come before it in that row
        seen = self.mask.sum(-1, keepdim=True)  # (B, 1)
        positions = (seen + input_mask.cumsum(-1) - 1).clamp(min=0)  # (B, W)
        self.mask = torch.cat([self.mask, input_mask], dim=1)  # (B, L + W)
        return forward(self.model, input_ids, self.cache, attention_mask=self.mask,
                       position_ids=positions).logits

    def keep_last(self, width: int, keep: torch.Tensor) -> None:
        """Of the last ``width`` slots, row b keeps its first ``keep[b]`` ``(B,)``.

        The slots no row keeps are cut off the cache; the rest of the slots a
        row does not keep become masked holes (BASS-PAD).
        """
        cut = width - int(keep.max()) if len(keep) else width
        rollback(self.cache, cut)
        self.mask = self.mask[:, :self.mask.shape[1] - cut]
        tail = width - cut
        if tail:
            kept = torch.arange(tail, device=keep.device) < keep[:, None]  # (B, tail)
            self.mask[:, -tail:] *= kept.long()

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (indices into the current batch)."""
        keep_rows(self.cache, rows)
        self.mask = self.mask[rows]

    def padding_fraction(self) -> float:
        """The share of cache slots that are padding or holes."""
        return 1 - self.mask.sum().item() / max(1, self.mask.numel())


# -----------------------------------------------------------------------------
# batched autoregressive decoding (the baseline)

@torch.inference_mode()
def batched_autoregressive_generate(model: PreTrainedModel, prompts, max_new_tokens: int,
                                    temperature: float = 0.0, top_k: int = 0,
                                    top_p: float = 1.0,
                                    eos_token_id: int | list | str | None = MODEL_EOS,
                                    generator: torch.Generator | None = None
                                    ) -> BatchGenerationOutput:
    """Decode B prompts together, one forward pass over the batch per token.

    prompts: a list of B 1-D token-id tensors of any lengths; the other
    arguments as ``autoregressive_generate``. Finished rows leave the batch.
    Returns ``tokens`` (list of B ``(N_b,)``) and ``stats`` with
    ``new_tokens``, ``forward_passes``, ``wall_time_s``, ``tokens_per_s``.
    """
    prompts = check_prompts([model], prompts, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, model.device)
    eos_ids = check_eos(eos_token_id, output_vocab_size(model), model.device, model)
    start = clock(model.device)
    ids, mask = left_pad(prompts)  # (B, T)
    state = PaddedCache(model, len(prompts))
    rows = torch.arange(len(prompts), device=model.device)  # original index of each row
    new_tokens = [[] for _ in prompts]
    step_ids, step_mask = ids, mask
    passes = 0
    while len(rows):
        logits = state.read(step_ids, step_mask)[:, -1]  # (b, V)
        passes += 1
        tokens = sample(logits_to_probs(logits, temperature, top_k, top_p), generator,
                        validate=False)  # (b,)
        at_eos = (torch.isin(tokens, eos_ids).tolist() if eos_ids is not None
                  else [False] * len(tokens))  # one device sync for the batch
        done = []
        for i, row in enumerate(rows.tolist()):
            new_tokens[row].append(tokens[i])
            done.append(len(new_tokens[row]) == max_new_tokens or at_eos[i])
        keep = torch.tensor([not d for d in done], device=model.device)
        step_ids, step_mask = tokens[:, None], torch.ones_like(tokens[:, None])
        if not keep.all():  # finished rows leave the batch and the cache
            rows, step_ids, step_mask = rows[keep], step_ids[keep], step_mask[keep]
            state.keep_rows(keep.nonzero()[:, 0])
    wall = clock(model.device) - start
    tokens = [torch.stack(t) for t in new_tokens]
    total = sum(len(t) for t in tokens)
    stats = dict(new_tokens=total, forward_passes=passes, wall_time_s=wall,
                 tokens_per_s=total / wall)
    return BatchGenerationOutput(tokens, stats)


# -----------------------------------------------------------------------------
# batched speculative decoding

@torch.inference_mode()
def batched_speculative_generate(target: PreTrainedModel, draft: PreTrainedModel, prompts,
                                 max_new_tokens: int, draft_len: int | None = None,
                                 draft_len_policy: str = "constant", temperature: float = 0.0,
                                 top_k: int = 0, top_p: float = 1.0,
                                 eos_token_id: int | list | str | None = MODEL_EOS,
                                 generator: torch.Generator | None = None,
                                 vocab_size: int | None = None,
                                 record_target_logits: bool = False) -> BatchGenerationOutput:
    """Speculative decoding of B prompts at once; each row is distributed as the target's.

    prompts: a list of B 1-D token-id tensors of any lengths (at least 1 token).
    draft_len: tokens drafted per step for the whole batch (the start value
        for the "heuristic" and "bass" policies); default ``BASS_START`` (7)
        for "bass", 4 otherwise.
    draft_len_policy: "constant", "heuristic" (+2 when some row accepted the
        whole block, else -1) or "bass" (``bass_draft_len``).
    temperature, top_k, top_p, eos_token_id, generator, vocab_size,
    record_target_logits: as ``speculative_generate``. At temperature 0 every
    row equals its own greedy ``autoregressive_generate`` token for token.
    Under sampling the rows share ``generator``, so which random numbers a row
    draws depends on the others; each row's distribution does not.

    Returns ``tokens`` (list of B ``(N_b,)``) and ``stats``: per row, in
    ``stats["sequences"][b]``: ``new_tokens``, ``accepted`` and ``draft_lens``
    per step it took part in, ``decided_alpha`` (exact sum_v min(p, q) at the
    positions verification decided and that produced an output token),
    ``verified_alpha``, ``tau`` (its tokens per step), ``corrections`` and
    (if asked) ``target_logits`` ``(N_b, V)``; for the batch:
    ``target_calls`` (steps), ``draft_calls``, ``draft_lens`` and
    ``batch_sizes`` per step, ``new_tokens``, ``tokens_per_step``, ``tau``
    (mean tokens per row per step), ``verified_alpha`` (pooled),
    ``padding_fraction`` (per step, share of the target's cache slots that
    are padding or holes), ``wall_time_s`` and ``tokens_per_s``.
    """
    check_choice("draft_len_policy", draft_len_policy, BATCH_DRAFT_LEN_POLICIES)
    if draft_len is None:
        draft_len = BASS_START if draft_len_policy == "bass" else 4
    vocab_size = check_pair(target, draft, vocab_size)
    check_int("draft_len", draft_len, low=1)
    prompts = check_prompts([target, draft], prompts, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, target.device, "the models are")
    eos_ids = check_eos(eos_token_id, vocab_size, target.device, target)

    def probs(logits):  # (..., V_model) -> processed (..., vocab_size)
        return logits_to_probs(logits[..., :vocab_size], temperature, top_k, top_p)

    start = clock(target.device)
    device, batch = target.device, len(prompts)
    seqs = [dict(tokens=[], accepted=[], draft_lens=[], decided_alpha=[], corrections=[],
                 target_logits=[]) for _ in range(batch)]
    stats = dict(target_calls=0, draft_calls=0, draft_lens=[], batch_sizes=[],
                 padding_fraction=[])
    target_state, draft_state = PaddedCache(target, batch), PaddedCache(draft, batch)
    # Invariant (as in speculative_generate): both caches hold every token but
    # the last; `target_pending` (b, 1) is unread by the target, `draft_pending`
    # (b, W) with `draft_pending_mask` by the draft (left-padded: 1 or 2 tokens).
    ids, mask = left_pad(prompts)  # (B, T)
    if ids.shape[1] > 1:
        target_state.read(ids[:, :-1], mask[:, :-1])
        draft_state.read(ids[:, :-1], mask[:, :-1])
    target_pending = draft_pending = ids[:, -1:]  # (B, 1)
    draft_pending_mask = torch.ones_like(draft_pending)
    rows = torch.arange(batch, device=device)  # original index of each active row
    num_new = torch.zeros(batch, dtype=torch.long, device=device)  # per active row
    # positions a row may still use: its prompt length + num_new must stay below this
    limits = [context_length(m) for m in (target, draft) if context_length(m)]
    room = torch.tensor([min(limits, default=10**9) - p.shape[1] for p in prompts],
                        device=device)  # (B,)
    gamma, shrinking = draft_len, False
    while len(rows):
        b = len(rows)
        # one g for all rows: leave the longest-running row room for one more
        # token, and every row inside its context; tokens past a row's own
        # max_new_tokens are dropped below
        g = min(gamma, int((max_new_tokens - num_new).max()) - 1, int((room - num_new).min()))
        # 1. the draft proposes g tokens for every row, one forward pass each
        drafted, q = [], []
        draft_input, draft_input_mask = draft_pending, draft_pending_mask
        for _ in range(g):
            q_i = probs(draft_state.read(draft_input, draft_input_mask)[:, -1])  # (b, V)
            x_i = sample(q_i, generator, validate=False)  # (b,)
            drafted.append(x_i)
            q.append(q_i)
            draft_input, draft_input_mask = x_i[:, None], torch.ones_like(x_i[:, None])
        stats["draft_calls"] += g
        drafted = torch.stack(drafted, 1) if g else ids.new_zeros(b, 0)  # (b, g)
        # 2. the target scores pending + all drafted tokens of every row in one pass
        target_input = torch.cat([target_pending, drafted], dim=1)  # (b, g + 1)
        target_logits = target_state.read(target_input, torch.ones_like(target_input))
        p = probs(target_logits)  # (b, g + 1, V)
        stats["target_calls"] += 1
        # 3. each row keeps its own prefix of the draft, then one token from the target
        if g:
            q = torch.stack(q, 1)  # (b, g, V)
            result = verify(p, q, drafted, generator, validate=False)
            accepted, next_token = result.num_accepted, result.next_token  # (b,), (b,)
            alpha = overlap(p[:, :g], q, validate=False).tolist()  # (b, g)
        else:
            accepted = torch.zeros(b, dtype=torch.long, device=device)
            next_token = sample(p[:, 0], generator, validate=False)
            alpha = [[] for _ in range(b)]
        # 4. ragged acceptance: each row keeps its slots, the others become holes
        target_state.keep_last(g + 1, accepted + 1)  # pending + x_1..x_n of g + 1 read
        if g:
            draft_state.keep_last(g - 1, accepted.clamp(max=g - 1))  # x_1..x_{g-1} read
            full = accepted == g  # the draft has not read x_g in these rows
            draft_pending = torch.stack([torch.where(full, drafted[:, -1], 0), next_token], 1)
            draft_pending_mask = torch.stack([full.long(), torch.ones_like(full.long())], 1)
        else:  # the draft read nothing: it still owes its pending tokens
            draft_pending = torch.cat([draft_pending, next_token[:, None]], dim=1)
            draft_pending_mask = torch.cat([draft_pending_mask,
                                            torch.ones_like(next_token[:, None])], dim=1)
        target_pending = next_token[:, None]
        stats["draft_lens"].append(g)
        stats["batch_sizes"].append(b)
        stats["padding_fraction"].append(target_state.padding_fraction())
        # 5. record each row; a row stops at EOS (inclusive) or max_new_tokens
        done = []
        for i, row in enumerate(rows.tolist()):
            n, seq = int(accepted[i]), seqs[row]
            step_tokens = torch.cat([drafted[i, :n], next_token[i:i + 1]])  # (n + 1,)
            left = max_new_tokens - int(num_new[i])
            eos_at = first_eos(step_tokens, eos_ids)
            kept = min(left, n + 1 if eos_at is None else eos_at + 1)
            seq["tokens"].append(step_tokens[:kept])
            seq["accepted"].append(n)
            seq["draft_lens"].append(g)
            seq["decided_alpha"] += alpha[i][:min(n + 1, kept)]  # accepted + first rejected
            if n < g and n < kept:  # the target overruled the draft at a kept token
                seq["corrections"].append(int(num_new[i]) + n)
            if record_target_logits:
                seq["target_logits"].append(target_logits[i, :kept, :vocab_size])
            num_new[i] += kept
            done.append((eos_at is not None and eos_at < kept)
                        or int(num_new[i]) >= max_new_tokens)
        if g == gamma:  # a capped step says nothing about gamma
            most = int(accepted.max())
            if draft_len_policy == "bass":
                gamma, shrinking = bass_draft_len(gamma, most, shrinking)
            else:
                gamma = next_draft_len(draft_len_policy, gamma, most)
        keep = torch.tensor([not d for d in done], device=device)
        if not keep.all():  # finished rows leave the batch and both caches
            kept_rows = keep.nonzero()[:, 0]
            rows, num_new, room = rows[keep], num_new[keep], room[keep]
            target_pending = target_pending[keep]
            draft_pending, draft_pending_mask = draft_pending[keep], draft_pending_mask[keep]
            target_state.keep_rows(kept_rows)
            draft_state.keep_rows(kept_rows)

    wall = clock(device) - start
    tokens = [torch.cat(seq["tokens"]) for seq in seqs]
    for seq, out in zip(seqs, tokens):
        decided = seq["decided_alpha"]
        seq.update(new_tokens=len(out), target_calls=len(seq["accepted"]),
                   tau=len(out) / len(seq["accepted"]),
                   verified_alpha=sum(decided) / len(decided) if decided else float("nan"))
        del seq["tokens"]
        if record_target_logits:
            seq["target_logits"] = torch.cat(seq["target_logits"])  # (N_b, V)
        else:
            del seq["target_logits"]
    decided = [a for seq in seqs for a in seq["decided_alpha"]]
    total = sum(len(t) for t in tokens)
    stats.update(
        sequences=seqs, new_tokens=total, wall_time_s=wall, tokens_per_s=total / wall,
        tokens_per_step=total / stats["target_calls"],
        tau=total / sum(stats["batch_sizes"]),
        verified_alpha=sum(decided) / len(decided) if decided else float("nan"))
    return BatchGenerationOutput(tokens, stats)
