"""Distilling a draft towards its target: DistillSpec and AdaSPEC.

DistillSpec (Zhou et al., 2310.08461): the draft learns to match the target's
token distributions on sequences from a *data source*:
  * "fixed"  : the given texts as they are,
  * "target" : prompts continued by the target (what it will be asked to verify),
  * "draft"  : prompts continued by the current draft (on-policy),
  * "mixed"  : target-generated with probability ``mix_ratio``, else on-policy,
with a divergence from ``osd_lab.divergences`` (fkl, rkl, jsd, tvd).

AdaSPEC (2510.19779): a reference model, the draft's initial weights distilled
with forward KL on the same data, marks which tokens are learnable: per token
delta = L(draft) - L(reference) under forward KL, and the draft trains only on
the top ``keep_fraction`` of tokens by delta, skipping the hard-to-fit rest.

One step of either, ``distillation_step``, is also the online decoder's
update (``osd_lab.online``); what a real draft needs around it (LoRA, master
weights, the guarded optimiser step) is ``osd_lab.finetune``.
Taught in ``notebooks/04_distillspec`` and ``05_adaspec``.
"""

import copy
import random
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from osd_lab.cache import keeps_logits
from osd_lab.checks import (ArgumentError, check_choice, check_float, check_int,
                            check_prompt_list, check_seed)
from osd_lab.decoding import autoregressive_generate
from osd_lab.divergences import (DIVERGENCES, CompactDistribution, forward_kl, masked_mean,
                                 token_divergence)
from osd_lab.evaluation import acceptance_rate
from osd_lab.finetune import guarded_step, master_weights
from osd_lab.models import context_length, output_vocab_size
from osd_lab.step import MODEL_EOS

DATA_SOURCES = ("fixed", "target", "draft", "mixed")


# -----------------------------------------------------------------------------
# data: token sequences and the mask of positions that count

def continue_prompt(model, prompt, max_new_tokens, temperature, generator=None):
    """The prompt ``(T,)`` followed by ``model``'s continuation of ``max_new_tokens``
    tokens, as ``(T + N,)`` (not stopped at end-of-text: training data of one length)."""
    out = autoregressive_generate(model, prompt, max_new_tokens, temperature=temperature,
                                  eos_token_id=None, generator=generator)
    return torch.cat([prompt.to(out.tokens.device), out.tokens])


def cut_prompts(tokenizer, texts, seed=0, min_len=8, max_len=64):
    """Prompts ``(T,)`` cut from ``texts`` at random points: ``min_len`` to
    ``max_len`` tokens, leaving at least ``min_len`` of the text after the cut."""
    check_int("min_len", min_len, low=1)
    check_int("max_len", max_len, low=min_len)
    rng, prompts = random.Random(check_seed(seed)), []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        prompts.append(ids[:rng.randint(min_len, max(min_len, min(max_len, len(ids) - min_len)))])
    return prompts


def make_batch(sequences, prompt_lens, pad_id=0):
    """Right-pad sequences into ids ``(B, L)`` and a loss mask ``(B, L - 1)``.

    Logits at position t score token t + 1, so position t counts when token
    t + 1 is a continuation token (not prompt, not padding).
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length - 1, dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens)):
        ids[row, :len(seq)] = seq
        mask[row, max(prompt_len - 1, 0):len(seq) - 1] = True
    return ids, mask


def first_scored(mask) -> int:
    """The first position of a loss mask ``(B, L - 1)`` that any row scores (0 if
    none): the positions before it are prompt positions of every row."""
    scored = mask.any(0)  # (L - 1,)
    return int(scored.float().argmax()) if scored.any() else 0


def continuation_logits(model, ids, start=0, vocab_size=None):
    """``model``'s logits ``(B, L - 1 - start, V)`` at positions start .. L - 2 of
    ``ids`` ``(B, L)`` (those that score tokens start + 1 .. L - 1, aligned with
    ``mask[:, start:]`` of ``make_batch``), sliced to ``vocab_size``.

    Only these positions' logits are computed (``logits_to_keep``, where the
    model takes it): a loss never reads the logits of prompt positions, and at a
    152k vocabulary they are most of an update's memory."""
    keep = ids.shape[1] - start
    kwargs = {"logits_to_keep": keep} if keeps_logits(type(model)) else {}
    return model(ids, **kwargs).logits[:, -keep:-1, :vocab_size]


def check_distill_args(loss, data, keep_fraction, mix_ratio, steps, lr, batch_size,
                       max_new_tokens, temperature, eval_every):
    check_choice("loss", loss, DIVERGENCES)
    check_choice("data", data, DATA_SOURCES)
    if keep_fraction is not None:
        check_float("keep_fraction (AdaSPEC's k)", keep_fraction, 0, 1, low_open=True)
    check_float("mix_ratio", mix_ratio, 0, 1)
    check_int("steps", steps, low=0)  # 0: only the evaluation at the start
    check_float("lr", lr, low=0, low_open=True)
    check_int("batch_size", batch_size, low=1)
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_float("temperature", temperature, low=0, low_open=True)
    check_int("eval_every", eval_every, low=1)


def check_context(prompts, models, max_new_tokens):
    """Each prompt ``(T,)`` and its ``max_new_tokens`` of continuation fit the
    shortest context of ``models``: no position beyond what they were built for."""
    limits = [n for n in map(context_length, models) if n is not None]
    if not limits:
        return
    limit = min(limits)
    for i, prompt in enumerate(prompts):
        if len(prompt) + max_new_tokens > limit:
            if max_new_tokens:
                raise ArgumentError(f"prompts[{i}] ({len(prompt)} tokens) + max_new_tokens "
                                    f"({max_new_tokens}) exceeds the models' context of "
                                    f"{limit} tokens: shorten it or ask for fewer tokens")
            raise ArgumentError(f"prompts[{i}] ({len(prompt)} tokens, data='fixed') exceeds "
                                f"the models' context of {limit} tokens: shorten the text")


def batch_targets(targets, prompt_lens, shape, start=0):
    """Place each query's target distributions (``(N, V)`` logits or a
    ``CompactDistribution`` of N positions) at its continuation positions of a
    batch aligned t -> t + 1: ``shape`` = ``(B, L - 1 - start)``, the positions
    from ``start`` on of a ``make_batch`` mask (``mask[:, start:]``). Other
    positions hold zeros: finite values, which the loss mask drops."""
    def place(parts):  # [(N_i, ...)] -> (B, L - 1 - start, ...)
        out = parts[0].new_zeros(*shape, *parts[0].shape[1:])
        for row, (part, prompt_len) in enumerate(zip(parts, prompt_lens)):
            first = prompt_len - 1 - start
            out[row, first:first + len(part)] = part
        return out
    if isinstance(targets[0], CompactDistribution):
        return CompactDistribution(*(place(list(field)) for field in zip(*targets)))
    return place(targets)


# -----------------------------------------------------------------------------
# AdaSPEC token selection

def select_tokens(draft_loss, reference_loss, mask, keep_fraction):
    """AdaSPEC: keep the ``keep_fraction`` of masked tokens with the largest
    delta = draft_loss - reference_loss; returns the new mask ``(B, L)``."""
    delta = (draft_loss - reference_loss).detach().masked_fill(~mask, float("-inf"))
    num_keep = max(1, int(keep_fraction * mask.sum().item()))
    kept = torch.topk(delta.flatten(), num_keep).indices
    selected = torch.zeros_like(mask).flatten()
    selected[kept] = True
    return selected.view_as(mask) & mask


# -----------------------------------------------------------------------------
# one distillation step: what ``distill`` and the online decoder's updates take

class DistillationStep(NamedTuple):
    """What one ``distillation_step`` did."""

    loss: float | None        # the masked mean divergence; None: the step was skipped
    per_token: torch.Tensor   # (B, L') the divergence at each position, before the step
    kept: torch.Tensor        # (B, L') bool, the positions it trained on


def distillation_step(model, optimizer, ids, targets, mask, *, loss="fkl", temperature=1.0,
                      vocab_size=None, reference_loss=None, keep_fraction=None,
                      master=None) -> DistillationStep:
    """One optimiser step of ``model`` towards the target's distributions on
    the batch ``ids`` ``(B, L)``: the divergence ``loss`` (one of
    ``DIVERGENCES``) per position, averaged over ``mask``.

    targets and mask cover the last L' positions of the batch aligned
    t -> t + 1 (``make_batch``'s mask from ``first_scored`` on, L' = L - 1 -
    start): ``targets`` the target's logits ``(B, L', V)`` or a
    ``CompactDistribution`` of ``(B, L')`` positions (then temperature 1),
    ``mask`` ``(B, L')`` the positions that count.
    reference_loss: AdaSPEC; a reference model's forward KL to the targets
    ``(B, L')``: only the ``keep_fraction`` of the masked positions with the
    largest KL(p || q_model) - reference_loss count (``select_tokens``).
    master: float32 master weights of a half-precision model
    (``finetune.master_weights``).

    The step is ``finetune.guarded_step``'s: skipped, with the weights and the
    optimiser state as they were, when the loss, its gradient, the new weights
    or the new logits on ``ids`` are not finite. Leaves ``model`` in eval mode."""
    start = ids.shape[1] - 1 - mask.shape[1]  # no row scores a position before it
    model.train()
    logits = continuation_logits(model, ids, start, vocab_size)  # (B, L', V)
    per_token = token_divergence(loss, targets, logits, temperature)  # (B, L')
    if reference_loss is not None:  # AdaSPEC: only the tokens the reference shows are learnable
        mask = select_tokens(token_divergence("fkl", targets, logits, temperature),
                             reference_loss, mask, keep_fraction)
    value = masked_mean(per_token, mask)
    taken = guarded_step(model, optimizer, value, ids, master)  # never a broken model
    model.eval()
    return DistillationStep(value.item() if taken else None, per_token.detach(), mask)


# -----------------------------------------------------------------------------
# the training loop

def distill(target, draft, prompts, *, loss="fkl", data="target", steps=60, lr=1e-3,
            batch_size=8, max_new_tokens=32, temperature=1.0, mix_ratio=0.5,
            reference=None, keep_fraction=0.4, vocab_size=None, eval_prompts=None,
            eval_every=20, eos_token_id=MODEL_EOS, seed=0, target_cache=None, progress=True):
    """Distil ``draft`` towards ``target`` in place; returns a history dict.

    prompts: list of 1-D token-id tensors (for data="fixed", whole texts);
        each with its ``max_new_tokens`` of continuation (with "fixed", the
        text alone) must fit the models' context, or it is refused.
    loss: one of ``DIVERGENCES``; data: one of ``DATA_SOURCES``.
    temperature: for generating continuations and for the divergence.
    reference: a model for AdaSPEC token selection (see ``adaspec``); None
        trains on every continuation token.
    keep_fraction: with a reference, AdaSPEC's k in (0, 1], the share of
        continuation tokens trained on (unread without one).
    eval_prompts: if given, greedy alpha and tau on them every ``eval_every``
        steps (and at the start and end), each decoded until ``eos_token_id``.
    target_cache: a dict to keep target continuations in (keyed by prompt
        index); pass one dict to several calls on the same prompts to
        generate them only once.

    The history has ``loss`` per step, ``kept_fraction`` per step, ``eval``
    rows ``(step, alpha, tau)`` and ``skipped`` steps whose loss or gradient
    was NaN/inf, or after which the draft's weights or logits were (those
    steps leave the weights and the optimiser state untouched:
    ``distillation_step``).
    """
    check_distill_args(loss, data, keep_fraction, mix_ratio, steps, lr, batch_size,
                       max_new_tokens, temperature, eval_every)
    if reference is not None:  # AdaSPEC's selection keeps this share of the tokens
        check_float("keep_fraction (AdaSPEC's k, with a reference)", keep_fraction, 0, 1,
                    low_open=True)
    seed = check_seed(seed)
    models = [m for m in (draft, target, reference) if m is not None]
    readable = min(m.get_input_embeddings().num_embeddings for m in models)
    check_prompt_list("prompts", prompts, readable)
    check_context(prompts, models, 0 if data == "fixed" else max_new_tokens)
    if eval_prompts is not None:
        check_prompt_list("eval_prompts", eval_prompts, readable, one_row_ok=True)
    if vocab_size is not None:
        check_int("vocab_size", vocab_size, 1, min(output_vocab_size(m) for m in (draft, target)))
    rng = random.Random(seed)
    generator = torch.Generator(device=draft.device).manual_seed(seed)
    master = master_weights(draft)  # a half-precision draft steps float32 copies
    optimizer = torch.optim.AdamW(master or draft.parameters(), lr=lr, weight_decay=0.0)
    pad_id = draft.config.pad_token_id or 0
    history = {"loss": [], "kept_fraction": [], "eval": [], "skipped": []}
    cached = {} if target_cache is None else target_cache  # target data is generated once

    def evaluate(step):
        draft.eval()
        stats = acceptance_rate(target, draft, eval_prompts, vocab_size=vocab_size,
                                eos_token_id=eos_token_id)
        history["eval"].append((step, stats["alpha"], stats["tau"]))

    def sequence_for(index):
        prompt = prompts[index]
        source = data
        if data == "mixed":
            source = "target" if rng.random() < mix_ratio else "draft"
        if source == "fixed":
            return prompt, 1  # every token but the first is a target
        if source == "target":
            if index not in cached:
                cached[index] = continue_prompt(target, prompt, max_new_tokens, temperature,
                                                generator)
            return cached[index], len(prompt)
        draft.eval()
        return continue_prompt(draft, prompt, max_new_tokens, temperature, generator), len(prompt)

    if eval_prompts:
        evaluate(0)
    for step in tqdm(range(1, steps + 1), desc=f"distill ({loss}, {data})", disable=not progress):
        # 1. a batch of sequences and the positions that count
        batch = [sequence_for(rng.randrange(len(prompts))) for _ in range(batch_size)]
        ids, mask = make_batch([s.cpu() for s, _ in batch], [n for _, n in batch], pad_id)
        ids, mask = ids.to(draft.device), mask.to(draft.device)
        # 2. teacher logits (no gradient), aligned at t -> t + 1, from the first
        #    continuation position on: (B, L', V), L' = L - 1 - start; for AdaSPEC
        #    the reference's forward KL to them (B, L')
        start = first_scored(mask)
        mask = mask[:, start:]
        with torch.no_grad():
            target_logits = continuation_logits(target, ids, start, vocab_size)
            reference_loss = None if reference is None else forward_kl(
                target_logits, continuation_logits(reference, ids, start, vocab_size),
                temperature)
        # 3. a step of the draft (AdaSPEC: on the tokens the reference shows are
        #    learnable), unless the loss, its gradient or the updated draft is broken
        result = distillation_step(draft, optimizer, ids, target_logits, mask, loss=loss,
                                   temperature=temperature, vocab_size=vocab_size,
                                   reference_loss=reference_loss, keep_fraction=keep_fraction,
                                   master=master)
        if result.loss is None:
            history["skipped"].append(step)
            continue
        history["loss"].append(result.loss)
        history["kept_fraction"].append(result.kept.sum().item() / max(1, mask.sum().item()))
        if eval_prompts and (step % eval_every == 0 or step == steps):
            evaluate(step)
    draft.eval()
    return history


def adaspec(target, draft, prompts, *, keep_fraction=0.4, reference_steps=None, **kwargs):
    """AdaSPEC: distil a reference copy of ``draft`` with forward KL, then ``draft``
    with token selection by the reference. Returns ``(history, reference)``."""
    reference = copy.deepcopy(draft)
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("eval_prompts", "loss")}
    if reference_steps is not None:
        ref_kwargs["steps"] = reference_steps
    distill(target, reference, prompts, loss="fkl", **ref_kwargs)
    reference.requires_grad_(False)
    history = distill(target, draft, prompts, reference=reference,
                      keep_fraction=keep_fraction, **kwargs)
    return history, reference
