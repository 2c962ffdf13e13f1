"""Random-initialised model pairs with the shapes of real ones, for timing only.

What a forward pass costs depends on a model's shapes, not on its trained
weights: a random Qwen2.5-1.5B costs per token what the real one costs, and
needs no download. Their outputs mean nothing and their alpha is an accident
of the random weights (near 0, or near 1 when both models merely repeat a
token), so on these pairs a benchmark measures costs (tokens/s of each model,
c, the verify ratio), not the speedup a trained pair reaches; the cost model
turns those costs into the speedup a given alpha would give.

    from random_pairs import random_pair  # from a script in benchmarks/
    pair = random_pair("random-qwen2.5", device="cuda", dtype=torch.bfloat16)
"""

import copy
import itertools
import math
import os
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from osd_lab.checks import check_float
from osd_lab.cache import forward, new_cache
from osd_lab.models import ZOO_DIR, ModelPair, shared_vocab_size

# The config.json shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (tied embeddings, 151936 ids),
# and a two-layer pair of the same architecture for dry runs on a CPU.
QWEN2_SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "tiny-1": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096),
    "tiny-2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096),
    "tiny-4": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096),
}
RANDOM_PAIRS = {  # name: (draft shape, target shape)
    "random-qwen2.5": ("0.5b", "1.5b"),
    "random-qwen2-tiny": ("tiny-1", "tiny-2"),
}


def random_model(shape: str, tokenizer, device, dtype, seed: int = 0) -> Qwen2ForCausalLM:
    """A Qwen2 causal LM of ``QWEN2_SHAPES[shape]`` with seeded random weights.

    transformers initialises the padding token's embedding row to zeros, and the
    zoo tokenizer's padding token is also its beginning-of-text token, which
    starts every prompt: the first position's hidden state would then be exactly
    zero through all layers, and each RMSNorm's backward multiplies a zero
    input's gradient by 1/sqrt(eps) = 1000, so 24 layers overflow to NaN
    gradients (every update of a random 0.5B draft was skipped). A trained
    checkpoint has no such row; this one is random like the rest."""
    torch.manual_seed(seed)
    config = Qwen2Config(**QWEN2_SHAPES[shape], tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1e6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):  # initialised where it runs: fast on a GPU
        model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random like the others, as a trained row would be: see below
        model.get_input_embeddings().weight[config.pad_token_id].normal_(
            0.0, config.initializer_range)
    return model.to(dtype).eval()


def shared_copy(model):
    """A second module object holding the same weight tensors as ``model`` (no
    new memory): its own hooks and generation config, the same outputs."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def random_pair(name: str, device, dtype=None, self_draft: bool = False) -> ModelPair:
    """The pair ``RANDOM_PAIRS[name]`` on ``device`` with the zoo's tokenizer (its ids
    fit any vocabulary here). dtype: default bfloat16 on a GPU, float32 on a CPU.
    self_draft: the target drafts for itself (a ``shared_copy``): alpha = 1, the
    upper bound, and what is left of the time is the decoder's own overhead."""
    if name not in RANDOM_PAIRS:
        raise ValueError(f"name must be one of {sorted(RANDOM_PAIRS)}, got {name!r}")
    device = torch.device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    draft_shape, target_shape = RANDOM_PAIRS[name]
    target = random_model(target_shape, tokenizer, device, dtype, seed=0)
    if self_draft:
        draft, name = shared_copy(target), f"{name} (self-draft)"
    else:
        draft = random_model(draft_shape, tokenizer, device, dtype, seed=1)
    return ModelPair(target, draft, tokenizer, name, shared_vocab_size(target, draft, tokenizer))


# -----------------------------------------------------------------------------
# pairs with a chosen alpha: a target drafted for by its own first layers

LAYERED_PAIRS = {  # name: (target shape, draft layers): the draft costs about a third
    "layered-qwen2.5": ("1.5b", 6),
    "layered-qwen2-tiny": ("tiny-4", 1),
}
SHARPNESS = 12.0  # final-norm gain: random logits peaked like a trained model's
ALPHA_TOLERANCE = 0.03  # calibration stops within this of the alpha asked for
MIN_SCALE = 1e-3  # the smallest scale calibration tries (alpha near 1 at real shapes)


@dataclass
class LayeredPair(ModelPair):
    """A ``ModelPair`` whose draft is the target's first ``draft_layers``
    layers; ``scale``: the target's upper residual branches' current scale."""

    draft_layers: int = 1
    scale: float = 1.0


def parameter_count(shape: dict) -> int:
    """Weights of an untied Qwen2 model of ``shape`` (embeddings, layers, head)."""
    h, f, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_key_value_heads"]
    head_dim = h // shape["num_attention_heads"]
    attention = h * h * 2 + 2 * h * kv * head_dim + h + 2 * kv * head_dim  # q, o, k, v, biases
    layer = attention + 3 * h * f + 2 * h
    return shape["num_hidden_layers"] * layer + 2 * shape["vocab_size"] * h + h


def free_memory_bytes(device: torch.device) -> int:
    """Bytes the device can still hand out: free GPU memory, or MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except OSError:  # not Linux: the machine's whole memory, an upper bound
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def set_scale(pair, scale: float) -> None:
    """Scale the residual branches (attention and MLP outputs) of the target's
    layers above the draft's to ``scale`` times their random values, in place
    (from a nonzero scale: 0 is final)."""
    if scale == pair.scale:
        return
    with torch.no_grad():
        for layer in pair.target.model.layers[pair.draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(scale / pair.scale)
            layer.mlp.down_proj.weight.mul_(scale / pair.scale)
    pair.scale = scale


@torch.inference_mode()
def greedy_alpha(target, draft, prompts: torch.Tensor, tokens: int) -> tuple[float, float]:
    """Exact greedy alpha along the target's own greedy continuations (the
    share of its new tokens that the draft's argmax, reading the same prefix,
    agrees with) and the draft's median confidence there (its top
    probability: what a confidence rule reads). prompts: ``(B, T)`` ids,
    decoded as one batch (no end-of-text stop: random weights rarely write it)."""
    cache = new_cache(target)
    logits = forward(target, prompts, cache, keep=1).logits[:, -1]  # (B, V)
    new = []
    for _ in range(tokens):
        new.append(logits.argmax(-1, keepdim=True))  # (B, 1)
        logits = forward(target, new[-1], cache).logits[:, -1]
    new = torch.cat(new, 1)  # (B, N)
    sequence = torch.cat([prompts, new], 1)  # (B, T + N)
    draft_logits = draft(sequence).logits[:, prompts.shape[1] - 1:-1]  # (B, N, V)
    confidence = draft_logits.float().softmax(-1).amax(-1)  # (B, N)
    alpha = (draft_logits.argmax(-1) == new).float().mean().item()
    return alpha, confidence.median().item()


def calibrate(pair, alpha: float, tokens: int = 16, num_prompts: int = 8,
              steps: int = 7) -> tuple[float, float]:
    """Set the scale of the target's upper residual branches so that the greedy
    alpha of ``pair`` (a ``LayeredPair``) is about ``alpha``: bisection on the
    scale's logarithm in [MIN_SCALE, the current scale] (a smaller scale: the
    upper layers add less, alpha rises), so calibrate to rising alphas in
    turn. alpha = 1 sets the scale to 0 (the upper layers add nothing), which
    is final. Returns ``(scale, measured alpha, the draft's median
    confidence)``; the draft, and so its confidence, never changes."""
    check_float("alpha", alpha, 0, 1, low_open=True)
    if pair.scale == 0:
        raise ValueError("this pair was calibrated to alpha = 1 (scale 0), which cannot be "
                         "undone: build a new layered_pair")
    generator = torch.Generator().manual_seed(1)  # calibration prompts, not the benchmark's
    prompts = torch.randint(5, len(pair.tokenizer), (num_prompts, 12),
                            generator=generator).to(pair.device)

    def alpha_at(scale):
        set_scale(pair, scale)
        return greedy_alpha(pair.target, pair.draft, prompts, tokens)

    if alpha == 1:
        return 0.0, *alpha_at(0.0)
    low, high = math.log(MIN_SCALE), math.log(pair.scale)  # alpha(low) >= alpha(high)
    best = (pair.scale, *alpha_at(pair.scale))
    for _ in range(steps):
        if abs(best[1] - alpha) <= ALPHA_TOLERANCE:
            break
        middle = (low + high) / 2
        measured, confidence = alpha_at(math.exp(middle))
        if abs(measured - alpha) < abs(best[1] - alpha):
            best = (math.exp(middle), measured, confidence)
        low, high = (middle, high) if measured > alpha else (low, middle)
    set_scale(pair, best[0])  # measured already: no second run
    return best


def layered_pair(name: str, device, dtype=None, seed: int = 0) -> ModelPair:
    """A target of real shape with random weights, drafted for by its own first
    layers (the same tensors: no memory of its own) with the target's final
    norm and LM head: ``LAYERED_PAIRS[name]`` gives the target's shape and how
    many layers the draft runs, which sets c. Its alpha is set afterwards with
    ``calibrate`` (scaling the target's upper residual branches down). The head
    is untied (a random tied head makes a model repeat its input token), and
    the final norm's gain ``SHARPNESS`` makes the distributions as peaked as a
    trained model's, so that a confidence rule has something to read.

    Returns a ``LayeredPair`` (scale 1 until calibrated). Refused before anything is allocated
    when the device cannot hold the target."""
    if name not in LAYERED_PAIRS:
        raise ValueError(f"name must be one of {sorted(LAYERED_PAIRS)}, got {name!r}")
    device = torch.device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    shape_name, draft_layers = LAYERED_PAIRS[name]
    shape = QWEN2_SHAPES[shape_name]
    needed = parameter_count(shape) * torch.finfo(dtype).bits // 8
    free = free_memory_bytes(device)
    if needed > 0.9 * free:
        raise ValueError(f"{name} needs {needed / 2**30:.1f} GiB of weights in {dtype} but "
                         f"{device} has {free / 2**30:.1f} GiB free: use a smaller pair "
                         f"(e.g. layered-qwen2-tiny), bfloat16, or another device")
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    torch.manual_seed(seed)
    config = Qwen2Config(**shape, tie_word_embeddings=False, max_position_embeddings=32768,
                         rope_theta=1e6, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):
        target = Qwen2ForCausalLM(config)
    with torch.no_grad():
        target.get_input_embeddings().weight[config.pad_token_id].normal_(
            0.0, config.initializer_range)  # see random_model
        target.model.norm.weight.mul_(SHARPNESS)
    target = target.to(dtype).eval()
    draft_config = copy.deepcopy(config)
    draft_config.num_hidden_layers = draft_layers
    if getattr(draft_config, "layer_types", None):
        draft_config.layer_types = draft_config.layer_types[:draft_layers]
    with torch.device("meta"):
        draft = Qwen2ForCausalLM(draft_config)
    # the target's own modules: embeddings, first layers, final norm, head
    draft.model.embed_tokens = target.model.embed_tokens
    draft.model.layers = torch.nn.ModuleList(target.model.layers[:draft_layers])
    draft.model.norm, draft.model.rotary_emb = target.model.norm, target.model.rotary_emb
    draft.lm_head = target.lm_head
    draft.eval()
    return LayeredPair(target, draft, tokenizer, name,
                       shared_vocab_size(target, draft, tokenizer), draft_layers)
