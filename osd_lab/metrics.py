"""How good is a model, and how well does a draft match its target?

* ``perplexity``: exp of the mean next-token loss on held-out text.
* ``acceptance_along_greedy``: the exact acceptance rate
  alpha = sum_v min(p(v), q(v)) of target p and draft q at each position of
  the target's own greedy continuation, and how often the two argmaxes agree.
* ``alpha_on_documents``: the same alpha at every position of held-out
  documents, one forward pass per model (notebooks 04 and 05).
Taught in ``notebooks/00_meet_the_zoo``.
"""

import math

import torch

from osd_lab.checks import ArgumentError, check_int
from osd_lab.decoding import autoregressive_generate, check_prompt
from osd_lab.models import context_length
from osd_lab.sampling import logits_to_probs
from osd_lab.step import MODEL_EOS
from osd_lab.verify import overlap


@torch.inference_mode()
def perplexity(model, tokenizer, texts, *, max_len: int = 256) -> float:
    """Per-token perplexity of ``model`` on ``texts`` (each cut to ``max_len`` tokens).

    A text still longer than the model's context after the cut is refused: the
    model has no position for its last tokens (pass a smaller ``max_len``)."""
    check_int("max_len", max_len, low=2)
    if isinstance(texts, str) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    cut = [tokenizer(text, return_tensors="pt").input_ids[:, :max_len] for text in texts]
    limit = context_length(model)
    for i, ids in enumerate(cut):
        if limit is not None and ids.shape[1] > limit:
            raise ArgumentError(f"texts[{i}] is {ids.shape[1]} tokens long after the cut to "
                                f"max_len={max_len}, more than the model's context of {limit} "
                                f"tokens: pass max_len={limit} or less")
    total_loss, total_tokens = 0.0, 0
    for ids in cut:
        ids = ids.to(model.device)
        n = ids.shape[1] - 1  # number of predicted tokens
        total_loss += model(ids, labels=ids).loss.item() * n
        total_tokens += n
    if total_tokens == 0:
        raise ValueError("texts must hold a text of at least 2 tokens: nothing was predicted")
    return math.exp(total_loss / total_tokens)


@torch.inference_mode()
def acceptance_along_greedy(target, draft, input_ids, num_tokens: int = 32, *,
                            temperature: float = 1.0, vocab_size: int | None = None,
                            eos_token_id=MODEL_EOS) -> dict:
    """Alpha and greedy agreement along the target's greedy continuation of a prompt.

    input_ids: ``(1, T)`` or ``(T,)`` prompt. The target continues it greedily for
    ``num_tokens`` tokens, or until ``eos_token_id`` (included: what comes
    after the end of a document is another document, maybe of another
    domain; default ``"model"``, the target's generation config; None
    measures past it); both models then score the whole sequence in one
    pass, and at each continuation position we compare their distributions
    (processed at ``temperature``) on the first ``vocab_size`` ids.
    Returns ``{"alpha": (N,), "agree": (N,) bool}`` tensors.
    """
    check_int("num_tokens", num_tokens, low=1)
    input_ids = check_prompt(target, input_ids, num_tokens)  # (1, T), as the decoders take it
    continuation = autoregressive_generate(target, input_ids, num_tokens,
                                           eos_token_id=eos_token_id).tokens
    sequence = torch.cat([input_ids.to(target.device), continuation[None]], dim=1)
    prompt_len = input_ids.shape[1]
    positions = slice(prompt_len - 1, sequence.shape[1] - 1)  # predict each new token
    p_logits = target(sequence).logits[0, positions, :vocab_size]  # (N, V)
    q_logits = draft(sequence).logits[0, positions, :vocab_size]  # (N, V)
    p = logits_to_probs(p_logits, temperature)
    q = logits_to_probs(q_logits, temperature)
    return {"alpha": overlap(p, q), "agree": p_logits.argmax(-1) == q_logits.argmax(-1)}


@torch.inference_mode()
def alpha_on_documents(target, draft, documents, *, temperatures=(1.0,),
                       vocab_size=None) -> dict:
    """Exact alpha at every position of held-out documents, one pass per model.

    documents: list of ``(1, T)`` token ids. At each position both models
    predict the document's next token; alpha there is the chance that a
    drafted token would be accepted, had the target written this text.
    Returns ``{temperature: (mean, standard error)}`` over documents of each
    document's mean alpha.
    """
    if not documents:
        raise ValueError(f"documents must be a non-empty list of (1, T) token ids, "
                         f"got {documents!r}")
    per_doc = {t: [] for t in temperatures}
    for ids in documents:
        ids = ids.to(target.device)
        p_logits = target(ids).logits[0, :-1, :vocab_size]  # (T - 1, V)
        q_logits = draft(ids).logits[0, :-1, :vocab_size]  # (T - 1, V)
        for t in temperatures:
            alpha = overlap(logits_to_probs(p_logits, t), logits_to_probs(q_logits, t))
            per_doc[t].append(alpha.mean().item())
    stats = {}
    for t, values in per_doc.items():
        values = torch.tensor(values)
        error = values.std().item() / len(values) ** 0.5 if len(values) > 1 else 0.0
        stats[t] = (values.mean().item(), error)
    return stats
