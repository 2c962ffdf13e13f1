"""When does speculation pay? The cost model of Leviathan et al. (2023), section 3.

With acceptance rate alpha (assumed the same at every position), draft length
gamma, and cost ratio c = (draft step time) / (target step time):

* expected tokens per target call: (1 - alpha^(gamma + 1)) / (1 - alpha)
* expected speedup over autoregressive decoding:
  (1 - alpha^(gamma + 1)) / ((1 - alpha) (gamma c + 1))

The model assumes the target verifies gamma + 1 tokens as fast as it decodes
one; ``SpeculationCosts`` drops that assumption, with c and the verify cost
of every size measured on your device (``osd_lab.measure``). Pure arithmetic:
nothing here runs a model. Taught in ``notebooks/03_when_is_it_fast``.
"""

from dataclasses import dataclass

from osd_lab.checks import check_float, check_int

MAX_DRAFT_LEN = 1024  # the longest draft_len: optimal_draft_len and speculative_generate


def expected_tokens_per_step(alpha: float, draft_len: int) -> float:
    """Expected tokens produced per target call (accepted drafts + one from the target)."""
    check_float("alpha", alpha, 0, 1)
    check_int("draft_len", draft_len, low=0)
    if alpha == 1:
        return draft_len + 1.0
    return (1 - alpha ** (draft_len + 1)) / (1 - alpha)


def speedup(alpha: float, draft_len: int, cost_ratio: float) -> float:
    """Expected wall-time speedup over autoregressive decoding with the target."""
    check_float("cost_ratio", cost_ratio, low=0)
    return expected_tokens_per_step(alpha, draft_len) / (draft_len * cost_ratio + 1)


def optimal_draft_len(alpha: float, cost_ratio: float, max_draft_len: int = 32) -> int:
    """The draft length in [1, max_draft_len] with the highest expected speedup."""
    check_int("max_draft_len", max_draft_len, 1, MAX_DRAFT_LEN)
    return max(range(1, max_draft_len + 1), key=lambda g: speedup(alpha, g, cost_ratio))


@dataclass(frozen=True)
class SpeculationCosts:
    """What a step costs, in units of one one-token target pass.

    draft_step: c, one draft pass over one token.
    verify: ``verify[n - 1]`` is one target pass over n new tokens (so
        ``verify[0] == 1``); beyond the table it grows linearly.
    """

    draft_step: float
    verify: tuple

    def __post_init__(self):
        check_float("draft_step", self.draft_step, low=0)
        if not self.verify or self.verify[0] != 1:
            raise ValueError(f"verify must start with 1.0 (one token costs one target pass), "
                             f"got {self.verify!r}")
        for i, v in enumerate(self.verify):
            check_float(f"verify[{i}]", v, low=0, low_open=True)

    def verify_cost(self, num_tokens: int) -> float:
        """Cost of one target pass over ``num_tokens`` new tokens."""
        table = self.verify
        if num_tokens <= len(table):
            return table[num_tokens - 1]
        slope = table[-1] - table[-2] if len(table) > 1 else 0.0
        return table[-1] + slope * (num_tokens - len(table))
