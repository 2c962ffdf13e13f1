"""Online speculative decoding (Liu et al., 2310.07177): serve, record, distil.

A server answers a stream of queries with speculative decoding. Verifying,
the target computes its distribution at every generated position anyway.
When the target had to correct the draft somewhere in a query, we keep that
query with the target's logits in a bounded replay buffer, and every
``update_interval`` queries take a distillation step on it: the draft learns
the positions it got wrong *and* keeps the ones it got right (training on
the corrected positions alone was measured to make the draft worse: it
forgets what it matched).
The draft thus follows the queries users actually send. With several drafts
(one per query class) a router picks which draft serves each query.
``serve_batch`` answers several queries at once with batched speculative
decoding (``osd_lab.batched``, notebook 08).
Taught in ``notebooks/06_online_speculative_decoding``.
"""

import contextlib
import copy
import random
import threading
import weakref
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from osd_lab.background import (BackgroundTrainer, check_threads, resolve_update_mode,
                                split_threads, torch_threads)
from osd_lab.batched import (BATCH_DRAFT_LEN_POLICIES, batched_autoregressive_generate,
                             batched_speculative_generate)
from osd_lab.checks import (ArgumentError, check_choice, check_float, check_int, check_seed,
                            is_integer)
from osd_lab.decoding import (DEFAULT_DRAFT_LEN, autoregressive_generate, make_policy,
                              speculative_generate)
from osd_lab.distill import batch_targets, distillation_step, first_scored, make_batch
from osd_lab.divergences import DIVERGENCES, compress
from osd_lab.finetune import (add_lora, check_lora_rank, default_lr, default_warmup_updates,
                              master_weights, merge_lora, num_parameters)
from osd_lab.models import output_vocab_size
from osd_lab.policies import (DEFAULT_DRAFT_LEN_POLICY, GoodputPolicy, check_stop_rule,
                              moving_average)
from osd_lab.timing import clock

STREAMS = ("sharp", "smooth", "iid")
UPDATE_MODES = ("auto", "sync", "background")
# update_interval None: by the update mode. On the serving path an update costs serving
# time: every 4th query. In the background it costs only the threads it takes while it
# runs: after every query (a waiting update is not queued twice, so a trainer slower than
# the traffic takes fewer). Measured on the main job (README, "Online speculative decoding").
UPDATE_INTERVAL = dict(sync=4, background=1)
# the pair the online decoder is shown with (main job, dashboard notebook, notebook 06):
# the zoo target with its draft trained on all four domains (README, "Choosing the
# default draft"); the sql-only "zoo" draft stays for the lessons on weak drafts and routing
ONLINE_PAIR = "zoo-all"
ALPHA_SMOOTHING = 0.05  # weight of each decided position in a draft's running alpha
# lora_rank="auto": LoRA adapters of rank LORA_RANK for a draft of over LORA_ABOVE
# parameters (a 0.5B/1.5B Qwen pair in float32: 10.1-10.6 GiB peak instead of 15.5-15.9
# with full fine-tuning, benchmarks/memory.py), every weight trained below it (the zoo's 2M
# draft, as before).
# LORA_ABOVE is finetune.UNDO_LIMIT too: the default never gives up the exact undo.
LORA_ABOVE = 10**8
LORA_RANK = 16


def default_update_interval(update_mode="auto", threads=None) -> int:
    """The decoder's ``update_interval`` when it is given None: ``UPDATE_INTERVAL``
    of the mode ``update_mode`` resolves to with ``threads`` (None: torch's count)."""
    return UPDATE_INTERVAL[resolve_update_mode(update_mode, threads)]


@dataclass(frozen=True)
class OnlineConfig:
    """The online decoder's settings, every default defined here once: the main
    job's flags (``osd_lab.__main__``) and the dashboard's sliders
    (``osd_lab.dashboard``) start from them. Derive others with
    ``dataclasses.replace``; ``OnlineSpeculativeDecoder`` checks them."""

    # decoding
    # "goodput" (one GoodputPolicy per draft: each draft's running alpha carries
    # from query to query and follows its updates), "constant" or "heuristic"
    draft_len_policy: str = DEFAULT_DRAFT_LEN_POLICY
    # tokens drafted per step: gamma (constant), its start (heuristic) or its most
    # (goodput); None: the policy's (decoding.DEFAULT_DRAFT_LEN: 4, 4 and 16)
    draft_len: int | None = None
    # a stopping rule (osd_lab.policies): "auto" is transformers' confidence rule
    # with goodput, none with the others; None: no rule
    stop_rule: str | None = "auto"
    stop_threshold: float | None = None  # the rule's threshold; None: policies.STOP_THRESHOLD
    max_new_tokens: int = 32  # tokens per answer, at least 2 (with 1, nothing is drafted)
    temperature: float = 0.0  # 0: greedy
    # also decode every query autoregressively, untimed as serving but timed
    # beside it (history's baseline_s, baseline_tokens), for evaluation.served_speed
    baseline: bool = False

    # updates
    # "sync": each update on the serving path, after the query that made it due;
    # "background": in a thread, on a copy of the draft (OnlineSpeculativeDecoder);
    # "auto": "background" with 2 threads or more, else "sync" (off the serving path
    # was measured faster: README, "Online speculative decoding")
    update_mode: str = "auto"
    # queries between updates; None: UPDATE_INTERVAL of the mode the decoder runs
    # in (4 with the updates on the serving path, 1 in the background)
    update_interval: int | None = None
    # the CPU threads the decoder may use (None: torch's current count); a
    # background trainer takes half of them while it runs; the baseline always
    # decodes with all of them
    threads: int | None = None
    # a draft whose running alpha (over the positions verification decided on the
    # queries it served) is at or above this takes no update: it already matches
    # the target on this traffic, and an update costs serving time (None: always update)
    update_below_alpha: float | None = 0.8

    # distillation
    buffer_size: int = 128  # corrected queries kept per draft (oldest dropped first)
    # the buffer keeps, per position, the target's top k log-probabilities and the
    # mass of the rest (divergences.compress; 64 of 151936 Qwen tokens hold
    # 64 * 8 + 4 bytes instead of 600 kB); None keeps the full logits
    buffer_top_k: int | None = 64
    loss: str = "fkl"  # a divergence of osd_lab.divergences
    # None: finetune.default_lr by the draft's size (1e-3 for the zoo, 1e-5 for a 0.5B draft)
    lr: float | None = None
    batch_size: int = 8  # buffered queries per update
    # updates over which lr ramps up linearly; None: finetune.default_warmup_updates
    # (0 for the zoo)
    warmup_updates: int | None = None
    # None for plain distillation, or AdaSPEC's k in (0, 1]: each draft then has a
    # reference copy, distilled with forward KL on the same batches, and the draft
    # trains only on the top k of tokens by
    # delta = KL(p || q_draft) - KL(p || q_reference)
    keep_fraction: float | None = None
    # "auto" chooses per draft by its size: LoRA of rank LORA_RANK (16) over
    # LORA_ABOVE (10^8) parameters, such as a 0.5B Qwen, and full fine-tuning under
    # it, such as the zoo's 2M draft. An integer adds LoRA adapters of that rank to
    # each draft (finetune.add_lora, through peft): the drafts' base weights never
    # move, and an update saves only the adapters for its undo. None asks for full
    # fine-tuning of every draft: every weight trains (a half-precision draft through
    # float32 master weights, finetune.master_weights; over UNDO_LIMIT weights without
    # an undo copy, see finetune.guarded_step); for a float32 0.5B draft that adds its
    # gradients and AdamW's moments, 12 bytes a weight (README, "Real pairs: memory
    # and LoRA"). The decoder's lora_ranks holds each draft's choice.
    lora_rank: int | str | None = "auto"
    seed: int = 0  # the buffer's sampling and the decoding's generator


DEFAULTS = OnlineConfig()  # the decoder's defaults: DEFAULTS.update_mode, ...


# -----------------------------------------------------------------------------
# query streams

def make_stream(kind, prompts_by_domain, num_queries, *, seed=0):
    """A list of ``(domain, prompt)`` queries whose domain mix changes over time.

    "sharp": one block per domain, in order; "smooth": the mix moves linearly
    from each domain to the next; "iid": every query from a uniform random domain.
    """
    check_choice("stream", kind, STREAMS)
    check_int("num_queries", num_queries, low=1)
    seed = check_seed(seed)
    if not isinstance(prompts_by_domain, dict):
        raise ValueError(f"prompts_by_domain must be a dict {{domain: [prompt, ...]}}, "
                         f"got {type(prompts_by_domain).__name__}")
    domains = [d for d, prompts in prompts_by_domain.items() if prompts]
    if not domains:
        raise ValueError("empty stream: no domain has any prompt")
    rng = random.Random(seed)
    stream = []
    for i in range(num_queries):
        if kind == "iid":
            domain = rng.choice(domains)
        elif kind == "sharp":
            domain = domains[i * len(domains) // num_queries]
        else:  # smooth: position along the domain list, mixed between neighbours
            position = i / max(1, num_queries - 1) * (len(domains) - 1)
            low = int(position)
            domain = domains[min(low + 1, len(domains) - 1)] if rng.random() < position - low \
                else domains[low]
        stream.append((domain, rng.choice(prompts_by_domain[domain])))
    return stream


# -----------------------------------------------------------------------------
# routers: which draft serves a query

class OracleRouter:
    """Knows each query's domain; unknown domains fall back to ``fallback``."""

    def __init__(self, names, fallback):
        self.names, self.fallback = list(names), fallback
        check_choice("fallback", fallback, self.names)

    def route(self, prompt_ids, domain=None):
        if domain in self.names:
            return domain, None
        return self.fallback, f"unknown domain {domain!r}: served by the {self.fallback!r} draft"

    def observe(self, prompt_ids, domain):
        pass


class LearnedRouter:
    """A bag-of-tokens logistic-regression classifier, trained online.

    After each query its domain is revealed (e.g. by user feedback) and the
    router takes one SGD step on it. It falls back when the prompt is unlike
    anything it has learned from (more than ``max_novelty`` of its distinct
    tokens never seen: a classifier is confidently wrong on such inputs) or
    when its confidence is below ``min_confidence``.
    """

    def __init__(self, names, fallback, vocab_size, lr=0.5, min_confidence=0.6,
                 max_novelty=0.5, seed=0):
        names = list(names)
        check_choice("fallback", fallback, names)
        check_int("vocab_size", vocab_size, low=1)
        check_float("lr", lr, low=0, low_open=True)
        check_float("min_confidence", min_confidence, 0, 1)
        check_float("max_novelty", max_novelty, 0, 1)
        seed = check_seed(seed)
        self.names, self.fallback, self.min_confidence = names, fallback, min_confidence
        self.vocab_size, self.max_novelty = vocab_size, max_novelty
        # torch.nn.Linear's own initialisation, from the router's own generator
        # (the global torch RNG is left alone)
        generator = torch.Generator().manual_seed(seed)
        self.classifier = torch.nn.utils.skip_init(torch.nn.Linear, vocab_size, len(self.names))
        bound = 1 / vocab_size ** 0.5
        with torch.no_grad():
            self.classifier.weight.uniform_(-bound, bound, generator=generator)
            self.classifier.bias.uniform_(-bound, bound, generator=generator)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=lr)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)  # tokens of observed prompts

    def features(self, prompt_ids):
        counts = torch.bincount(prompt_ids.flatten().cpu(), minlength=self.vocab_size)
        return (counts[:self.vocab_size] > 0).float()  # (V,) which tokens occur

    def route(self, prompt_ids, domain=None):
        features = self.features(prompt_ids)
        novelty = 1 - features[self.seen].sum() / features.sum().clamp(min=1)
        if novelty > self.max_novelty:
            return self.fallback, (f"prompt unlike any seen so far ({novelty:.0%} of its tokens "
                                   f"new): served by the {self.fallback!r} draft")
        with torch.no_grad():
            probs = torch.softmax(self.classifier(features), -1)
        confidence, index = probs.max(-1)
        if confidence < self.min_confidence:
            return self.fallback, (f"router unsure ({confidence:.2f} < {self.min_confidence}): "
                                   f"served by the {self.fallback!r} draft")
        return self.names[int(index)], None

    def observe(self, prompt_ids, domain):
        if domain not in self.names:
            return
        features = self.features(prompt_ids)
        self.seen |= features.bool()
        logits = self.classifier(features)
        loss = torch.nn.functional.cross_entropy(logits[None],
                                                 torch.tensor([self.names.index(domain)]))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


# -----------------------------------------------------------------------------
# the online decoder

def choose_lora_rank(draft, lora_rank):
    """The LoRA rank ``draft`` trains with, or None for full fine-tuning:
    ``lora_rank`` itself, or for "auto" ``LORA_RANK`` when the draft has over
    ``LORA_ABOVE`` parameters (None under it). Checks ``lora_rank``."""
    if isinstance(lora_rank, str) and lora_rank == "auto":
        lora_rank = LORA_RANK if num_parameters(draft) > LORA_ABOVE else None
    elif lora_rank is not None and not is_integer(lora_rank):
        raise ArgumentError(f"lora_rank must be 'auto' (LoRA of rank {LORA_RANK} for a draft "
                            f"of over {LORA_ABOVE:,} parameters), None (full fine-tuning) "
                            f"or an integer >= 1 (a LoRA rank), got {lora_rank!r}")
    if lora_rank is not None:
        check_lora_rank(draft, lora_rank)
    return lora_rank


class OnlineSpeculativeDecoder:
    """Serve queries with speculative decoding and keep distilling the draft(s).

    drafts: one model, or a dict ``{name: model}`` with a ``router``
    (``OracleRouter``, ``LearnedRouter``). config: the settings, an
    ``OnlineConfig`` (default: ``DEFAULTS``); any of its fields may also be
    given as a keyword, which overrides it (``update_interval=2``). costs: the pair's
    ``SpeculationCosts`` for goodput (default: measured once per draft).
    vocab_size: the tokenizer's vocabulary when the models' outputs are padded
    past it (``ModelPair.vocab_size``; None: the models' own). The resolved
    settings are attributes: ``update_mode`` (the mode "auto" chose),
    ``update_interval``, ``threads``, ``draft_len``, ``stop_rule`` and
    ``stop_threshold``; ``lora_ranks`` holds each draft's LoRA choice.

    ``history`` holds per query: ``domain``, ``draft`` (which served it),
    ``alpha`` (the query's ``verified_alpha``), ``tau``, ``new_tokens``,
    ``latency_s`` (decoding), ``update_s`` (the updates run after it: they
    are serving time too), ``draft_len`` (mean drafted tokens per step),
    ``notes`` (e.g. a router's fallback), and with ``baseline``
    ``baseline_s`` and ``baseline_tokens``; and ``updates`` as
    ``(query_index, draft, loss, batch)`` and ``skipped`` updates as
    ``(query_index, draft)``.

    With update_mode "background" each update runs in a thread
    (``osd_lab.background``) on a private copy of the draft while later
    queries are served, and the new weights are copied into the serving draft
    between queries (``history["swaps"]``: ``(query_index, draft)``). Its
    updates take no serving time (``update_s`` 0) but half of ``threads``
    while they run; ``trainer_cpu_s`` is what they used. A trainer error is
    recorded in ``history["trainer_errors"]`` as ``(query_index, draft,
    error)``; serving goes on with the last good weights and the buffer
    keeps every query. Call ``close()`` (or use ``with``) to finish the
    updates, swap in their weights and stop the thread. The trainer's copy
    holds a second set of each draft's weights in memory.
    """

    def __init__(self, target, drafts, tokenizer, config: OnlineConfig = DEFAULTS, *,
                 router=None, costs=None, vocab_size=None, **settings):
        if not isinstance(config, OnlineConfig):
            raise ArgumentError(f"config must be an OnlineConfig (osd_lab.online) of the "
                                f"decoder's settings, got {type(config).__name__}")
        known = [f.name for f in fields(OnlineConfig)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ArgumentError(f"unknown setting(s) {unknown}: the decoder's settings are "
                                f"OnlineConfig's fields, {known}")
        c = self.config = replace(config, **settings)
        for name in ("buffer_size", "batch_size"):
            check_int(name, getattr(c, name), low=1)
        if c.update_interval is not None:
            check_int("update_interval", c.update_interval, low=1)
        check_choice("baseline", c.baseline, (True, False))
        check_choice("update_mode", c.update_mode, UPDATE_MODES)
        self.update_mode = resolve_update_mode(c.update_mode, c.threads)
        self.threads = check_threads(c.threads, self.update_mode)
        self.update_interval = (UPDATE_INTERVAL[self.update_mode] if c.update_interval is None
                                else c.update_interval)
        if c.update_below_alpha is not None:
            check_float("update_below_alpha", c.update_below_alpha, 0, 1, low_open=True)
        check_choice("loss", c.loss, DIVERGENCES)
        if c.keep_fraction is not None:
            check_float("keep_fraction (AdaSPEC's k)", c.keep_fraction, 0, 1, low_open=True)
        if c.lr is not None:
            check_float("lr", c.lr, 0, 1, low_open=True)
        if c.warmup_updates is not None:
            check_int("warmup_updates", c.warmup_updates, low=0)
        check_int("max_new_tokens", c.max_new_tokens, low=2)  # with 1, nothing is drafted
        check_float("temperature", c.temperature, low=0)
        seed = check_seed(c.seed)
        if vocab_size is not None:
            check_int("vocab_size", vocab_size, low=1)  # its upper bound: check_pair
        if c.buffer_top_k is not None:
            check_int("buffer_top_k", c.buffer_top_k, 1, vocab_size or output_vocab_size(target))
        self.drafts = drafts if isinstance(drafts, dict) else {"draft": drafts}
        if not self.drafts:
            raise ValueError("drafts must be a model or a non-empty dict {name: model}, got {}")
        if len(self.drafts) > 1 and router is None:
            raise ValueError("several drafts need a router (OracleRouter or LearnedRouter)")
        if router is not None and not set(router.names) <= set(self.drafts):
            raise ValueError(f"router must route to the drafts {sorted(self.drafts)}, "
                             f"got one for {router.names}")
        self.target, self.tokenizer, self.router = target, tokenizer, router
        self.vocab_size = vocab_size
        self.buffers = {name: deque(maxlen=c.buffer_size) for name in self.drafts}
        # every draft checked before any is changed
        self.lora_ranks = {name: choose_lora_rank(d, c.lora_rank)
                           for name, d in self.drafts.items()}
        for name, draft in self.drafts.items():
            if self.lora_ranks[name] is not None:
                add_lora(draft, self.lora_ranks[name])
        # the models updates train: the serving drafts, or in the background copies of them
        self.trained = (self.drafts if self.update_mode == "sync"
                        else {name: copy.deepcopy(d) for name, d in self.drafts.items()})
        # AdaSPEC: a reference per draft, from the same weights, trained with plain FKL
        self.references = ({name: copy.deepcopy(d) for name, d in self.drafts.items()}
                           if c.keep_fraction is not None else {})
        models = {**self.trained, **{("reference", n): r for n, r in self.references.items()}}
        ranks = {**self.lora_ranks,
                 **{("reference", n): self.lora_ranks[n] for n in self.references}}
        self.optimizers, self.schedulers = {}, {}
        # a half-precision draft trains float32 copies of its weights (LoRA adapters
        # are float32 already): small steps would round away in bfloat16
        self.masters = {key: master_weights(model) for key, model in models.items()}
        for key, model in models.items():
            trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: adapters
            self.optimizers[key] = torch.optim.AdamW(
                self.masters[key] or trainable,
                lr=default_lr(model, ranks[key]) if c.lr is None else c.lr, weight_decay=0.0)
            warmup = (default_warmup_updates(model) if c.warmup_updates is None
                      else c.warmup_updates)
            self.schedulers[key] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[key], lambda step, w=warmup: min(1.0, (step + 1) / (w + 1)))
        self.rng = random.Random(seed)
        self.generator = torch.Generator(device=target.device).manual_seed(seed)
        self.history = {k: [] for k in (
            "domain", "draft", "alpha", "tau", "new_tokens", "latency_s", "update_s",
            "draft_len", "notes", "updates", "skipped", "baseline_s", "baseline_tokens",
            "swaps", "trainer_errors")}
        # how each draft drafts: the same settings speculative_generate checks
        self.stop_rule, self.stop_threshold = check_stop_rule(c.stop_rule, c.stop_threshold,
                                                              c.draft_len_policy)
        self.policies = {name: make_policy(target, d, c.draft_len_policy, c.draft_len, costs)
                         for name, d in self.drafts.items()}  # one per draft, across queries
        self.draft_len = (DEFAULT_DRAFT_LEN[c.draft_len_policy] if c.draft_len is None
                          else c.draft_len)
        self.fresh = dict.fromkeys(self.drafts, 0)  # queries buffered since the last update
        self.running_alpha = dict.fromkeys(self.drafts, 0.5)  # per draft, on what it served
        self.lock = threading.Lock()  # the buffers and published weights, across threads
        self.published = {}  # name -> trainable weights the trainer kept, not yet swapped in
        self.trainer = None
        if self.update_mode == "background":
            self.trainer = BackgroundTrainer(self._train_in_background)
            weakref.finalize(self, self.trainer.close)  # deleting the decoder stops its thread

    # -------------------------------------------------------------------------
    # background updates

    @property
    def trainer_cpu_s(self) -> float:
        """CPU seconds the background trainer used (0 with update_mode="sync")."""
        return self.trainer.cpu_s if self.trainer else 0.0

    def _train_in_background(self, name):
        """One update of draft ``name``'s copy, in the trainer's thread; a kept
        update publishes the copy's trainable weights for ``swap_in``."""
        try:
            with torch_threads(split_threads(self.threads, trainer_busy=True)):
                taken = self.update(name)
        except Exception as error:  # serving goes on with the last good weights
            self.history["trainer_errors"].append((len(self.history["domain"]), name,
                                                   repr(error)))
            return
        if taken:
            weights = [p.detach().clone() for p in self.trained[name].parameters()
                       if p.requires_grad]
            with self.lock:
                self.published[name] = weights

    def swap_in(self):
        """Copy the weights the trainer published into the serving drafts:
        called between queries, never during one."""
        with self.lock:
            published, self.published = self.published, {}
        for name, weights in published.items():
            serving = [p for p in self.drafts[name].parameters() if p.requires_grad]
            with torch.no_grad():
                for p, w in zip(serving, weights):
                    p.copy_(w)
            self.history["swaps"].append((len(self.history["domain"]), name))
            self._draft_changed(name)

    def _draft_changed(self, name):
        """New weights serve as draft ``name``: its goodput policy probes again soon."""
        policy = self.policies[name]
        if isinstance(policy, GoodputPolicy):
            policy.draft_changed()

    def close(self):
        """Finish the background updates, swap in their weights and stop the
        trainer's thread (nothing to do with update_mode="sync")."""
        if self.trainer is not None:
            self.trainer.close()
            self.swap_in()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _serving_threads(self):
        """Torch threads for the next query: all of them, or half while the
        trainer has work (``osd_lab.background.split_threads``)."""
        return torch_threads(split_threads(self.threads,
                                           self.trainer is not None and self.trainer.busy()))

    @contextlib.contextmanager
    def _baseline_threads(self):
        """Plain decoding gets every thread, with the trainer paused."""
        with (self.trainer.paused() if self.trainer else contextlib.nullcontext()), \
                torch_threads(self.threads):
            yield

    # -------------------------------------------------------------------------
    # serving

    def serve(self, prompt, domain=None):
        """Answer one query (text); returns the generated text."""
        if not isinstance(prompt, str):
            raise ArgumentError(f"prompt must be a text (str), got {type(prompt).__name__}")
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.target.device)
        if ids.shape[1] == 0:
            raise ValueError("empty prompt")
        name, note = self.router.route(ids, domain) if self.router else ("draft", None)
        self.swap_in()  # between queries: the trainer's latest weights, if any
        with self._serving_threads():
            out = speculative_generate(
                self.target, self.drafts[name], ids, self.config.max_new_tokens,
                draft_len_policy=self.policies[name], stop_rule=self.stop_rule,
                stop_threshold=self.stop_threshold, temperature=self.config.temperature,
                eos_token_id=self.tokenizer.eos_token_id, generator=self.generator,
                vocab_size=self.vocab_size, record_target_logits=True)
        self._record(ids, domain, name, note, out.tokens, out.stats, out.stats.wall_time_s)
        if self.config.baseline:  # the same query, plain decoding, the same stopping rule
            with self._baseline_threads():
                plain = autoregressive_generate(self.target, ids, self.config.max_new_tokens,
                                                temperature=self.config.temperature,
                                                eos_token_id=self.tokenizer.eos_token_id,
                                                generator=self.generator)
            self.history["baseline_s"].append(plain.stats.wall_time_s)
            self.history["baseline_tokens"].append(plain.stats.new_tokens)
        self.history["update_s"][-1] += self.run_due_updates(1)
        return self.tokenizer.decode(out.tokens, skip_special_tokens=True)

    def run_due_updates(self, served: int) -> float:
        """After ``served`` more queries: run the updates that fell due (one
        per ``update_interval`` queries), each for the drafts whose buffers
        got new queries since their last update; in the background, hand
        them to the trainer. Returns the serving time they took."""
        total = len(self.history["domain"])
        due = total // self.update_interval - (total - served) // self.update_interval
        start = clock(self.target.device)
        for _ in range(due):
            for name in self.drafts:
                matches = (self.config.update_below_alpha is not None
                           and self.running_alpha[name] >= self.config.update_below_alpha)
                if self.fresh[name] and not matches:  # else the update would buy nothing
                    if self.trainer is None:
                        with torch_threads(self.threads):
                            if self.update(name):
                                self._draft_changed(name)
                    else:
                        self.trainer.submit(name)
                    self.fresh[name] = 0
        return clock(self.target.device) - start if due else 0.0

    def serve_batch(self, prompts, domains=None, draft_len_policy="bass"):
        """Answer a batch of queries (texts) with batched speculative decoding
        (``osd_lab.batched``); returns their generated texts, in order.

        Each query is routed first; the batch is then split by draft, and each
        draft's queries are decoded together (a batch shares one draft: rows
        served by different drafts cannot share the draft's forward passes).
        Corrections go to the buffer of the draft that served the row; the
        updates due within the batch (one per ``update_interval`` queries, as
        with ``serve``) run after it. Each query's ``latency_s`` is its
        group's wall time: a row's answer is ready when its group finishes.
        draft_len_policy: the batched decoder's ("constant", "heuristic" or
        "bass"); with "constant" or "heuristic", this decoder's draft_len.
        """
        check_choice("draft_len_policy", draft_len_policy, BATCH_DRAFT_LEN_POLICIES)
        domains = [None] * len(prompts) if domains is None else list(domains)
        if len(prompts) == 0 or len(domains) != len(prompts):
            raise ValueError(f"serve_batch needs at least one prompt and one domain per "
                             f"prompt, got {len(prompts)} prompts and {len(domains)} domains")
        ids = [self.tokenizer(p, return_tensors="pt").input_ids[0].to(self.target.device)
               for p in prompts]
        for i, row in enumerate(ids):
            if len(row) == 0:
                raise ValueError(f"prompts[{i}] is empty")
        routes = [self.router.route(row[None], d) if self.router else ("draft", None)
                  for row, d in zip(ids, domains)]
        results = [None] * len(prompts)  # (tokens, stats, latency) per query
        baselines = [None] * len(prompts)  # (seconds, tokens) per query
        self.swap_in()  # between batches: the trainer's latest weights, if any
        for name in dict.fromkeys(name for name, _ in routes):  # one batch per draft
            group = [i for i, (n, _) in enumerate(routes) if n == name]
            with self._serving_threads():
                out = batched_speculative_generate(
                    self.target, self.drafts[name], [ids[i] for i in group],
                    self.config.max_new_tokens,
                    draft_len=None if draft_len_policy == "bass" else self.draft_len,
                    draft_len_policy=draft_len_policy, temperature=self.config.temperature,
                    eos_token_id=self.tokenizer.eos_token_id, generator=self.generator,
                    vocab_size=self.vocab_size, record_target_logits=True)
            for i, tokens, stats in zip(group, out.tokens, out.stats.sequences):
                results[i] = tokens, stats, out.stats.wall_time_s
            if self.config.baseline:
                with self._baseline_threads():
                    plain = batched_autoregressive_generate(
                        self.target, [ids[i] for i in group], self.config.max_new_tokens,
                        temperature=self.config.temperature,
                        eos_token_id=self.tokenizer.eos_token_id, generator=self.generator)
                for i, tokens in zip(group, plain.tokens):
                    baselines[i] = plain.stats.wall_time_s, len(tokens)
        for i, (tokens, stats, latency) in enumerate(results):  # history in query order
            name, note = routes[i]
            self._record(ids[i][None], domains[i], name, note, tokens, stats, latency)
            if self.config.baseline:
                self.history["baseline_s"].append(baselines[i][0])
                self.history["baseline_tokens"].append(baselines[i][1])
        self.history["update_s"][-1] += self.run_due_updates(len(prompts))
        return [self.tokenizer.decode(tokens, skip_special_tokens=True)
                for tokens, _, _ in results]

    def save_draft(self, path, name="draft", overwrite=False):
        """Write draft ``name`` as it is now, with the tokenizer, as a standard
        transformers checkpoint: ``AutoModelForCausalLM.from_pretrained(path)``
        loads it, and it can serve as the draft model of another engine
        (transformers' ``assistant_model``, vLLM's draft-model speculative
        decoding). Refuses a non-empty folder unless ``overwrite``. In the
        background mode it writes the weights swapped in so far (``close()``
        first to include every update)."""
        check_choice("name", name, list(self.drafts))
        check_choice("overwrite", overwrite, (True, False))
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"path must be a folder, got the file {str(path)!r}")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise ValueError(f"path {str(path)!r} is a non-empty folder: pick another, or "
                             f"pass overwrite=True to replace what is there")
        draft = self.drafts[name]
        if any(hasattr(m, "base_layer") for m in draft.modules()):  # LoRA: fold the adapters in
            draft = merge_lora(draft)
        draft.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def _record(self, ids, domain, name, note, tokens, stats, latency):
        """After a query (``ids`` ``(1, T)``) was served by draft ``name``:
        buffer it if the target corrected the draft, let the router learn its
        domain, and append it to ``history``."""
        if stats.corrections or 0 in stats.draft_lens:  # the target wrote some of it
            sequence = torch.cat([ids[0], tokens]).cpu()  # keep it, with the target's logits
            logits = stats.target_logits  # (N, V)
            top_k = self.config.buffer_top_k
            kept = compress(logits, top_k) if top_k else logits
            with self.lock:  # the trainer may be sampling it
                self.buffers[name].append((sequence, ids.shape[1], kept.to("cpu")))
            self.fresh[name] += 1
        self.running_alpha[name] = moving_average(self.running_alpha[name],
                                                  stats.decided_alpha, ALPHA_SMOOTHING)
        if self.router:
            self.router.observe(ids, domain)
        h = self.history
        h["domain"].append(domain)
        h["draft"].append(name)
        h["alpha"].append(stats.verified_alpha)
        h["tau"].append(stats.tau)
        h["new_tokens"].append(stats.new_tokens)
        h["latency_s"].append(latency)
        h["update_s"].append(0.0)
        h["draft_len"].append(sum(stats.draft_lens) / max(1, len(stats.draft_lens)))
        h["notes"].append(note)

    def update(self, name="draft") -> bool:
        """One distillation step of draft ``name`` (and of its AdaSPEC reference)
        on a sample of its buffer; in the background, of the trainer's copy.
        Returns whether the step was kept (False: skipped, or nothing buffered)."""
        draft = self.trained[name]
        with self.lock:
            buffer = list(self.buffers[name])
        if not buffer:
            return False
        batch = self.rng.sample(buffer, min(self.config.batch_size, len(buffer)))
        prompt_lens = [n for _, n, _ in batch]
        ids, mask = make_batch([seq for seq, _, _ in batch], prompt_lens)
        start = first_scored(mask)  # positions before it are every row's prompt
        mask = mask[:, start:]  # (B, L'), L' = L - 1 - start
        # (B, L', V) logits, or a CompactDistribution of (B, L') positions
        targets = batch_targets([t for _, _, t in batch], prompt_lens, mask.shape, start)
        ids, mask, targets = ids.to(draft.device), mask.to(draft.device), targets.to(draft.device)
        query = len(self.history["domain"])
        reference_loss = None
        if name in self.references:  # AdaSPEC: which tokens can a draft this size learn?
            reference_loss = self._step(self.references[name], ("reference", name), ids,
                                        targets, mask, "fkl").per_token  # (B, L')
        value = self._step(draft, name, ids, targets, mask, self.config.loss, reference_loss).loss
        if value is None:
            self.history["skipped"].append((query, name))
        else:
            self.history["updates"].append((query, name, value, len(batch)))
        return value is not None

    def _step(self, model, key, ids, targets, mask, loss, reference_loss=None):
        """``distill.distillation_step`` of ``model`` with the optimiser and the
        master weights under ``key``; a step taken advances its warm-up. Never
        serves a broken draft: a step that would leave one is skipped (loss None)."""
        result = distillation_step(model, self.optimizers[key], ids, targets, mask, loss=loss,
                                   vocab_size=self.vocab_size, reference_loss=reference_loss,
                                   keep_fraction=self.config.keep_fraction,
                                   master=self.masters[key])
        if result.loss is not None:
            self.schedulers[key].step()  # warm-up counts the updates taken
        return result
