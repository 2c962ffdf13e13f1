import pytest
import torch

from conftest import ARCHITECTURES, TINY_VOCAB, tiny_model, zoo_on
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.timing import clock


def hf_greedy(model, input_ids, max_new_tokens):
    input_ids = input_ids.to(model.device)
    out = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0,
                         attention_mask=torch.ones_like(input_ids))
    return out[0, input_ids.shape[1]:]


@pytest.mark.exactness
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_transformers_tiny(arch, seed, device):
    model = tiny_model(arch, seed, device=device)
    prompt = torch.randint(2, TINY_VOCAB, (1, 5 + seed), generator=torch.Generator().manual_seed(seed))
    ours = autoregressive_generate(model, prompt, 24).tokens
    assert torch.equal(ours, hf_greedy(model, prompt, 24))


@pytest.mark.exactness
def test_greedy_matches_transformers_zoo(device):
    from osd_lab.zoo.corpus import DOMAINS, load_corpus
    zoo = zoo_on(device)
    for domain in DOMAINS:
        prompt = zoo.tokenizer(load_corpus()[domain]["prompts"][0], return_tensors="pt").input_ids
        for model in (zoo.target, zoo.draft):
            ours = autoregressive_generate(model, prompt, 20).tokens
            assert torch.equal(ours, hf_greedy(model, prompt, 20)), domain


@pytest.mark.exactness
def test_cache_does_not_change_output(device):
    model = tiny_model("llama", device=device)
    prompt = torch.tensor([[0, 5, 9, 3]])
    with_cache = autoregressive_generate(model, prompt, 12, temperature=1.0,
                                         generator=torch.Generator(device=device).manual_seed(0))
    without = autoregressive_generate(model, prompt, 12, temperature=1.0, use_cache=False,
                                      generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(with_cache.tokens, without.tokens)
    assert with_cache.stats.target_calls == 12 and with_cache.stats.tokens_per_s > 0


def test_seeded_sampling_is_reproducible_and_varies_with_seed(device):
    model = tiny_model("gpt2", device=device)
    prompt = torch.tensor([3, 4, 5])
    runs = [autoregressive_generate(model, prompt, 16, temperature=1.5,
                                    generator=torch.Generator(device=device).manual_seed(s)).tokens
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0].device == model.device
    draft = tiny_model("gpt2", seed=1, device=device)
    runs = [speculative_generate(model, draft, prompt, 16, temperature=1.5,
                                 generator=torch.Generator(device=device).manual_seed(s)).tokens
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_generator_on_another_device_is_refused(device):
    """A CPU generator for a model elsewhere (on a CPU-only machine: the meta device)."""
    model_device = "meta" if device == "cpu" else device
    model = tiny_model("llama").to(model_device)
    cpu_generator = torch.Generator().manual_seed(0)
    message = rf"generator is on cpu but the model is on {model_device}"
    with pytest.raises(ValueError, match=message):
        autoregressive_generate(model, [0, 1], 3, temperature=1.0, generator=cpu_generator)
    with pytest.raises(ValueError, match=message):
        speculative_generate(model, model, [0, 1], 3, temperature=1.0, generator=cpu_generator)
    if device != "cpu":  # and a generator on the device for a model on the CPU
        with pytest.raises(ValueError, match=rf"generator is on {device}.*model is on cpu"):
            autoregressive_generate(tiny_model("llama"), [0, 1], 3,
                                    generator=torch.Generator(device=device))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        autoregressive_generate(tiny_model("llama"), [0, 1], 3, generator=0)


@pytest.mark.parametrize("device_type, synchronize", [("cuda", "torch.cuda.synchronize"),
                                                       ("mps", "torch.mps.synchronize")])
def test_clock_waits_for_the_gpu(device_type, synchronize, monkeypatch):
    """Timing GPU work means waiting for it first: CUDA and MPS alike."""
    waited = []
    monkeypatch.setattr(synchronize, lambda *args: waited.append(args))
    clock(torch.device(device_type))
    assert len(waited) == 1
    clock(torch.device("cpu"))
    assert len(waited) == 1


@pytest.mark.exactness
def test_eos_stops_generation_and_is_kept(device):
    model = tiny_model("qwen2", device=device)
    prompt = torch.tensor([[0, 7, 8]])
    full = autoregressive_generate(model, prompt, 10).tokens
    eos = int(full[3])
    stopped = autoregressive_generate(model, prompt, 10, eos_token_id=eos).tokens
    first = full.tolist().index(eos)
    assert stopped.tolist() == full[:first + 1].tolist()


@pytest.mark.parametrize("prompt, max_new_tokens, message", [
    (torch.zeros(1, 0, dtype=torch.long), 5, "empty prompt"),
    ([], 5, "empty prompt"),
    (torch.tensor([[1, 2]]), 0, "max_new_tokens"),
    (torch.tensor([[1, 2]]), -3, "max_new_tokens"),
    (torch.tensor([[1, 2]]), 2.5, "max_new_tokens"),
    (torch.ones(1, 120, dtype=torch.long), 20, "context of 128"),
    (torch.ones(1, 200, dtype=torch.long), 1, "context of 128"),
    (torch.ones(2, 3, dtype=torch.long), 1, "one prompt"),
    # issue 13: floats were truncated, ids outside the vocabulary not noticed
    ([1.0, 2.0], 5, "input_ids must be integer token ids"),
    (torch.tensor([[1.7, 2.2]]), 5, "input_ids must be integer token ids"),
    ([0, 96], 5, r"input_ids must be token ids in \[0, 96\), got 96"),
    ([-1, 3], 5, "input_ids must be token ids"),
    (torch.tensor([[1, 2]]), 2.0, "max_new_tokens must be an integer >= 1, got 2.0"),
    (torch.tensor([[1, 2]]), True, "max_new_tokens"),
])
def test_bad_input(prompt, max_new_tokens, message):
    with pytest.raises(ValueError, match=message):
        autoregressive_generate(tiny_model("llama"), prompt, max_new_tokens)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2),
                                    dict(use_cache="no"), dict(generator=0)])
def test_bad_sampling_settings(kwargs):
    with pytest.raises(ValueError):
        autoregressive_generate(tiny_model("llama"), [0, 1], 3, **kwargs)


def test_nan_logits_are_reported():
    model = tiny_model("llama")
    with torch.no_grad():
        model.get_output_embeddings().weight[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        autoregressive_generate(model, [0, 1], 3)
