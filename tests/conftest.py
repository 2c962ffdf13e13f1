"""Shared test helpers: tiny random-initialised models of several architectures."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

# Tiny models gain nothing from threads, and extra threads fight the notebook kernels.
torch.set_num_threads(1)

TINY_VOCAB = 96
ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "qwen2")


def tiny_model(arch: str, seed: int = 0, vocab_size: int = TINY_VOCAB, layers: int = 2):
    """A random-initialised causal LM small enough to run in milliseconds."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                  tie_word_embeddings=False)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=layers, num_attention_heads=4,
                                             max_position_embeddings=128, **common))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=layers, n_head=4,
                                           n_positions=128, **common))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=layers,
                                                 num_attention_heads=4,
                                                 max_position_embeddings=128, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=layers, num_attention_heads=4,
                                             num_key_value_heads=2,
                                             max_position_embeddings=128, **common))
    else:
        raise ValueError(arch)
    # sharpen the random logits so greedy choices are not near-ties
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="session")
def zoo():
    from osd_lab.models import load_pair
    return load_pair("zoo", device="cpu")


def noisy_copy(model, noise: float = 0.5, seed: int = 0):
    """A draft that mostly agrees with ``model``: every weight plus Gaussian noise."""
    import copy
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in draft.parameters():
            if weight.numel() > 1:
                weight.add_(noise * weight.std() * torch.randn(weight.shape, generator=gen))
    return draft
