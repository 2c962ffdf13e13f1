"""Shared test helpers: tiny random-initialised models, the zoo, and the devices to test on.

A test that takes a ``device`` argument runs once per device: ``cpu`` always,
``cuda`` (skipped, with the reason, where there is none) and ``mps`` where
torch was built with it. ``OSD_LAB_TEST_DEVICE=cuda`` (or ``cpu``, ``mps``,
or a comma-separated list) runs only those, and fails at once if one is
missing. A test that also takes ``dtype`` runs in float32 everywhere and, on
CUDA, in bfloat16 and float16 too. Such tests carry the ``device`` mark:
``pytest -m device`` selects them (``scripts/gpu_check.sh`` does).
"""

import functools
import math
import os
from itertools import product

import pytest
import torch
from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from osd_lab.sampling import logits_to_probs

# Tiny models gain nothing from threads, and extra threads fight the notebook kernels.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one thread, whatever the test before it set (the
    main job sets ``--threads``); the online decoder's "auto" update mode reads it."""
    torch.set_num_threads(1)
    yield

TINY_VOCAB = 96
ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "qwen2")

# -----------------------------------------------------------------------------
# devices and dtypes

DEVICES = ("cpu", "cuda", "mps")
HALF_DTYPES = {"cuda": (torch.bfloat16, torch.float16)}  # besides float32


def missing_reason(device: str) -> str | None:
    """Why ``device`` cannot run here, or None when it can."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if device == "mps" and not torch.backends.mps.is_available():
        return "no MPS device here (torch.backends.mps.is_available() is False)"
    return None


def selected_devices() -> tuple[str, ...]:
    """The devices to test on: ``OSD_LAB_TEST_DEVICE``, else all that may exist."""
    chosen = os.environ.get("OSD_LAB_TEST_DEVICE", "").strip()
    if not chosen:
        return tuple(d for d in DEVICES if d != "mps" or torch.backends.mps.is_built())
    names = tuple(name.strip() for name in chosen.split(","))
    for name in names:
        if name not in DEVICES:
            raise pytest.UsageError(f"OSD_LAB_TEST_DEVICE must name devices among {DEVICES}, "
                                    f"separated by commas; got {chosen!r}")
        if missing_reason(name):
            raise pytest.UsageError(f"OSD_LAB_TEST_DEVICE={chosen!r} asks for {name}, but "
                                    f"{missing_reason(name)}")
    return names


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs once per test device (see tests/conftest.py)")
    selected_devices()  # a bad OSD_LAB_TEST_DEVICE stops the run before any test


def pytest_generate_tests(metafunc):
    """Give every test (or fixture) that asks for ``device`` one case per device."""
    if "device" not in metafunc.fixturenames:
        return
    with_dtype = "dtype" in metafunc.fixturenames
    cases = []
    for device in selected_devices():
        marks = [pytest.mark.device]
        if missing_reason(device):
            marks.append(pytest.mark.skip(reason=missing_reason(device)))
        if not with_dtype:
            cases.append(pytest.param(device, marks=marks, id=device))
            continue
        for dtype in (torch.float32, *HALF_DTYPES.get(device, ())):
            name = str(dtype).removeprefix("torch.")
            cases.append(pytest.param(device, dtype, marks=marks, id=f"{device}-{name}"))
    metafunc.parametrize("device, dtype" if with_dtype else "device", cases)


# -----------------------------------------------------------------------------
# models

def tiny_model(arch: str, seed: int = 0, vocab_size: int = TINY_VOCAB, layers: int = 2,
               device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A random-initialised causal LM small enough to run in milliseconds.

    The weights are drawn on the CPU in float32, then moved: the same model on
    every device. Its generation config names no EOS, so the decoders' default
    (``eos_token_id="model"``) decodes every token asked for: random text
    would end at random places. Tests of stopping pass ``eos_token_id`` or set
    ``model.generation_config.eos_token_id``.
    """
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
    model.generation_config.eos_token_id = None
    return model.to(device, dtype).eval()


def noisy_copy(model, noise: float = 0.5, seed: int = 0):
    """A draft that mostly agrees with ``model``: every weight plus Gaussian noise.

    The noise is drawn on the CPU, so the copy is the same on every device.
    """
    import copy
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in draft.parameters():
            if weight.numel() > 1:
                gaussian = torch.randn(weight.shape, generator=gen).to(weight.device)
                weight.add_(noise * weight.std() * gaussian)
    return draft


@functools.cache
def zoo_on(device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The zoo pair on ``device`` in ``dtype``, loaded once per run."""
    from osd_lab.models import load_pair
    return load_pair("zoo", device=device, dtype=dtype)


@pytest.fixture(scope="session")
def zoo():
    return zoo_on("cpu")


def exact_target_distribution(target, prompt, length, settings):
    """P(x_1..x_length) under the processed target distribution, over all sequences."""
    vocab = target.config.vocab_size
    probs = {}
    for seq in product(range(vocab), repeat=length):
        ids = torch.tensor([prompt + list(seq)], device=target.device)
        with torch.no_grad():
            logits = target(ids).logits[0, len(prompt) - 1:-1]
        step = logits_to_probs(logits, **settings)
        probs[seq] = math.prod(step[i, t].item() for i, t in enumerate(seq))
    return probs


def chi_square_p_value(exact: dict, counts: dict, runs: int) -> float:
    """Pearson's test of ``counts`` (sequence -> draws, ``runs`` in all) against
    the ``exact`` probabilities, cells merged until each expects >= 5 draws.
    A draw of an impossible sequence fails at once."""
    assert all(counts[s] == 0 for s, p in exact.items() if p == 0), "impossible draw"
    cells = sorted((p * runs, counts[s]) for s, p in exact.items() if p > 0)
    merged, expected_acc, observed_acc = [], 0.0, 0
    for expected, observed in cells:
        expected_acc, observed_acc = expected_acc + expected, observed_acc + observed
        if expected_acc >= 5:
            merged.append((expected_acc, observed_acc))
            expected_acc, observed_acc = 0.0, 0
    if expected_acc:
        merged[-1] = (merged[-1][0] + expected_acc, merged[-1][1] + observed_acc)
    chi2 = sum((o - e) ** 2 / e for e, o in merged)
    dof = len(merged) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(chi2 / 2)).item()


# The online decoder's tests: short text queries for the zoo tokenizer.
PROMPTS = {"sql": ["SELECT name FROM", "SELECT id, title FROM books WHERE"],
           "math": ["Question: Ann has 3 apples.", "Question: A train runs 40 km"]}


@pytest.fixture(scope="session")
def tokenizer():
    """The zoo's tokenizer (shipped: no download)."""
    from osd_lab.models import ZOO_DIR
    return AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")


@pytest.fixture()
def text_pair(tokenizer):
    """A tiny target over the zoo's vocabulary and a noisy copy as its draft, on the CPU."""
    target = tiny_model("llama", seed=0, vocab_size=len(tokenizer))
    return target, noisy_copy(target, 0.5, seed=1)
