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
  "bass", the paper's Algorithm 1 (``osd_lab.policies.bass_draft_len``);
* each step is the one speculative step's pieces (``osd_lab.step``) on B
  rows: ``verify_block``, ``keep_tokens`` per row, one ``DecodingStats``
  per row, a policy object.

BASS-SPLIT (one attention kernel per row, no padding) needs custom kernels and
is not built here. Taught in ``notebooks/08_bass``.
"""

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from osd_lab.cache import forward, keep_rows, new_cache, rollback
from osd_lab.checks import check_choice, check_generator
from osd_lab.decoding import check_pair, check_prompt
from osd_lab.models import context_length, output_vocab_size
from osd_lab.policies import BASS_START, BassPolicy, ConstantPolicy, HeuristicPolicy
from osd_lab.sampling import check_sampling_args, check_top_logits
from osd_lab.step import (MODEL_EOS, DecodingStats, Sampler, check_eos, keep_tokens, mean,
                          verify_block)
from osd_lab.timing import clock

BATCH_POLICIES = {"constant": ConstantPolicy, "heuristic": HeuristicPolicy, "bass": BassPolicy}
BATCH_DRAFT_LEN_POLICIES = tuple(BATCH_POLICIES)


@dataclass
class BatchStats:
    """What a batched call did: each row's ``DecodingStats`` and the batch's steps."""

    sequences: list  # one osd_lab.step.DecodingStats per prompt
    target_calls: int = 0  # steps: one target pass over the batch each
    draft_calls: int = 0  # draft passes over the batch
    draft_lens: list = field(default_factory=list)  # per step, one for the batch
    batch_sizes: list = field(default_factory=list)  # rows still decoding at each step
    padding_fraction: list = field(default_factory=list)  # share of target cache slots unused
    wall_time_s: float = float("nan")

    @property
    def new_tokens(self) -> int:
        return sum(seq.new_tokens for seq in self.sequences)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s

    @property
    def tokens_per_step(self) -> float:
        return self.new_tokens / self.target_calls

    @property
    def tau(self) -> float:
        """Mean new tokens per row per step."""
        return self.new_tokens / sum(self.batch_sizes)

    @property
    def verified_alpha(self) -> float:
        """Alpha of every row's decided positions, pooled."""
        return mean([a for seq in self.sequences for a in seq.decided_alpha])


@dataclass
class BatchGenerationOutput:
    """New tokens of each of B prompts (a list of ``(N_b,)``) and what they cost."""

    tokens: list
    stats: BatchStats


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
def batched_autoregressive_generate(model: PreTrainedModel, prompts, max_new_tokens: int, *,
                                    temperature: float = 0.0, top_k: int = 0,
                                    top_p: float = 1.0,
                                    eos_token_id: int | list | str | None = MODEL_EOS,
                                    generator: torch.Generator | None = None
                                    ) -> BatchGenerationOutput:
    """Decode B prompts together, one forward pass over the batch per token.

    prompts: a list of B 1-D token-id tensors of any lengths; the other
    arguments as ``autoregressive_generate``. Finished rows leave the batch.
    Returns ``tokens`` (list of B ``(N_b,)``) and a ``BatchStats``
    (``target_calls``: passes over the batch).
    """
    prompts = check_prompts([model], prompts, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, model.device)
    eos_ids = check_eos(eos_token_id, output_vocab_size(model), model.device, model)
    sampler = Sampler(temperature, top_k, top_p, generator)
    start = clock(model.device)
    ids, mask = left_pad(prompts)  # (B, T)
    state = PaddedCache(model, len(prompts))
    rows = torch.arange(len(prompts), device=model.device)  # original index of each row
    seqs = [DecodingStats() for _ in prompts]
    new_tokens = [[] for _ in prompts]
    stats = BatchStats(seqs)
    step_ids, step_mask = ids, mask
    while len(rows):
        logits = state.read(step_ids, step_mask)[:, -1]  # (b, V)
        stats.target_calls += 1
        tokens, _, top = sampler.draw(logits)  # (b,)
        if top is not None:
            check_top_logits(top)
        at_eos = (torch.isin(tokens, eos_ids).tolist() if eos_ids is not None
                  else [False] * len(tokens))  # one device sync for the batch
        done = []
        for i, row in enumerate(rows.tolist()):
            new_tokens[row].append(tokens[i])
            seqs[row].target_calls += 1
            done.append(len(new_tokens[row]) == max_new_tokens or at_eos[i])
        keep = torch.tensor([not d for d in done], device=model.device)
        step_ids, step_mask = tokens[:, None], torch.ones_like(tokens[:, None])
        if not keep.all():  # finished rows leave the batch and the cache
            rows, step_ids, step_mask = rows[keep], step_ids[keep], step_mask[keep]
            state.keep_rows(keep.nonzero()[:, 0])
    stats.wall_time_s = clock(model.device) - start
    tokens = [torch.stack(t) for t in new_tokens]
    for seq, out in zip(seqs, tokens):
        seq.new_tokens, seq.wall_time_s = len(out), stats.wall_time_s
    return BatchGenerationOutput(tokens, stats)


# -----------------------------------------------------------------------------
# batched speculative decoding

@torch.inference_mode()
def batched_speculative_generate(target: PreTrainedModel, draft: PreTrainedModel, prompts,
                                 max_new_tokens: int, *, draft_len: int | None = None,
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
        whole block, else -1) or "bass" (``osd_lab.policies.BassPolicy``).
    temperature, top_k, top_p, eos_token_id, generator, vocab_size,
    record_target_logits: as ``speculative_generate``. At temperature 0 every
    row equals its own greedy ``autoregressive_generate`` token for token.
    Under sampling the rows share ``generator``, so which random numbers a row
    draws depends on the others; each row's distribution does not.

    Returns ``tokens`` (list of B ``(N_b,)``) and a ``BatchStats``: per row,
    in ``stats.sequences[b]``, a ``DecodingStats`` over the steps it took
    part in (``target_calls``, ``accepted``, ``draft_lens``, ``decided_alpha``,
    ``corrections``, ``tau``, if asked ``target_logits`` ``(N_b, V)``); for
    the batch ``target_calls`` (steps), ``draft_calls``, ``draft_lens`` and
    ``batch_sizes`` per step, ``padding_fraction`` (per step, share of the
    target's cache slots that are padding or holes), ``tokens_per_step``,
    ``tau`` (mean tokens per row per step), ``verified_alpha`` (pooled),
    ``wall_time_s`` and ``tokens_per_s``.
    """
    check_choice("draft_len_policy", draft_len_policy, BATCH_DRAFT_LEN_POLICIES)
    if draft_len is None:
        draft_len = BASS_START if draft_len_policy == "bass" else 4
    vocab_size = check_pair(target, draft, vocab_size)
    policy = BATCH_POLICIES[draft_len_policy](draft_len)  # checks draft_len
    prompts = check_prompts([target, draft], prompts, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    check_generator(generator, target.device, "the models are")
    eos_ids = check_eos(eos_token_id, vocab_size, target.device, target)
    check_choice("record_target_logits", record_target_logits, (True, False))
    sampler = Sampler(temperature, top_k, top_p, generator, vocab_size)

    start = clock(target.device)
    device, batch = target.device, len(prompts)
    seqs = [DecodingStats() for _ in range(batch)]
    stats = BatchStats(seqs)
    new_tokens = [[] for _ in range(batch)]
    logits_kept = [[] for _ in range(batch)]
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
    while len(rows):
        b = len(rows)
        # one g for all rows: leave the longest-running row room for one more
        # token, and every row inside its context; tokens past a row's own
        # max_new_tokens are dropped below
        block = policy.next_block()
        room_now = min(int((max_new_tokens - num_new).max()) - 1, int((room - num_new).min()))
        g = min(block.most, room_now)
        # 1. propose: the draft drafts g tokens for every row, one forward pass each
        drafted, q, tops = [], [], []
        draft_input, draft_input_mask = draft_pending, draft_pending_mask
        for _ in range(g):
            x_i, q_i, top = sampler.draw(draft_state.read(draft_input, draft_input_mask)[:, -1])
            drafted.append(x_i)  # (b,)
            if q_i is None:
                tops.append(top)
            else:
                q.append(q_i)  # (b, V)
            draft_input, draft_input_mask = x_i[:, None], torch.ones_like(x_i[:, None])
        stats.draft_calls += g
        drafted = torch.stack(drafted, 1) if g else ids.new_zeros(b, 0)  # (b, g)
        # 2. score: the target reads pending + all drafted tokens of every row in one pass
        target_input = torch.cat([target_pending, drafted], dim=1)  # (b, g + 1)
        target_logits = target_state.read(target_input, torch.ones_like(target_input))
        stats.target_calls += 1
        # 3. verify: each row keeps its own prefix of the draft, then one target token
        verdict = verify_block(sampler, target_logits, drafted,
                               torch.stack(q, 1) if q else None, tops)
        accepted, next_token = verdict.num_accepted, verdict.next_token  # (b,), (b,)
        alpha = verdict.alpha.tolist()  # (b, g)
        # 4. commit, ragged: each row keeps its slots, the others become holes
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
        stats.draft_lens.append(g)
        stats.batch_sizes.append(b)
        stats.padding_fraction.append(target_state.padding_fraction())
        # 5. observe: each row stops at end-of-text (inclusive) or max_new_tokens
        done = []
        for i, row in enumerate(rows.tolist()):
            n, seq = int(accepted[i]), seqs[row]
            left = max_new_tokens - int(num_new[i])
            tokens, finished = keep_tokens(drafted[i], n, next_token[i:i + 1], eos_ids, left)
            seq.record(g, n, alpha[i], len(tokens), int(num_new[i]))
            seq.target_calls += 1
            seq.draft_calls += g
            new_tokens[row].append(tokens)
            if record_target_logits:
                logits_kept[row].append(target_logits[i, :len(tokens), :vocab_size])
            num_new[i] += len(tokens)
            done.append(finished)
        policy.observe(drafted=g, accepted=int(accepted.max()),
                       decided_alpha=[], capped=g < block.most)
        keep = torch.tensor([not d for d in done], device=device)
        if not keep.all():  # finished rows leave the batch and both caches
            kept_rows = keep.nonzero()[:, 0]
            rows, num_new, room = rows[keep], num_new[keep], room[keep]
            target_pending = target_pending[keep]
            draft_pending, draft_pending_mask = draft_pending[keep], draft_pending_mask[keep]
            target_state.keep_rows(kept_rows)
            draft_state.keep_rows(kept_rows)

    stats.wall_time_s = clock(device) - start
    tokens = [torch.cat(t) for t in new_tokens]
    for seq, out, kept in zip(seqs, tokens, logits_kept):
        seq.new_tokens, seq.wall_time_s = len(out), stats.wall_time_s
        if record_target_logits:
            seq.target_logits = torch.cat(kept)  # (N_b, V)
    return BatchGenerationOutput(tokens, stats)
