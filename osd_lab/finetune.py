"""Fine-tuning hardware for a draft that is updated while it serves.

What a distillation step needs around it when the draft is a real,
pretrained model: a learning rate and a warm-up chosen by the draft's size
(``default_lr``, ``default_warmup_updates``), LoRA adapters (Hu et al.,
2106.09685; ``add_lora``, through ``peft``) so that the served draft's base
weights never move, and ``merge_lora`` to fold them back in; float32 master
weights for a half-precision draft (``master_weights``); and
``guarded_step``, an optimiser step that never leaves a broken draft behind
(undone where a copy is affordable, an error where it is not).
``osd_lab.distill`` and ``osd_lab.online`` train through these.
Used in ``notebooks/10_real_pair`` (README, "Real pairs: memory and LoRA").
"""

import copy
import warnings

import torch

from osd_lab.checks import check_int, finite_spread

SMALL_DRAFT = 10**7  # parameters; the zoo's draft has about 2M
UNDO_LIMIT = 10**8  # trainable weights: above this a step keeps no copy for its undo


# -----------------------------------------------------------------------------
# learning rate and warm-up by the draft's size

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


# -----------------------------------------------------------------------------
# LoRA adapters

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
# the optimiser step: master weights, and an undo for a step that breaks the draft

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
