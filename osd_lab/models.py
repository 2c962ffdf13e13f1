"""Load a (target, draft) pair of causal LMs that share one tokenizer.

``load_pair()`` gives the embedded zoo (offline, shipped with the package);
``load_pair("qwen2.5")`` a real Hugging Face pair by preset; and
``load_pair(("target/id/or/path", "draft/id/or/path"))`` any pair. Taught in
``notebooks/00_meet_the_zoo``.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from osd_lab.sampling import get_device

ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "models"

# Hugging Face pairs as (target, draft), the package's order everywhere; each pair
# shares one tokenizer.
PRESETS = {
    "qwen2.5": ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
    "pythia": ("EleutherAI/pythia-1.4b", "EleutherAI/pythia-70m"),
    "smollm2": ("HuggingFaceTB/SmolLM2-1.7B", "HuggingFaceTB/SmolLM2-135M"),
    "gpt2": ("openai-community/gpt2-large", "openai-community/gpt2"),
}


@dataclass
class ModelPair:
    """A target model, its draft and their shared tokenizer."""

    target: PreTrainedModel
    draft: PreTrainedModel
    tokenizer: object  # a transformers fast tokenizer
    name: str
    vocab_size: int  # logits are compared on token ids [0, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.target.device


def output_vocab_size(model: PreTrainedModel) -> int:
    """Number of logits the model produces per position (its padded vocabulary)."""
    return model.get_output_embeddings().weight.shape[0]


def shared_vocab_size(target: PreTrainedModel, draft: PreTrainedModel,
                      tokenizer=None) -> int:
    """The vocabulary both models score, or ``ValueError`` if there is none.

    Checkpoints of one family often pad their embedding matrices differently
    (e.g. 151936 vs 152064 rows); the ids the tokenizer can produce must lie
    inside both, and logits are compared on the common prefix.
    """
    size = min(output_vocab_size(target), output_vocab_size(draft))
    if tokenizer is not None and len(tokenizer) > size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the models score "
                         f"only {size}: these models do not belong to this tokenizer")
    return size


def check_same_tokenizer(draft_tokenizer, target_tokenizer, names=("draft", "target")):
    """Refuse a pair whose tokenizers map text to different ids."""
    draft_vocab, target_vocab = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if draft_vocab != target_vocab:
        only_draft = len(draft_vocab.keys() - target_vocab.keys())
        only_target = len(target_vocab.keys() - draft_vocab.keys())
        raise ValueError(
            f"{names[0]} and {names[1]} use different tokenizers ({len(draft_vocab)} vs "
            f"{len(target_vocab)} tokens; {only_draft} only in the draft, {only_target} "
            f"only in the target). Speculative decoding compares the two models' "
            f"distributions token by token, so both must share one vocabulary.")


def warn_if_draft_larger(target, draft, name="this pair") -> None:
    """Warn when the draft has more weights than the target: drafting then
    costs more than the target's own decoding saves."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in (draft, target)]
    if sizes[0] > sizes[1]:
        warnings.warn(f"{name}: the draft ({sizes[0] / 1e6:.0f}M parameters) is larger than "
                      f"the target ({sizes[1] / 1e6:.0f}M): speculative decoding cannot be "
                      f"faster than the target alone. Pass (target, draft) in that order.",
                      stacklevel=3)


def _load(path_or_id, dtype, local_files_only, what):
    try:
        # transformers (5.0-5.24) looks for a peft adapter config on the hub
        # even with local_files_only, unless its adapter_kwargs say so too
        model = AutoModelForCausalLM.from_pretrained(
            path_or_id, dtype=dtype, local_files_only=local_files_only,
            adapter_kwargs={"local_files_only": local_files_only})
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=local_files_only)
    except OSError as err:
        raise OSError(
            f"could not load {what} {path_or_id!r} from disk or the Hugging Face cache. "
            f"Download it once with `hf download {path_or_id}` (needs network), or call "
            f"load_pair(..., allow_download=True).") from err
    return model, tokenizer


# the zoo's pairs: its target with the draft trained on sql only ("zoo", the one the
# notebooks teach with), or with the same-shaped draft trained on all four domains
# ("zoo-all": python zoo/train.py --only draft --draft-domain all
# --draft-name draft-all; README, "Choosing the default draft")
ZOO_DRAFTS = {"zoo": "draft", "zoo-all": "draft-all"}


def load_zoo(device=None, dtype=torch.float32, name="zoo") -> ModelPair:
    """The embedded pairs trained by ``python zoo/train.py``: ``name``
    is a key of ``ZOO_DRAFTS``."""
    if not (ZOO_DIR / "target").is_dir():
        raise FileNotFoundError(f"the zoo is missing at {ZOO_DIR}; rebuild it with "
                                f"`python zoo/train.py` (in the repository)")
    device = get_device(device)
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    target, draft = (AutoModelForCausalLM.from_pretrained(ZOO_DIR / part, dtype=dtype)
                     .to(device).eval() for part in ("target", ZOO_DRAFTS[name]))
    return ModelPair(target, draft, tokenizer, name, shared_vocab_size(target, draft, tokenizer))


def load_pair(name="zoo", *, device=None, dtype=None, allow_download=False) -> ModelPair:
    """Load a target, its draft and their tokenizer, in eval mode on ``device``.

    name: ``"zoo"`` (the offline default; ``"zoo-all"``: its target with a
        draft trained on all four domains), a key of ``PRESETS``, or a tuple
        ``(target_id_or_path, draft_id_or_path)``.
    device: defaults to ``get_device()``: ``OSD_LAB_DEVICE`` if set, else cuda,
        then mps, then cpu.
    dtype: defaults to float32, except bfloat16 for hub models on a GPU.
    allow_download: hub weights are only read from the local cache unless this
        is True, so nothing is downloaded behind a user's back.
    """
    if isinstance(name, str) and name in ZOO_DRAFTS:
        return load_zoo(device, dtype or torch.float32, name)
    if isinstance(name, str):
        if name not in PRESETS:
            raise ValueError(f"unknown pair {name!r}: use 'zoo', 'zoo-all', one of "
                             f"{sorted(PRESETS)}, "
                             f"or a (target, draft) tuple of hub ids or paths")
        target_id, draft_id = PRESETS[name]
    else:
        if not (isinstance(name, tuple) and len(name) == 2
                and all(isinstance(part, (str, os.PathLike)) for part in name)):
            raise ValueError(f"name must be 'zoo', 'zoo-all', one of {sorted(PRESETS)}, or a "
                             f"(target, draft) tuple of two hub ids or paths, got {name!r}")
        target_id, draft_id = name
        name = f"{draft_id} -> {target_id}"
    device = get_device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    try:
        draft, draft_tok = _load(draft_id, dtype, not allow_download, "draft")
        target, target_tok = _load(target_id, dtype, not allow_download, "target")
    except OSError as err:
        raise OSError(f"pair {name!r}: {err}") from err.__cause__
    check_same_tokenizer(draft_tok, target_tok, (draft_id, target_id))
    warn_if_draft_larger(target, draft, name)
    vocab_size = shared_vocab_size(target, draft, target_tok)
    return ModelPair(target.to(device).eval(), draft.to(device).eval(), target_tok, name,
                     vocab_size)


def context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings allow (None: unknown)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None
