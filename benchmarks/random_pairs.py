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

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

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
