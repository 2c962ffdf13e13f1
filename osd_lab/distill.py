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

Updating a pretrained draft (section "updating a real draft"): a learning rate
chosen by the draft's size (``default_lr``), LoRA adapters (``add_lora``,
through ``peft``) so that the served draft's base weights never move, float32
master weights for a half-precision draft (``master_weights``), and a guard
that keeps no copy of a large draft (``guarded_step``).
Taught in ``notebooks/04_distillspec`` and ``05_adaspec``.
"""

import copy
import random
import warnings

import torch
from tqdm.auto import tqdm

from osd_lab.cache import keeps_logits
from osd_lab.checks import (ArgumentError, check_choice, check_float, check_int,
                            check_prompt_list, check_seed, finite_spread)
from osd_lab.decoding import MODEL_EOS, autoregressive_generate
from osd_lab.divergences import (DIVERGENCES, CompactDistribution, forward_kl, masked_mean,
                                 token_divergence)
from osd_lab.evaluation import acceptance_rate
from osd_lab.models import context_length, output_vocab_size

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


UNDO_LIMIT = 10**8  # trainable weights: above this a step keeps no copy for its undo


def master_weights(model):
    """Float32 copies ``[(...), ...]`` of a half-precision ``model``'s trainable
    weights, for the optimiser to hold and step (mixed-precision training): a
    bfloat16 weight cannot move by less than about 2^-8 of itself, so the small
    steps of a low learning rate round away (3 steps at lr 1e-5 changed 3% of a
    0.5B draft's weights). ``guarded_step`` moves the gradients onto them and
    rounds the result back into the model. None when every trainable weight is
    float32 already (a float32 model, or LoRA adapters: ``add_lora``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if all(p.dtype == torch.float32 for p in trainable):
        return None
    return [p.detach().float().clone().requires_grad_(True) for p in trainable]


def guarded_step(model, optimizer, value, ids, master=None) -> bool:
    """One optimiser step on the loss ``value`` (gradient clipped to norm 1), kept
    only if it leaves a working model. Returns False, with the weights and the
    optimiser state as they were, when the loss or the gradient is not finite,
    or when after the step the weights are not finite, or the model's logits
    on ``ids`` ``(B, L)`` (the batch it trained on) are not finite and sane
    (``finite_spread``: softmax can use them).

    master: the optimiser's float32 copies of a half-precision model's
    trainable weights (``master_weights``): the gradient moves onto them, the
    step is taken there and rounded into the model.

    Memory: the undo saves the trainable weights and the optimiser state
    before the step, so only when there are at most ``UNDO_LIMIT`` trainable
    weights (LoRA adapters, a small draft). Full fine-tuning of a larger draft
    keeps no copy (for a 0.5B draft it would be 6 GB: weights and AdamW's two
    moments): a step is taken only with a finite loss and clipped gradient, and
    a broken model after it raises RuntimeError instead of being served."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(value):
        return False
    value.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    stepped = trainable if master is None else master
    if master is not None:  # the float32 copies take the gradient
        for weight, copy_ in zip(trainable, master):
            copy_.grad = None if weight.grad is None else weight.grad.float()
            weight.grad = None
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(stepped, 1.0)):
        optimizer.zero_grad(set_to_none=True)
        return False
    undo = sum(p.numel() for p in stepped) <= UNDO_LIMIT
    if undo:
        saved = [p.detach().clone() for p in stepped]
        state = copy.deepcopy(optimizer.state_dict())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # spent: freed before the check (2 GB for 0.5B)
    if master is not None:
        copy_weights(trainable, master)
    training = model.training
    model.eval()  # no dropout in the check
    with torch.no_grad():
        # a NaN or inf weight makes its tensor's sum NaN or inf: one sync for all
        sums = torch.stack([p.sum(dtype=torch.float32) for p in stepped])
        ok = bool(sums.isfinite().all()) and finite_spread(model(ids).logits)
    model.train(training)
    if ok:
        return True
    if not undo:
        raise RuntimeError(
            f"an update left the draft's weights or logits broken (not finite), and with "
            f"{sum(p.numel() for p in stepped):,} trainable weights (over UNDO_LIMIT = "
            f"{UNDO_LIMIT:,}) no copy was kept to undo it: lower the learning rate "
            f"(lr={optimizer.param_groups[0]['lr']:g}) or train LoRA adapters (lora_rank)")
    # e.g. lr=1e10: finite weights whose logits overflow. Undo the step.
    copy_weights(stepped, saved)
    if master is not None:
        copy_weights(trainable, master)
    optimizer.load_state_dict(state)
    return False


def copy_weights(destination, source):
    """Copy each tensor of ``source`` into the same-shaped one of ``destination``
    (rounding to its dtype)."""
    with torch.no_grad():
        for weight, value in zip(destination, source):
            weight.copy_(value)


# -----------------------------------------------------------------------------
# updating a real draft: learning rate by size, LoRA adapters

SMALL_DRAFT = 10**7  # parameters; the zoo's draft has about 2M


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def default_lr(model, lora_rank=None) -> float:
    """A learning rate for online updates of ``model``, by its size.

    A first AdamW step moves every weight by about lr whatever its gradient,
    so what a draft tolerates shrinks as it grows (fine-tuning recipes use
    ~1e-5 for 0.5B models). Full fine-tuning: 1e-3 under ``SMALL_DRAFT``
    parameters (the zoo's 2M draft was trained from scratch at 1e-3), 1e-4
    under 10 times that, else 1e-5 (at 1e-3 a pretrained 0.5B Qwen draft's
    alpha went 0.80 -> 0.00 in 4 updates). LoRA (``lora_rank`` set): 10 times
    that, at most 1e-3 (the adapters start at zero and hold few weights;
    1e-4 for a 0.5B draft is the usual LoRA setting)."""
    size = num_parameters(model)
    lr = 1e-3 if size < SMALL_DRAFT else 1e-4 if size < 10 * SMALL_DRAFT else 1e-5
    return lr if lora_rank is None else min(1e-3, 10 * lr)


def default_warmup_updates(model) -> int:
    """Updates over which the learning rate ramps up linearly: none for a small
    draft such as the zoo's (its updates are cheap to get wrong), 8 otherwise."""
    return 0 if num_parameters(model) < SMALL_DRAFT else 8


def check_lora_rank(model, rank) -> None:
    check_int("lora_rank", rank, 1, model.get_input_embeddings().embedding_dim)


def add_lora(model, rank):
    """Add LoRA adapters (Hu et al., 2106.09685) of rank ``rank`` to every linear
    layer of ``model``'s blocks, in place, and freeze all other weights; returns
    ``model``. Each layer then computes W x + B A x with A ``(rank, in)`` and B
    ``(out, rank)``; B starts at zero, so the model's outputs are unchanged
    until a step. The adapters are kept in float32 even in a bfloat16 or
    float16 model (their own master weights: small steps are not rounded away).
    The model keeps its class and its forward: the decoders use it as before.
    Needs ``peft``, a dependency of ``osd_lab``."""
    check_lora_rank(model, rank)
    try:
        import peft
    except ImportError as err:
        raise ImportError("lora_rank needs the peft package, which is not installed "
                          "(osd_lab depends on it): pip install 'peft>=0.18.0', or pass "
                          "lora_rank=None for full fine-tuning") from err
    config = peft.LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                             target_modules="all-linear")  # all but the output layer
    with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft says it transposes them
        warnings.simplefilter("ignore", UserWarning)
        peft.inject_adapter_in_model(config, model)
    for weight in model.parameters():
        if weight.requires_grad:  # only the adapters
            weight.data = weight.data.float()
    return model


def merge_lora(model):
    """A copy of ``model`` with its LoRA adapters (``add_lora``) folded into
    the base weights (W + B A): a plain transformers model again, which
    ``save_pretrained`` writes as a standard checkpoint. ``model`` is untouched."""
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):  # a LoRA layer
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, module.base_layer)
    return merged


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
# the training loop

def distill(draft, target, prompts, loss="fkl", data="target", steps=60, lr=1e-3,
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
    steps leave the weights and the optimiser state untouched: ``guarded_step``).
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
        # 2. teacher logits (no gradient) and student logits, aligned at t -> t + 1,
        #    from the first continuation position on: (B, L', V), L' = L - 1 - start
        start = first_scored(mask)
        mask = mask[:, start:]
        with torch.no_grad():
            target_logits = continuation_logits(target, ids, start, vocab_size)
            reference_logits = (continuation_logits(reference, ids, start, vocab_size)
                                if reference else None)
        draft.train()
        draft_logits = continuation_logits(draft, ids, start, vocab_size)
        per_token = token_divergence(loss, target_logits, draft_logits, temperature)
        num_continuation = mask.sum().item()
        # 3. AdaSPEC: train only on the tokens the reference shows are learnable
        if reference is not None:
            mask = select_tokens(forward_kl(target_logits, draft_logits, temperature),
                                 forward_kl(target_logits, reference_logits, temperature),
                                 mask, keep_fraction)
        value = masked_mean(per_token, mask)
        # 4. a step, unless the loss, its gradient or the updated draft is broken
        if not guarded_step(draft, optimizer, value, ids, master):
            history["skipped"].append(step)
            continue
        history["loss"].append(value.item())
        history["kept_fraction"].append(mask.sum().item() / max(1, num_continuation))
        if eval_prompts and (step % eval_every == 0 or step == steps):
            evaluate(step)
    draft.eval()
    return history


def adaspec(draft, target, prompts, keep_fraction=0.4, reference_steps=None, **kwargs):
    """AdaSPEC: distil a reference copy of ``draft`` with forward KL, then ``draft``
    with token selection by the reference. Returns ``(history, reference)``."""
    reference = copy.deepcopy(draft)
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("eval_prompts", "loss")}
    if reference_steps is not None:
        ref_kwargs["steps"] = reference_steps
    distill(reference, target, prompts, loss="fkl", **ref_kwargs)
    reference.requires_grad_(False)
    history = distill(draft, target, prompts, reference=reference,
                      keep_fraction=keep_fraction, **kwargs)
    return history, reference
