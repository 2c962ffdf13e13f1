"""One speculative step, the same for every decoder.

Every speculative decoder in the package repeats one step (Leviathan et al. 2023):

1. **propose**: a drafter offers a block of tokens, a chain or a tree
   (``Proposal``). A drafter is anything with ``propose`` and ``commit``
   (``Drafter``): a smaller model (``osd_lab.decoding.ModelDrafter``), or
   the target's own speculative streams or Medusa heads
   (``osd_lab.streaming.StreamDrafter``);
2. **score**: the target reads its pending token(s) and the block in one
   pass (``Target``: ``osd_lab.decoding.CachedTarget`` or
   ``osd_lab.streaming.StreamingTarget``);
3. **verify**: along one path of the block (a chain: all of it), keep a
   prefix, then one token of the target's (``verify_block``: greedy, or
   lossless rejection sampling);
4. **commit**: cut the new tokens after end-of-text and at
   ``max_new_tokens`` (``keep_tokens``); target and drafter roll back;
5. **observe**: the draft-length policy (``osd_lab.policies``) and the
   statistics (``DecodingStats``) learn what happened.

``decode`` runs the step until the sequence ends. The batched decoder
(``osd_lab.batched``) runs the same pieces on B rows at once. The split
follows transformers' ``generation/candidate_generator.py``: its candidate
generator is our drafter, its ``update_candidate_strategy`` our ``commit``
and ``observe``. Taught in ``notebooks/02_speculative_decoding``.
"""

import math
import numbers
from dataclasses import dataclass, field
from typing import Protocol

import torch

from osd_lab.checks import ArgumentError
from osd_lab.policies import Block
from osd_lab.sampling import check_top_logits, greedy_token, logits_to_probs, multinomial
from osd_lab.timing import clock
from osd_lab.verify import exact_alpha, rejection_sample

# -----------------------------------------------------------------------------
# how logits become tokens


@dataclass(frozen=True)
class Sampler:
    """How both models' logits become tokens: temperature 0 is greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    vocab_size: int | None = None  # compare logits on ids [0, vocab_size); None: all

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(..., V_model)`` -> processed probabilities ``(..., vocab_size)``."""
        return logits_to_probs(logits[..., :self.vocab_size], self.temperature, self.top_k,
                               self.top_p)

    def draw(self, logits: torch.Tensor):
        """One token per row of ``logits`` ``(..., V_model)``: ``(token (...), q, top)``.

        Sampling: q ``(..., V)`` is the distribution drawn from, top None.
        Greedy: the argmax, q None (it is one-hot: no ``(..., V)`` pass), and
        top the largest logit, for ``check_top_logits`` (no device sync here).
        """
        if self.greedy:
            top, token = greedy_token(logits[..., :self.vocab_size])
            return token, None, top
        q = self.probs(logits)
        return multinomial(q, self.generator), q, None


# -----------------------------------------------------------------------------
# end of text

MODEL_EOS = "model"  # the default eos_token_id: the model's generation config


def check_eos(eos_token_id, vocab_size: int, device: torch.device,
              model=None) -> torch.Tensor | None:
    """Validate ``eos_token_id``: an id, a list of ids (as generation configs
    give), None (never stop early), or ``"model"`` (``MODEL_EOS``, every
    decoder's and alpha function's default): ``model``'s
    ``generation_config.eos_token_id``. Returns the ids as a 1-D tensor on
    ``device``, or None."""
    if isinstance(eos_token_id, str) and eos_token_id == MODEL_EOS:
        config = getattr(model, "generation_config", None)
        model_eos = getattr(config, "eos_token_id", None)
        try:
            return check_eos(model_eos, vocab_size, device)
        except ValueError as err:
            raise ArgumentError(f"eos_token_id={MODEL_EOS!r} reads the model's "
                                f"generation_config.eos_token_id, {model_eos!r}, which is not "
                                f"a token id in [0, {vocab_size}): pass eos_token_id (an id, "
                                f"a list of ids, or None to never stop early)") from err
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    if not ids or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                          and 0 <= i < vocab_size for i in ids):
        raise ArgumentError(f"eos_token_id must be a token id in [0, {vocab_size}), a "
                            f"non-empty list of them, None (never stop early) or "
                            f"{MODEL_EOS!r} (the model's generation config), got "
                            f"{eos_token_id!r}")
    return torch.tensor([int(i) for i in ids], device=device)


def first_eos(tokens: torch.Tensor, eos_ids: torch.Tensor | None) -> int | None:
    """Index of the first end-of-sequence id in ``tokens`` ``(N,)``, or None."""
    if eos_ids is None:
        return None
    hits = torch.isin(tokens, eos_ids).nonzero()
    return int(hits[0]) if len(hits) else None


# -----------------------------------------------------------------------------
# statistics: one definition for every decoder


@dataclass
class DecodingStats:
    """What one sequence's decoding did, step by step, and what it cost.

    A step drafts ``draft_lens[i]`` tokens (a tree: its nodes; plain
    decoding: none), verification keeps ``accepted[i]`` of them and the
    target adds one. Alpha is exact sum_v min(p, q) (greedy: 1 or 0) at a
    drafted position of the verified path; everything stops at end-of-text.
    """

    draft_lens: list = field(default_factory=list)  # tokens drafted at each step
    accepted: list = field(default_factory=list)  # drafted tokens kept at each step
    alpha: list = field(default_factory=list)  # per drafting step: alpha at each position
    decided_alpha: list = field(default_factory=list)  # the positions verification decided
    corrections: list = field(default_factory=list)  # new tokens where the target overruled
    target_calls: int = 0  # target passes (plain decoding: one per token)
    draft_calls: int = 0  # draft-model passes (0 when the model drafts for itself)
    new_tokens: int = 0
    wall_time_s: float = math.nan
    target_logits: torch.Tensor | None = None  # (N, V) raw logits that predicted each token

    def record(self, drafted: int, accepted: int, alpha: list, kept: int, position: int):
        """One step: ``drafted`` tokens offered, ``accepted`` of them (along a
        path of ``len(alpha)``) kept by verification, ``kept`` new tokens
        output after the cut at end-of-text, the first at index ``position``.

        The decided positions are the accepted ones and the first rejected
        one, whose residual sample is the step's last token; a position past
        end-of-text never happened and is not counted.
        """
        accepted = min(accepted, kept)
        self.draft_lens.append(drafted)
        self.accepted.append(accepted)
        if drafted:
            self.alpha.append(alpha)
        self.decided_alpha += alpha[:min(accepted + 1, kept)]
        if accepted < len(alpha) and accepted < kept:  # the target wrote this token
            self.corrections.append(position + accepted)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s

    @property
    def tau(self) -> float:
        """New tokens per target call."""
        return self.new_tokens / self.target_calls if self.target_calls else math.nan

    @property
    def verified_alpha(self) -> float:
        """Mean alpha of the decided positions: the alpha that predicts speed."""
        return mean(self.decided_alpha)

    @property
    def mean_alpha(self) -> float:
        """Mean alpha of every drafted position, also those after a rejection."""
        return mean([a for step in self.alpha for a in step])

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's figure: 1 + drafted tokens accepted per drafting step."""
        steps = [n for g, n in zip(self.draft_lens, self.accepted) if g]
        return 1 + mean(steps)

    @property
    def acceptance_by_position(self) -> list:
        """Share of the steps that drafted position i whose token i was accepted."""
        deepest = max(self.draft_lens, default=0)
        drafted = [sum(g > i for g in self.draft_lens) for i in range(deepest)]
        kept = [sum(n > i for n in self.accepted) for i in range(deepest)]
        return [k / d for k, d in zip(kept, drafted)]


def mean(values) -> float:
    return sum(values) / len(values) if len(values) else math.nan


@dataclass
class GenerationOutput:
    """New tokens ``(N,)`` and what it cost to make them."""

    tokens: torch.Tensor
    stats: DecodingStats


# -----------------------------------------------------------------------------
# the pieces of a step


@dataclass
class Proposal:
    """A block a drafter offers: a chain of tokens, or a tree."""

    tokens: torch.Tensor  # (g,) drafted ids; a tree's nodes, parents before children
    q: torch.Tensor | None = None  # (g, V) what each was drawn from; None when greedy
    tops: list = field(default_factory=list)  # greedy: draft top logits, NaN-checked later
    parents: torch.Tensor | None = None  # (g,) a tree: node i's parent (0: pending); a chain: None
    passes: int = 0  # draft-model passes it took

    def path(self, target_choice: torch.Tensor) -> torch.Tensor:
        """The nodes to verify, 1-based ``(G,)``: a chain's every token; in a
        tree the branch that follows ``target_choice`` ``(1 + g,)`` (the
        target's greedy token after pending and after each node)."""
        if self.parents is None:
            return torch.arange(1, len(self.tokens) + 1, device=self.tokens.device)
        return torch.tensor(follow_target(self.parents, self.tokens, target_choice),
                            dtype=torch.long, device=self.tokens.device)


def follow_target(parents: torch.Tensor, tokens: torch.Tensor, target_choice: torch.Tensor):
    """The chain of node indices (1-based) down a tree, following the target.

    At each node take the child whose token is the target's choice there
    (``target_choice`` ``(N + 1,)``, root first) if there is one, else the first
    child (the best-scored), down to a leaf. Verification then reads it as a chain.
    """
    chain, node = [], 0
    while True:
        children = (parents == node).nonzero().flatten() + 1
        if len(children) == 0:
            return chain
        agree = children[tokens[children - 1] == target_choice[node]]
        node = int(agree[0] if len(agree) else children[0])
        chain.append(node)


class Drafter(Protocol):
    """What a drafter does in the step (a draft model, streams, heads, n-grams)."""

    can_stop_early: bool  # whether a stopping rule may end its blocks (policy.next_block)

    def propose(self, block: Block, room: int) -> Proposal:
        """A block of at most ``min(block.most, room)`` tokens deep."""

    def commit(self, proposal: Proposal, path: torch.Tensor, num_accepted: int,
               next_token: torch.Tensor, target_output) -> None:
        """Verification kept ``num_accepted`` nodes of ``path``, then ``next_token``
        ``(1,)``; ``target_output`` is what the target's pass gave besides
        logits (for a model that drafts for itself, its streams' guesses at a
        node, run on demand). Called before ``Target.commit`` rolls back."""


class Target(Protocol):
    """What the target does in the step: score a block, keep what was accepted."""

    device: torch.device

    def score(self, proposal: Proposal):
        """Logits ``(1, 1 + g, V)`` after the pending token and after each
        node, and anything else the pass gave (or None)."""

    def commit(self, proposal: Proposal, path: torch.Tensor, num_accepted: int,
               next_token: torch.Tensor) -> None:
        """As ``Drafter.commit``."""


@dataclass
class Verdict:
    """What verification decided for each of B rows."""

    num_accepted: torch.Tensor  # (B,) drafted tokens kept, in [0, G]
    next_token: torch.Tensor  # (B,) the target's token after them
    alpha: torch.Tensor  # (B, G) exact sum_v min(p, q) at each drafted position


def verify_block(sampler: Sampler, target_logits: torch.Tensor, drafted: torch.Tensor,
                 q: torch.Tensor | None = None, tops=()) -> Verdict:
    """Keep a prefix of each row's block, then one token of the target's.

    target_logits: ``(B, G + 1, V_model)`` the target's raw logits at the G
        drafted positions and the one after them.
    drafted: ``(B, G)``; q: ``(B, G, V)`` what they were sampled from (None
        when greedy). tops: greedy draft top logits, checked with the
        target's in one device sync.

    Greedy needs no ``(..., V)`` distributions: p and q are one-hot on the
    argmaxes, a drafted token is kept iff it is the target's argmax, and
    alpha is exactly 1 or 0. Sampling: ``osd_lab.verify.rejection_sample``
    (``verify`` without its input checks: p and q were made here), lossless.
    """
    batch, gamma = drafted.shape
    if sampler.greedy:
        top, target_tokens = greedy_token(target_logits[..., :sampler.vocab_size])  # (B, G + 1)
        check_top_logits(torch.cat([top.flatten(), *[t.flatten() for t in tops]]))
        agree = target_tokens[:, :gamma] == drafted  # (B, G)
        num_accepted = agree.cumprod(-1).sum(-1)  # (B,)
        next_token = target_tokens.gather(1, num_accepted[:, None])[:, 0]  # (B,)
        return Verdict(num_accepted, next_token, agree.float())
    p = sampler.probs(target_logits)  # (B, G + 1, V)
    if gamma == 0:
        return Verdict(drafted.new_zeros(batch), multinomial(p[:, 0], sampler.generator),
                       p.new_zeros(batch, 0))
    result = rejection_sample(p, q, drafted, sampler.generator)
    return Verdict(result.num_accepted, result.next_token, exact_alpha(p[:, :gamma], q))


def keep_tokens(drafted: torch.Tensor, num_accepted: int, next_token: torch.Tensor,
                eos_ids: torch.Tensor | None, left: int) -> tuple[torch.Tensor, bool]:
    """A step's new tokens ``(k,)``, cut after end-of-text (inclusive) and at
    ``left``, the tokens still to make; and whether the sequence is finished.

    drafted: ``(G,)`` the verified path; the first ``num_accepted`` were kept,
    then ``next_token`` ``(1,)``.
    """
    tokens = torch.cat([drafted[:num_accepted], next_token])  # (n + 1,)
    eos_at = first_eos(tokens, eos_ids)
    kept = min(left, len(tokens) if eos_at is None else eos_at + 1)
    return tokens[:kept], (eos_at is not None and eos_at < kept) or kept == left


# -----------------------------------------------------------------------------
# the loop


def decode(target: Target, drafter: Drafter, policy, sampler: Sampler, max_new_tokens: int,
           eos_ids: torch.Tensor | None, record_target_logits: bool = False
           ) -> GenerationOutput:
    """Run the speculative step until end-of-text or ``max_new_tokens``.

    policy: a draft-length policy (``osd_lab.policies``: ``next_block`` and
    ``observe``). Returns ``GenerationOutput(tokens (N,), DecodingStats)``.
    """
    start = clock(target.device)
    stats = DecodingStats()
    new_tokens, logits_kept, num_new, finished = [], [], 0, False
    while not finished:
        room = max_new_tokens - num_new - 1  # leave room for the target's token
        # 1. propose: the policy says how long, the drafter drafts
        block = policy.next_block(drafter.can_stop_early)
        proposal = drafter.propose(block, room)
        # 2. score: one target pass over pending + the block
        logits, target_output = target.score(proposal)  # (1, 1 + g, V)
        # 3. verify along a path: a chain's every token, a tree's branch that
        #    follows the target's argmax
        tree = proposal.parents is not None
        path = proposal.path(logits[0, :, :sampler.vocab_size].argmax(-1) if tree else None)
        rows = torch.cat([path.new_zeros(1), path])  # (1 + G,) pending, then the path
        chain = proposal.tokens[path - 1]  # (G,)
        q = proposal.q[path - 1][None] if proposal.q is not None else None  # (1, G, V)
        verdict = verify_block(sampler, logits[:, rows] if tree else logits, chain[None], q,
                               proposal.tops)
        n, next_token = int(verdict.num_accepted[0]), verdict.next_token  # int, (1,)
        # 4. commit: cut at end-of-text or max_new_tokens; both sides roll back
        tokens, finished = keep_tokens(chain, n, next_token, eos_ids, max_new_tokens - num_new)
        if not finished:  # the drafter first: it may read the target's pass (streams)
            drafter.commit(proposal, path, n, next_token, target_output)
            target.commit(proposal, path, n, next_token)
        # 5. observe: the policy and the statistics
        alpha = verdict.alpha[0].tolist()
        policy.observe(drafted=len(proposal.tokens), accepted=n, decided_alpha=alpha[:n + 1],
                       capped=block.most > room)
        stats.record(len(proposal.tokens), n, alpha, len(tokens), num_new)
        stats.target_calls += 1
        stats.draft_calls += proposal.passes
        if record_target_logits:  # the rows that predicted the kept tokens
            logits_kept.append(logits[0, rows[:len(tokens)], :sampler.vocab_size])
        new_tokens.append(tokens)
        num_new += len(tokens)
    stats.wall_time_s = clock(target.device) - start
    tokens = torch.cat(new_tokens)
    stats.new_tokens = len(tokens)
    if record_target_logits:
        stats.target_logits = torch.cat(logits_kept)  # (N, V)
    return GenerationOutput(tokens, stats)
