"""osd_lab: speculative decoding, from scratch to an online speculative decoder.

    import osd_lab as osd
    pair = osd.load_pair("zoo")
    out = osd.speculative_generate(pair.target, pair.draft, ids, max_new_tokens=32)

These names are the package's public API, the README's module table. The
plots and the dashboard are imported on first use, so that ``import osd_lab``
needs neither matplotlib nor ipywidgets (a GPU machine may lack them).
"""

import importlib

from osd_lab.batched import (bass_draft_len, batched_autoregressive_generate,
                             batched_speculative_generate)
from osd_lab.cache import keep_rows, new_cache, rollback
from osd_lab.checks import ArgumentError
from osd_lab.cost import (SpeculationCosts, decode_step_time, expected_tokens_per_step,
                          measure_cost_ratio, measure_costs, measure_pass_time,
                          measure_verify_ratio, optimal_draft_len, speedup)
from osd_lab.decoding import GenerationOutput, autoregressive_generate, speculative_generate
from osd_lab.distill import adaspec, add_lora, cut_prompts, default_lr, distill
from osd_lab.divergences import (CompactDistribution, compact_divergence, compress, forward_kl,
                                  jsd, masked_mean, reverse_kl, tvd)
from osd_lab.evaluation import acceptance_rate, alpha_by_domain, served_speed, speed_by_block
from osd_lab.medusa import MedusaHeads, MedusaModel, load_medusa_model
from osd_lab.metrics import acceptance_along_greedy, alpha_on_documents, perplexity
from osd_lab.models import ModelPair, load_pair
from osd_lab.online import LearnedRouter, OnlineSpeculativeDecoder, OracleRouter, make_stream
from osd_lab.policies import GoodputPolicy
from osd_lab.sampling import get_device, logits_to_probs, sample, set_seed
from osd_lab.streaming import (StreamingModel, Streams, load_streaming_model,
                               multi_stream_mask, streaming_generate)
from osd_lab.timing import clock, time_side_by_side
from osd_lab.verify import Verification, overlap, residual_distribution, verify

_LAZY = {"plot_alpha": "plots", "plot_tau": "plots", "Dashboard": "dashboard"}

__all__ = sorted([
    "ArgumentError", "CompactDistribution", "GenerationOutput", "GoodputPolicy", "LearnedRouter",
    "MedusaHeads", "MedusaModel", "ModelPair", "OnlineSpeculativeDecoder", "OracleRouter",
    "SpeculationCosts", "StreamingModel", "Streams", "Verification", "acceptance_along_greedy",
    "acceptance_rate", "adaspec", "add_lora", "alpha_by_domain", "alpha_on_documents",
    "autoregressive_generate", "bass_draft_len", "batched_autoregressive_generate",
    "batched_speculative_generate", "clock", "compact_divergence", "compress", "cut_prompts",
    "decode_step_time", "default_lr", "distill", "expected_tokens_per_step", "forward_kl",
    "get_device", "jsd", "keep_rows", "load_medusa_model", "load_pair", "load_streaming_model",
    "logits_to_probs", "make_stream", "masked_mean", "measure_cost_ratio", "measure_costs",
    "measure_pass_time", "measure_verify_ratio", "multi_stream_mask", "new_cache",
    "optimal_draft_len", "overlap", "perplexity", "residual_distribution", "reverse_kl",
    "rollback", "sample", "served_speed", "set_seed", "speculative_generate", "speed_by_block",
    "speedup", "streaming_generate", "time_side_by_side", "tvd", "verify", *_LAZY])


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'osd_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"osd_lab.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
