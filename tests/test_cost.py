import pytest

from conftest import tiny_model
from osd_lab.cost import expected_tokens_per_step, optimal_draft_len, speedup
from osd_lab.measure import measure_verify_ratio


def test_expected_tokens_closed_form():
    # alpha = 0.5, gamma = 2: 1 + 0.5 + 0.25
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens_per_step(0.0, 5) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.8, 0) == pytest.approx(1.0)


def test_speedup_and_optimum():
    # Leviathan et al., Table/Fig. 3 style: alpha 0.8, c 0.05 -> gamma 8 region, > 3x
    assert speedup(0.8, 4, 0.0) == pytest.approx(expected_tokens_per_step(0.8, 4))
    assert speedup(0.8, 4, 0.1) == pytest.approx(3.3616 / 1.4)
    best = optimal_draft_len(0.8, 0.05)
    assert all(speedup(0.8, best, 0.05) >= speedup(0.8, g, 0.05) for g in range(1, 33))
    assert optimal_draft_len(0.3, 0.5) == 1  # a poor, slow draft: draft as little as possible


@pytest.mark.parametrize("call", [lambda: speedup(1.2, 3, 0.1), lambda: speedup(0.5, -1, 0.1),
                                  lambda: speedup(0.5, 3, -0.1)])
def test_bad_values(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: speedup(float("nan"), 3, 0.1), r"alpha must be a finite number in \[0, 1\], got nan"),
    (lambda: speedup(0.5, 3, float("inf")), "cost_ratio must be a finite number >= 0, got inf"),
    (lambda: speedup(0.5, 2.0, 0.1), "draft_len must be an integer >= 0, got 2.0"),
    (lambda: expected_tokens_per_step(True, 3), "alpha"),
    (lambda: optimal_draft_len(0.5, 0.1, 0), "max_draft_len"),
    (lambda: optimal_draft_len(0.5, 0.1, 10**9), r"max_draft_len must be an integer in \[1, 1024\]"),
    (lambda: measure_verify_ratio(tiny_model("llama"), 0), "num_tokens"),
    (lambda: measure_verify_ratio(tiny_model("llama"), 100, prompt_len=100), "context of 128"),
])
def test_bad_values_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_verify_ratio_is_positive():
    assert measure_verify_ratio(tiny_model("llama"), 4, repeats=3) > 0
