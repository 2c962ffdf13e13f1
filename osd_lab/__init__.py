"""osd_lab: speculative decoding, from scratch to an online speculative decoder.

    import osd_lab as osd
    pair = osd.load_pair("zoo")
    out = osd.speculative_generate(pair.target, pair.draft, ids, max_new_tokens=32)

These are the names a learner calls (at most 35); everything else stays in
its module (``osd_lab.step``, ``osd_lab.cache``, ...), as the README's
module table lists. The plots and the dashboard are imported on first use,
so that ``import osd_lab`` needs neither matplotlib nor ipywidgets (a GPU
machine may lack them).
"""

import importlib

from osd_lab.batched import batched_autoregressive_generate, batched_speculative_generate
from osd_lab.checks import ArgumentError
from osd_lab.cost import expected_tokens_per_step, optimal_draft_len, speedup
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.distill import adaspec, distill
from osd_lab.evaluation import acceptance_rate, alpha_by_domain, served_speed
from osd_lab.measure import measure_costs
from osd_lab.medusa import load_medusa_model
from osd_lab.metrics import perplexity
from osd_lab.models import ModelPair, load_pair
from osd_lab.online import OnlineSpeculativeDecoder, make_stream
from osd_lab.policies import GoodputPolicy
from osd_lab.sampling import get_device, logits_to_probs, sample, set_seed
from osd_lab.step import DecodingStats, GenerationOutput
from osd_lab.streaming import load_streaming_model, streaming_generate
from osd_lab.timing import time_side_by_side
from osd_lab.verify import overlap, verify

_LAZY = {"plot_alpha": "plots", "plot_tau": "plots", "Dashboard": "dashboard"}

__all__ = sorted([
    # models and sampling
    "load_pair", "ModelPair", "get_device", "set_seed", "logits_to_probs", "sample",
    # decoding: one speculative step, every decoder
    "autoregressive_generate", "speculative_generate", "batched_autoregressive_generate",
    "batched_speculative_generate", "streaming_generate", "load_streaming_model",
    "load_medusa_model", "GenerationOutput", "DecodingStats", "verify", "overlap",
    # when it is fast
    "GoodputPolicy", "expected_tokens_per_step", "speedup", "optimal_draft_len",
    "measure_costs", "time_side_by_side",
    # distillation, evaluation, online
    "distill", "adaspec", "perplexity", "acceptance_rate", "alpha_by_domain",
    "OnlineSpeculativeDecoder", "make_stream", "served_speed", "ArgumentError", *_LAZY])


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'osd_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"osd_lab.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
