import math

import pytest
import torch

from osd_lab.sampling import get_device, logits_to_probs, sample, set_seed


def test_temperature_one_is_softmax():
    logits = torch.randn(3, 5, 17)
    assert torch.allclose(logits_to_probs(logits), torch.softmax(logits, -1))


def test_temperature_zero_is_one_hot_argmax_first_on_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert logits_to_probs(logits, temperature=0).tolist() == [[0, 1, 0, 0]]


def test_temperature_scales_logits():
    logits = torch.tensor([0.0, math.log(4.0)])
    probs = logits_to_probs(logits, temperature=2.0)  # exp(log4 / 2) = 2 -> 1:2
    assert torch.allclose(probs, torch.tensor([1 / 3, 2 / 3]))


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    probs = logits_to_probs(logits, top_k=2)
    expected = torch.softmax(torch.tensor([2.0, 3.0]), -1)
    assert probs[0, :2].eq(0).all() and torch.allclose(probs[0, 2:], expected)


def test_top_p_keeps_smallest_set_reaching_p():
    probs_in = torch.tensor([0.5, 0.3, 0.15, 0.05])
    probs = logits_to_probs(probs_in.log(), top_p=0.8)  # 0.5 + 0.3 reaches 0.8
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0, 0]))
    probs = logits_to_probs(probs_in.log(), top_p=0.81)  # needs the third token too
    assert torch.allclose(probs, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    tiny = logits_to_probs(probs_in.log(), top_p=1e-6)  # always keeps the top token
    assert tiny.tolist() == [1, 0, 0, 0]


def test_filters_match_transformers_warpers():
    from transformers.generation.logits_process import (TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    warped = TemperatureLogitsWarper(0.7)(None, logits.clone())
    warped = TopKLogitsWarper(20)(None, warped)
    warped = TopPLogitsWarper(0.9)(None, warped)
    ours = logits_to_probs(logits, temperature=0.7, top_k=20, top_p=0.9)
    assert torch.allclose(ours, torch.softmax(warped, -1), atol=1e-6)


def test_sample_shapes_and_seeded(device):
    probs = torch.softmax(torch.randn(2, 3, 11), -1).to(device)
    a = sample(probs, torch.Generator(device=device).manual_seed(1))
    b = sample(probs, torch.Generator(device=device).manual_seed(1))
    assert a.shape == (2, 3) and torch.equal(a, b) and a.device == probs.device


def test_sample_frequencies_follow_probs(device):
    probs = torch.tensor([0.1, 0.2, 0.7], device=device).expand(20000, 3)
    counts = torch.bincount(sample(probs, torch.Generator(device=device).manual_seed(0)),
                            minlength=3)
    assert torch.allclose(counts / 20000, probs[0], atol=0.015)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_float32_probabilities(device, half):
    """Models may run in half precision; probabilities (hence alpha and
    verification) are computed in float32 from the same logits."""
    logits = (torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 4).to(device, half)
    for settings in (dict(), dict(temperature=0.7, top_k=10, top_p=0.9), dict(temperature=0)):
        probs = logits_to_probs(logits, **settings)
        assert probs.dtype == torch.float32 and probs.device == logits.device
        assert torch.equal(probs, logits_to_probs(logits.float(), **settings))


def test_set_seed_reproducible():
    set_seed(3)
    a = torch.rand(3)
    set_seed(3)
    assert torch.equal(a, torch.rand(3))


def test_get_device(monkeypatch):
    monkeypatch.delenv("OSD_LAB_DEVICE", raising=False)
    assert get_device().type in {"cuda", "mps", "cpu"}
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("OSD_LAB_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("meta") == torch.device("meta")  # the argument wins over the variable
    with pytest.raises(ValueError, match="device must be"):
        get_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was asked for .* not available"):
            get_device("cuda")
        monkeypatch.setenv("OSD_LAB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="OSD_LAB_DEVICE"):
            get_device()


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=2.0), "top_k must be an integer >= 0, got 2.0"),
    (dict(top_k=True), "top_k"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0, got inf"),
    (dict(top_p=float("nan")), "top_p"),
])
def test_bad_sampling_args(kwargs, message):
    with pytest.raises(ValueError, match=message):
        logits_to_probs(torch.randn(5), **kwargs)


@pytest.mark.parametrize("settings", [dict(temperature=1e-40), dict(temperature=1e-320),
                                      dict(top_p=1e-50), dict(temperature=1e-40, top_p=1e-50)])
def test_extreme_temperature_and_top_p_give_the_argmax_not_nan(settings):
    """Issue 13: these gave NaN. Their limit is the argmax (distinct logits here)."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0], [40.0, -40.0, 0.0, 1.0]])
    probs = logits_to_probs(logits, **settings)
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 4).float())


def test_set_seed_and_sample_refuse_bad_input():
    with pytest.raises(ValueError, match="seed must be an integer in"):
        set_seed(-1)
    with pytest.raises(ValueError, match="probs must be probabilities"):
        sample(torch.tensor([0.5, 0.6]))  # not normalised: no silent renormalising
    with pytest.raises(ValueError, match="logits must be a floating-point tensor"):
        logits_to_probs(torch.tensor([1, 2, 3]))


def test_float64_logits_beyond_float32_range_give_a_distribution():
    """Issue 21: float64 logits of 1e300 (finite) gave NaN: they became inf in
    float32 before the max was subtracted. Now the max is subtracted in float64."""
    logits = torch.tensor([[1e300, 0.0, -1e300], [1e300, 2e300, 0.0],
                           [3.0, 1.0, 2.0]], dtype=torch.float64)
    one_hot = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    for settings in (dict(), dict(temperature=0.0), dict(temperature=0.5, top_k=2, top_p=0.9)):
        probs = logits_to_probs(logits, **settings)
        assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
        assert torch.equal(probs[:2], one_hot), settings
    assert torch.allclose(logits_to_probs(logits)[2], torch.softmax(logits[2].float(), -1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits(bad):
    logits = torch.randn(2, 5)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        logits_to_probs(logits)
