import copy

import pytest
import torch

from conftest import noisy_copy, tiny_model
from osd_lab.metrics import acceptance_along_greedy, alpha_on_documents
from osd_lab.sampling import logits_to_probs
from osd_lab.verify import overlap


def test_alpha_on_documents_by_hand_and_for_an_identical_draft():
    target = tiny_model("llama")
    draft = noisy_copy(target, 0.5, seed=1)
    docs = [torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(i))
            for i in range(3)]
    stats = alpha_on_documents(target, draft, docs, temperatures=(0.0, 1.0))
    with torch.no_grad():
        by_hand = [overlap(logits_to_probs(target(d).logits[0, :-1], 1.0),
                           logits_to_probs(draft(d).logits[0, :-1], 1.0)).mean() for d in docs]
    assert stats[1.0][0] == pytest.approx(torch.stack(by_hand).mean().item(), abs=1e-6)
    assert stats[1.0][1] == pytest.approx(torch.stack(by_hand).std().item() / 3 ** 0.5, abs=1e-6)
    same = alpha_on_documents(target, copy.deepcopy(target), docs, temperatures=(0.0, 1.0))
    assert all(mean == pytest.approx(1.0) and error == pytest.approx(0.0, abs=1e-6)
               for mean, error in same.values())


def test_acceptance_along_greedy_for_an_identical_draft():
    target = tiny_model("gpt2")
    out = acceptance_along_greedy(target, copy.deepcopy(target), torch.tensor([[0, 5, 7]]), 6)
    assert out["alpha"].shape == (6,) and out["agree"].all()
    assert torch.allclose(out["alpha"], torch.ones(6))
