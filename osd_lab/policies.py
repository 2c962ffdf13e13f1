"""How many tokens to draft at each step: draft-length policies and stopping rules.

Draft-length policies choose the block length gamma before a step:

* ``"constant"``: always ``draft_len``.
* ``"heuristic"`` (transformers' assisted generation): +2 after a fully
  accepted block, -1 (down to 1) otherwise.
* ``"goodput"`` (the idea of SmartSpec/TurboSpec, Liu et al. 2024): the gamma
  in [0, ``draft_len``] with the most expected tokens per second,

      E[tokens](alpha, gamma) / (gamma * c + v(gamma + 1)),

  with alpha a running estimate of the draft's exact acceptance rate, c the
  draft's step time and v(n) the target's time for one pass over n tokens,
  both in units of a one-token target step (``SpeculationCosts``, measured
  by ``osd_lab.measure.measure_costs``). gamma = 0 is plain decoding: a badly
  matched draft switches itself off, and drafts one token every
  ``probe_every`` steps so that its alpha stays measured.

Stopping rules end a block early, before the length the policy chose, when
the draft's own distribution (softmax of its raw logits) says a rejection is
likely; the token just drafted is kept. With the goodput policy, goodput
decides whether to draft (it may still switch drafting off) and how many
tokens at least (its own choice), the rule how far beyond, up to the
policy's ``max_draft_len``: a running alpha treats positions as independent,
but acceptances come in runs (a SQL clause the draft knows), and the draft's
own doubt finds the run's end better; goodput's floor keeps the rule from
ending a block where the verify pass would cost as much as a longer one (on
a CPU a pass over 2 or 3 tokens can cost more than over 5):

* ``"confidence"`` (transformers' ``assistant_confidence_threshold``): stop
  when the drafted token's probability is below ``threshold`` (default 0.4).
* ``"entropy"`` (AdaEDL, Agrawal et al. 2024): stop when the entropy-based
  lower bound on the acceptance probability, 1 - sqrt(scale * H(q)), is
  below ``threshold`` (default 0.4, with ``scale`` 0.4).

BASS's schedule (Qian et al. 2024, Algorithm 1) sets one length for a
batch: ``BassPolicy``.

Every policy is an object with one small interface, which the speculative
step (``osd_lab.step``) calls: ``next_block(extend)`` before a step, a
``Block`` (at least ``floor`` tokens, at most ``most``; a stopping rule,
where the drafter has one and ``extend`` is True, ends it in between), and
``observe(drafted=, accepted=, decided_alpha=, capped=)`` after it
(``capped``: the block was cut short by the tokens still to make, so it
says nothing about the length).

Taught in ``notebooks/03_when_is_it_fast`` and ``08_bass``.
"""

import math
from dataclasses import dataclass

import torch

from osd_lab.checks import check_choice, check_float, check_int
from osd_lab.cost import MAX_DRAFT_LEN, SpeculationCosts, expected_tokens_per_step

DRAFT_LEN_POLICIES = ("constant", "heuristic", "goodput")
STOP_RULES = (None, "confidence", "entropy")
# The defaults of every speculative decoder, defined here once: goodput decides
# whether to draft, transformers' confidence rule how far (the fastest of the
# policies on the zoo's sql and on real-shape pairs: README, Speed). "auto"
# resolves to DEFAULT_STOP_RULE with goodput and to no rule with "constant"
# and "heuristic", whose draft_len then means what it says.
DEFAULT_DRAFT_LEN_POLICY = "goodput"
DEFAULT_STOP_RULE = "confidence"
MAX_PROBE_GAP = 64  # the longest wait between probes of a switched-off draft
RESUME_GAP = 2  # after drafting, the first probe comes this many steps after it stops
PROBE_LEN = 4  # with a stopping rule, a probe drafts this many tokens
STOP_THRESHOLD = 0.4  # transformers' default assistant_confidence_threshold
ENTROPY_SCALE = 0.4


def moving_average(estimate: float, values, smoothing: float) -> float:
    """Fold ``values`` into a running ``estimate`` (exponential moving average,
    each new value with weight ``smoothing``)."""
    for value in values:
        estimate += smoothing * (value - estimate)
    return estimate


@dataclass(frozen=True)
class Block:
    """How many tokens the next step drafts: at least ``floor``, at most
    ``most``; a stopping rule may end the block in between."""

    floor: int
    most: int


class ConstantPolicy:
    """Always ``draft_len`` tokens (a stopping rule may end a block after any)."""

    def __init__(self, draft_len: int = 4):
        check_int("draft_len", draft_len, 1, MAX_DRAFT_LEN)
        self.draft_len = draft_len

    def next_block(self, extend: bool = False) -> Block:
        return Block(1, self.draft_len)

    def observe(self, *, drafted: int, accepted: int, decided_alpha, capped: bool) -> None:
        pass


class HeuristicPolicy(ConstantPolicy):
    """transformers' schedule: +2 after a fully accepted block, -1 (down to 1)
    otherwise. In a batch, "fully accepted" means by some row."""

    def observe(self, *, drafted: int, accepted: int, decided_alpha, capped: bool) -> None:
        if not capped:  # a block cut short by max_new_tokens says nothing
            full = accepted == drafted  # (a stopping rule may have ended it early)
            self.draft_len = self.draft_len + 2 if full else max(1, self.draft_len - 1)


# BASS Algorithm 1: start length, increase, limit, and the divisor of the decrease
BASS_START, BASS_INCREASE, BASS_LIMIT, BASS_MOD = 7, 2, 32, 10


def bass_draft_len(draft_len: int, max_accepted: int, shrinking: bool) -> tuple[int, bool]:
    """BASS's draft length for the next step (the paper's Algorithm 1).

    If some row accepted every drafted token (``max_accepted == draft_len``) the
    length grows by ``BASS_INCREASE`` up to ``BASS_LIMIT``; otherwise it shrinks
    by ceil(draft_len / ``BASS_MOD``), and by one more when the previous step
    shrank too (``shrinking``), but never below what the best row accepted,
    nor below 1: l = max(1, x, l - ceil(l / l_mod) - s). Returns the new
    length and whether this step shrank.
    """
    if max_accepted == draft_len:
        return min(draft_len + BASS_INCREASE, BASS_LIMIT), False
    shrink = math.ceil(draft_len / BASS_MOD) + int(shrinking)
    return max(1, max_accepted, draft_len - shrink), True


class BassPolicy(ConstantPolicy):
    """BASS's schedule for a batch (``bass_draft_len``); ``accepted`` is the
    most any row accepted."""

    def __init__(self, draft_len: int = BASS_START):
        super().__init__(draft_len)
        self.shrinking = False

    def observe(self, *, drafted: int, accepted: int, decided_alpha, capped: bool) -> None:
        if not capped:
            self.draft_len, self.shrinking = bass_draft_len(self.draft_len, accepted,
                                                            self.shrinking)


class GoodputPolicy:
    """Chooses each step's draft length from a running alpha and measured costs.

    costs: ``SpeculationCosts`` of the (target, draft) pair on its device.
    alpha: the starting estimate of the draft's acceptance rate (worth one
        observation, see ``observe``).
    max_draft_len: the longest block it may choose (at most ``MAX_DRAFT_LEN``).
    smoothing: weight of each new decided position in the running alpha
        (an exponential moving average, after a running mean at the start;
        0.1: about the last 20 positions count).
    probe_every: when it chooses 0 (plain decoding), it drafts one token
        after ``probe_every`` steps anyway, to keep measuring alpha (with a
        stopping rule, ``PROBE_LEN`` tokens, the rule unread: one probe of a
        draft that is right then moves alpha far enough to switch drafting
        on, where a draft's doubt would cut it to a token or two); each probe
        that leaves drafting off doubles the wait (up to ``MAX_PROBE_GAP``
        steps), so a draft that does not pay costs ever less. A fresh policy
        probes at its first step without drafting. When a draft that was
        drafting is switched off, the first probe comes ``RESUME_GAP`` steps
        later instead: one rejection that takes a high alpha below break-even
        is usually the end of a run of acceptances, not a worse draft (on the
        layered 1.5B pair at alpha 0.95 the wait of ``probe_every`` steps cost
        about a tenth of the speed, README, Real shapes).
        With costs at which drafting loses even at alpha = 1 (a draft as slow
        as the target) it never probes: no alpha would change its choice.

    One policy can serve many calls: the online decoder keeps one per draft,
    so what it learned about a draft on one query serves the next.
    """

    def __init__(self, costs: SpeculationCosts, alpha: float = 0.5, max_draft_len: int = 16,
                 smoothing: float = 0.1, probe_every: int = 8):
        if not isinstance(costs, SpeculationCosts):
            raise ValueError(f"costs must be SpeculationCosts (osd_lab.measure.measure_costs), "
                             f"got {type(costs).__name__}")
        check_float("alpha", alpha, 0, 1)
        check_int("max_draft_len", max_draft_len, 1, MAX_DRAFT_LEN)  # weighed at every step
        check_float("smoothing", smoothing, 0, 1, low_open=True)
        check_int("probe_every", probe_every, low=1)
        self.costs, self.alpha, self.max_draft_len = costs, float(alpha), max_draft_len
        self.smoothing, self.probe_every = smoothing, probe_every
        self.observed = 0  # decided positions folded into alpha so far
        # a fresh policy has measured nothing: its first step without drafting probes
        self.plain_steps = probe_every - 1  # steps decoded without drafting since the last probe
        self.probe_gap = probe_every  # plain steps until the next probe
        self.probing = False  # whether the last choice was a probe
        # if drafting loses even when every drafted token is accepted (a draft as
        # slow as the target), no alpha can change the choice: no probes
        self.can_pay = any(self.goodput(g, alpha=1.0) > self.goodput(0, alpha=1.0)
                           for g in range(1, max_draft_len + 1))

    def goodput(self, gamma: int, alpha: float | None = None) -> float:
        """Expected tokens per unit of time (one-token target passes) at ``gamma``,
        with the running alpha or the one given."""
        cost = gamma * self.costs.draft_step + self.costs.verify_cost(gamma + 1)
        return expected_tokens_per_step(self.alpha if alpha is None else alpha, gamma) / cost

    def best_draft_len(self, alpha: float | None = None) -> int:
        """The length in ``0..max_draft_len`` with the most goodput at the
        running alpha (or the one given), probes aside; changes nothing."""
        return max(range(self.max_draft_len + 1), key=lambda g: self.goodput(g, alpha))

    def next_draft_len(self) -> int:
        """The draft length for the next step (0: decode this step without drafting)."""
        best = self.best_draft_len()
        if best > 0:  # drafting: if it stops, probe again soon
            self.plain_steps, self.probing = 0, False
            self.probe_gap = min(RESUME_GAP, self.probe_every)
            return best
        if not self.can_pay:
            return 0
        self.plain_steps += 1
        self.probing = self.plain_steps >= self.probe_gap
        if not self.probing:
            return 0
        self.plain_steps = 0
        self.probe_gap = min(2 * self.probe_gap, MAX_PROBE_GAP)
        return 1  # a probe: one token, to measure alpha

    def draft_changed(self) -> None:
        """The draft's weights changed (an online update): what the probes
        measured was another draft's, so a switched-off draft is probed again
        ``RESUME_GAP`` steps on instead of after a backed-off wait. (Online, a
        draft switched off on a new domain learns it while it is off; with the
        wait doubled to ``MAX_PROBE_GAP`` steps, the probes found out late or
        not at all.)"""
        self.probe_gap = min(RESUME_GAP, self.probe_every)

    def next_block(self, extend: bool = False) -> Block:
        """The next step's block. Without a stopping rule (``extend`` False):
        goodput's length. With one: a probe drafts ``PROBE_LEN`` tokens, the
        rule unread; otherwise goodput's length at least, then on, up to
        ``max_draft_len``, while the rule lets it."""
        gamma = self.next_draft_len()
        if extend and gamma and self.probing:
            gamma = min(PROBE_LEN, self.max_draft_len)
            return Block(gamma, gamma)
        return Block(gamma, self.max_draft_len if extend and gamma else gamma)

    def observe(self, *, drafted: int, accepted: int, decided_alpha, capped: bool) -> None:
        """Fold in the exact alphas of the positions verification decided: a
        running mean in which the starting alpha counts as one observation,
        until it holds 1 / smoothing of them; from then on a moving average.
        (A fresh policy so learns from its first probe: four accepted tokens
        take alpha from 0.5 to 0.9, where a moving average alone reaches 0.8.)"""
        for value in decided_alpha:
            self.observed += 1
            weight = max(self.smoothing, 1 / (self.observed + 1))
            self.alpha += weight * (value - self.alpha)


def check_stop_rule(stop_rule, stop_threshold, draft_len_policy=DEFAULT_DRAFT_LEN_POLICY):
    """Validate a stopping rule and its threshold for a draft-length policy (a
    name or a ``GoodputPolicy``); return ``(stop_rule, threshold)`` to use,
    with "auto" resolved (``DEFAULT_STOP_RULE`` with goodput, else None)."""
    check_choice("stop_rule", stop_rule, ("auto", *STOP_RULES))
    if stop_rule == "auto":
        goodput = isinstance(draft_len_policy, GoodputPolicy) or draft_len_policy == "goodput"
        stop_rule = DEFAULT_STOP_RULE if goodput else None
    if stop_threshold is None:
        return stop_rule, STOP_THRESHOLD
    check_float("stop_threshold", stop_threshold, 0, 1)
    return stop_rule, stop_threshold


def should_stop(stop_rule: str, draft_logits: torch.Tensor, token: torch.Tensor,
                threshold: float) -> bool:
    """Whether a stopping rule ends the block after ``token``.

    draft_logits: ``(1, V)`` the draft's raw logits that ``token`` ``(1,)``
    was drafted from. One device sync (the answer is a Python bool).
    """
    logits = draft_logits.float()  # (1, V)
    if stop_rule == "confidence":  # q(token) = exp(logit - logsumexp): no (1, V) softmax
        return (logits[0, token[0]] - torch.logsumexp(logits[0], -1)).exp().item() < threshold
    probs = torch.softmax(logits, -1)  # (1, V)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum().item()  # nats
    return 1 - math.sqrt(ENTROPY_SCALE * entropy) < threshold
