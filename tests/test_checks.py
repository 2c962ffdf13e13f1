"""The validation helpers (osd_lab/checks.py): one message form, no coercion."""

import numpy as np
import pytest
import torch

from osd_lab.checks import (check_choice, check_float, check_generator, check_int, check_probs,
                            check_seed, check_token_ids, finite_spread)


@pytest.mark.parametrize("value, message", [
    (2.0, "n must be an integer in [1, 5], got 2.0"),  # 2.0 is no integer
    (True, "n must be an integer in [1, 5], got True"),  # nor is a bool
    ("3", "n must be an integer in [1, 5], got '3'"),
    (6, "n must be an integer in [1, 5], got 6"),
    (float("nan"), "n must be an integer in [1, 5], got nan"),
])
def test_check_int(value, message):
    with pytest.raises(ValueError) as info:
        check_int("n", value, 1, 5)
    assert str(info.value) == message
    check_int("n", np.int64(3), 1, 5)  # a NumPy integer is an integer


@pytest.mark.parametrize("value, message", [
    (float("nan"), "t must be a finite number >= 0, got nan"),
    (float("inf"), "t must be a finite number >= 0, got inf"),
    (-1e-9, "t must be a finite number >= 0, got -1e-09"),
    (False, "t must be a finite number >= 0, got False"),
    (None, "t must be a finite number >= 0, got None"),
])
def test_check_float(value, message):
    with pytest.raises(ValueError) as info:
        check_float("t", value, low=0)
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\], got 0"):
        check_float("p", 0, 0, 1, low_open=True)
    check_float("t", 2, low=0)  # an int is a number
    check_float("t", float("inf"), low=0, finite=False)


def test_check_choice_and_seed():
    with pytest.raises(ValueError, match=r"loss must be one of \('fkl', 'rkl'\), got 'kl'"):
        check_choice("loss", "kl", ("fkl", "rkl"))
    with pytest.raises(ValueError, match="flag must be one of"):
        check_choice("flag", 1, (True, False))  # 1 is not True
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\], got -1"):
        check_seed(-1)
    assert type(check_seed(np.int64(7))) is int


def test_check_token_ids():
    assert check_token_ids("ids", [[1, 2]], 5).dtype == torch.long
    for floats in ([1.0, 2.0], torch.tensor([1.7])):  # never truncated
        with pytest.raises(ValueError, match="ids must be integer token ids, got dtype"):
            check_token_ids("ids", floats, 5)
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, 5\), got 5"):
        check_token_ids("ids", [1, 5], 5)
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, 5\), got -1"):
        check_token_ids("ids", torch.tensor([-1]), 5)
    with pytest.raises(ValueError, match="ids must be token ids"):
        check_token_ids("ids", "hello", 5)


def test_check_probs_and_generator():
    check_probs("p", torch.tensor([[0.25, 0.75]]))
    for bad in (torch.tensor([0.5, 0.6]), torch.tensor([1.5, -0.5]),
                torch.tensor([float("nan"), 1.0]), torch.tensor([1, 0])):
        with pytest.raises(ValueError, match="p must be"):
            check_probs("p", bad)
    check_probs("q", torch.zeros(2, 3), zero_rows=True)  # "nothing drafted" rows
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        check_generator(0, torch.device("cpu"))
    with pytest.raises(ValueError, match="generator is on cpu but the tensor p is on meta"):
        check_generator(torch.Generator(), torch.device("meta"), "the tensor p is")


def test_a_bad_argument_is_both_a_value_error_and_a_type_error():
    """``except ValueError`` (the dashboard, the command line) catches every one."""
    for call in (lambda: check_int("n", "3"), lambda: check_generator(0, torch.device("cpu"))):
        with pytest.raises(ValueError):
            call()
        with pytest.raises(TypeError):
            call()


def test_finite_spread():
    assert finite_spread(torch.tensor([[1.0, -3.0], [1e30, -1e30]]))
    assert not finite_spread(torch.tensor([[1.0, float("nan")]]))
    assert not finite_spread(torch.tensor([[1.0, float("-inf")]]))
    assert not finite_spread(torch.tensor([[3e38, -3e38]]))  # softmax's logits - max overflows
