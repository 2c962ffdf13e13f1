"""The KV-cache helpers mean the same on every transformers version allowed."""

import pytest
import torch

from conftest import ARCHITECTURES, tiny_model
from osd_lab.cache import cache_keyword, forward, new_cache, rollback


@pytest.mark.exactness
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rollback_removes_exactly_the_last_tokens(arch, device):
    model = tiny_model(arch, device=device)
    ids = torch.randint(2, 96, (1, 12), generator=torch.Generator().manual_seed(0)).to(device)
    cache = new_cache(model)
    with torch.no_grad():
        forward(model, ids[:, :8], cache)
        rollback(cache, 0)  # crop(0) emptied the cache before transformers 5.14
        assert cache.get_seq_length() == 8
        forward(model, ids[:, 8:], cache)
        rollback(cache, 3)
        assert cache.get_seq_length() == 9
        # what the cache now holds gives the logits of a fresh pass over 9 + 1 tokens
        cached = forward(model, ids[:, 9:10], cache).logits[0, -1]
        fresh = model(ids[:, :10]).logits[0, -1]
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)


def test_cache_keyword_is_one_the_model_takes():
    model = tiny_model("llama")
    import inspect
    assert cache_keyword(type(model)) in inspect.signature(type(model).forward).parameters


def test_negative_rollback_refused():
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        rollback(new_cache(tiny_model("llama")), -1)


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_computes_the_last_positions_logits_alone(keep):
    model = tiny_model("llama", seed=0)
    ids = torch.tensor([[3, 4, 5, 6]])
    full = forward(model, ids, new_cache(model)).logits
    last = forward(model, ids, new_cache(model), keep=keep).logits
    assert last.shape[1] == keep and torch.allclose(last, full[:, -keep:], atol=1e-6)
