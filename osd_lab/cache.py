"""The KV cache, one way on every transformers version the package allows.

Two things changed inside transformers 5.x, and this module hides both:

* the forward keyword: ``past_key_values=`` until 5.23, ``cache=`` from 5.24
  (the old name warns, and goes in 5.40). ``forward`` passes whichever the
  model's ``forward`` takes.
* ``DynamicCache.crop(n)``: up to 5.13, ``crop(0)`` empties the cache (0 is
  read as "keep 0 tokens"); from 5.14 it keeps everything, and from 5.24 a
  positive ``n`` is an error. ``rollback`` only ever calls ``crop`` with a
  negative count ("remove that many tokens"), which means the same everywhere.

Taught in ``notebooks/01_sampling_and_kv_cache``; used by every decoder.
"""

import functools
import inspect

import torch
from transformers import DynamicCache, PreTrainedModel


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty KV cache for ``model``."""
    return DynamicCache(config=model.config)


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The name under which ``model_class.forward`` takes its KV cache."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@functools.cache
def keeps_logits(model_class: type) -> bool:
    """Whether ``model_class.forward`` can compute logits for the last positions only."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def forward(model: PreTrainedModel, input_ids: torch.Tensor, cache: DynamicCache | None,
            keep: int | None = None, **kwargs):
    """``model(input_ids, <cache keyword>=cache, **kwargs)``; ``input_ids`` ``(B, T)``.

    The cache (if any) grows by the T positions read; returns the model's output.
    keep: logits at the last ``keep`` positions only, ``(B, keep, V)``
    (``logits_to_keep``, where the model takes it; else cut from all T): a
    prompt's other positions are never read, and at a 152k vocabulary they
    are most of the cost of reading a prompt.
    """
    if keep is not None and keeps_logits(type(model)):
        kwargs["logits_to_keep"] = keep
    output = model(input_ids, **{cache_keyword(type(model)): cache}, **kwargs)
    if keep is not None and output.logits.shape[1] > keep:
        output.logits = output.logits[:, -keep:]
    return output


def rollback(cache: DynamicCache, num_tokens: int) -> None:
    """Remove the last ``num_tokens`` positions from every layer of ``cache``."""
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if num_tokens > 0:  # never crop(0): it empties the cache before 5.14
        cache.crop(-num_tokens)


def keep_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only the batch rows ``rows`` (indices ``(B',)``) in every layer of ``cache``."""
    cache.batch_select_indices(rows)


def cached_keys_values(cache, layer_index: int):
    """The keys and values ``(B, H_kv, S, D)`` that ``cache`` holds for one layer."""
    layer = cache.layers[layer_index]
    return layer.keys, layer.values
