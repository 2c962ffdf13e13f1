"""Medusa-style heads (Cai et al. 2024): the baseline for Speculative Streaming.

Head j is one residual block on the model's last hidden state h (after the
final norm), ``h + SiLU(W_j h + b_j)``, read out by the model's own frozen LM
head: it guesses token t + j + 1 from position t. The heads are trained with
the same future n-gram objective, data and steps as the streams
(``python zoo/train_streams.py``) and decoded by the same loop,
``osd_lab.streaming.streaming_generate``. (Medusa proper gives each head its
own LM head, 1.6M more parameters per head on the zoo; sharing the frozen one
keeps the baseline small and trained in the same few minutes.)
Taught in ``notebooks/09_speculative_streaming``.
"""

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from osd_lab.checks import check_int
from osd_lab.streaming import (STREAMS_DIR, MainPass, check_base_model, load_weights,
                               load_zoo_target, main_stream, saved_settings)


class MedusaHeads(nn.Module):
    """``gamma`` residual blocks, one per future token."""

    def __init__(self, base: PreTrainedModel, gamma: int):
        super().__init__()
        check_base_model(base)
        check_int("gamma", gamma, 1)
        self.gamma = int(gamma)
        width = base.config.hidden_size
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(self.gamma))
        for block in self.blocks:  # start as the next-token head (SiLU(0) = 0)
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def settings(self) -> dict:
        return dict(gamma=self.gamma)


class MedusaModel(nn.Module):
    """A frozen base model with Medusa heads on its last hidden state."""

    def __init__(self, base: PreTrainedModel, heads: MedusaHeads):
        super().__init__()
        check_base_model(base)
        self.base = base.requires_grad_(False)
        self.heads = heads.to(base.device, base.dtype)

    @property
    def gamma(self) -> int:
        return self.heads.gamma

    @property
    def device(self) -> torch.device:
        return self.base.device

    def extra_parameters(self) -> int:
        """How many parameters the heads add to the base model."""
        return sum(p.numel() for p in self.heads.parameters())

    def forward(self, input_ids, cache, main_mask=None, position_ids=None, streams_at=None):
        """Main logits ``(B, T, V)`` (the base model's own) and head logits ``(B, T', gamma, V)``.

        Arguments as ``StreamingModel.forward``; ``streams_at`` picks the tokens
        whose heads to run (default all).
        """
        main = self.main_pass(input_ids, cache, main_mask, position_ids)
        if streams_at is None:
            streams_at = torch.arange(input_ids.shape[1])
        return main.logits, self.draft_logits(main, streams_at, cache)

    def main_pass(self, input_ids, cache, main_mask=None, position_ids=None) -> MainPass:
        """The base model's own pass, kept for ``draft_logits``."""
        out, main_mask, position_ids = main_stream(self.base, input_ids, cache, main_mask,
                                                   position_ids)
        return MainPass(out.logits, out.hidden_states, main_mask, position_ids)

    def draft_logits(self, main: MainPass, streams_at, cache=None) -> torch.Tensor:
        """Head logits ``(B, T', gamma, V)`` of the tokens ``streams_at`` of the
        pass ``main`` (the heads read its last hidden states, not the cache)."""
        last = main.hidden_states[-1][:, torch.as_tensor(streams_at, device=self.device)]
        heads = torch.stack([last + nn.functional.silu(block(last))
                             for block in self.heads.blocks], dim=2)  # (B, T', gamma, d)
        return self.base.lm_head(heads)


def load_medusa_model(name="zoo", *, base: PreTrainedModel | None = None,
                      device=None) -> MedusaModel:
    """The zoo target with its trained Medusa heads (``osd_lab/zoo/models/streams``)."""
    path = STREAMS_DIR if name == "zoo" else Path(name)
    base = base if base is not None else load_zoo_target(device)
    heads = MedusaHeads(base, **saved_settings(path, "medusaheads", base))
    return MedusaModel(base, load_weights(heads, path)).eval()
