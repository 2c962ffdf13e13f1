"""Speed, side by side in one process: plain vs speculative (every policy) vs transformers.

    python benchmarks/speed.py [--pair zoo] [--prompt-set heldout|unlike] [--prompts 20]
                               [--tokens 64] [--repeats 2] [--threads 2]
                               [--device cuda] [--dtype bfloat16]
    python benchmarks/speed.py --pair layered-qwen2.5 --alpha 0.6 0.8 0.95 --tokens 24
    python benchmarks/speed.py --pair random-qwen2.5 [--self-draft] --tokens 16 --repeats 1

On the same prompts, device and threads, greedy decoding until end-of-text
or ``--tokens`` with
  * ``autoregressive_generate`` (KV cache, the baseline),
  * ``speculative_generate`` called with its defaults (goodput + transformers'
    confidence rule, ``osd_lab.policies.DEFAULT_*``), and with each
    draft-length policy (constant gamma=4, heuristic, goodput without a rule,
    goodput + entropy),
  * transformers' ``generate`` alone and with ``assistant_model=draft`` and
    its default schedule (heuristic from 20 with a confidence threshold of
    0.4, on transformers 5).
Each method is warmed up, then timed ``--repeats`` times over all prompts,
methods interleaved, fastest total kept (``osd_lab.timing``). Every method's
tokens must equal the baseline's (in float32 the script stops otherwise).
Forward hooks count every method's target and draft passes per new token,
which do not move with the machine's load. For our speculative methods the
cost model predicts the speedup from the measured alpha, each step's draft
length and the measured costs (c and the target's verify cost as a function
of tokens, ``measure_costs``); the table shows measured / predicted.

--prompt-set: "heldout", the held-out prompts of ``--domain``; "unlike",
SQL questions over schemas and phrasings the zoo never saw (only with the
sql domain). --pair: "zoo", a preset, a layered pair or a random pair from
``random_pairs.py``, both with real shapes and random weights:
  * layered (``layered-qwen2.5``: a Qwen2.5-1.5B-shaped target drafted for
    by its own first 6 layers and head, c about 0.3): the script calibrates
    it to each ``--alpha`` in turn (scaling the target's upper layers down)
    and prints one table per alpha, with the alpha measured while decoding;
  * random (``random-qwen2.5``: a random 0.5B draft, alpha an accident, near
    0; ``--self-draft``: the target drafts for itself, alpha = 1 and c = 1).
On these the prompts are ``REAL_SHAPE_PROMPTS`` (code, prose, SQL;
``--prompts`` caps them), the costs are measured in three rounds, and goodput
+ entropy and transformers' plain ``generate`` are left out (a 1.5B target
takes a second per pass on a small CPU). Every row also gives the mean time
of one target call and one draft call (forward hooks), and the time per token
spent outside the models' passes: the loop's overhead. Nothing here is a test.
"""

import argparse
import time
from dataclasses import dataclass

import torch

from osd_lab.cost import expected_tokens_per_step
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.measure import measure_costs
from osd_lab.models import load_pair
from osd_lab.policies import DEFAULT_DRAFT_LEN_POLICY, DEFAULT_STOP_RULE, GoodputPolicy
from osd_lab.sampling import get_device
from osd_lab.step import DecodingStats, GenerationOutput
from osd_lab.timing import CountCalls, clock, time_side_by_side
from osd_lab.zoo.corpus import load_corpus
from random_pairs import LAYERED_PAIRS, RANDOM_PAIRS, calibrate, layered_pair, random_pair, shared_copy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# SQL prompts unlike the corpus: schemas it never saw, questions not from its templates.
UNLIKE = [
    ("books(id, title, author, pages, published); loans(id, book_id, member, due_year)",
     "Which books have more than 300 pages?"),
    ("cars(id, make, model, year, price); dealers(id, name, city)",
     "Show every make and model made after 2015."),
    ("patients(id, name, age, ward); visits(id, patient_id, doctor, visit_year)",
     "How many patients are older than 60?"),
    ("songs(id, title, artist, length, genre); plays(id, song_id, listener, play_year)",
     "titles of rock songs longer than 240 seconds"),
    ("teams(id, name, city, founded); players(id, name, team_id, goals)",
     "Find the players who scored at least 10 goals."),
    ("recipes(id, name, cuisine, minutes); ingredients(id, recipe_id, item, grams)",
     "list italian recipes that take under 30 minutes"),
    ("hotels(id, name, city, stars); bookings(id, hotel_id, guest, nights)",
     "Which hotels in Paris have five stars?"),
    ("courses(id, title, credits, level); enrollments(id, course_id, student, grade)",
     "What is the average grade in each course?"),
    ("ships(id, name, tonnage, built); voyages(id, ship_id, port, voyage_year)",
     "Name the ships built before 1950."),
    ("plants(id, species, height, region); surveys(id, plant_id, observer, survey_year)",
     "count the plants in each region"),
    ("stations(id, name, line, opened); trips(id, station_id, rider, trip_year)",
     "Which stations opened after 2000, newest first?"),
    ("games(id, title, studio, rating); sales(id, game_id, country, copies)",
     "Total copies sold per game, highest first."),
    ("museums(id, name, city, founded); exhibits(id, museum_id, title, visitors)",
     "exhibits with more than 10000 visitors"),
    ("bakeries(id, name, district); breads(id, bakery_id, kind, price)",
     "What is the cheapest bread at each bakery?"),
    ("rivers(id, name, length, country); bridges(id, river_id, name, built)",
     "List rivers longer than 1000 km in Brazil."),
    ("farms(id, owner, acres, county); harvests(id, farm_id, crop, tons)",
     "Which farms harvested more than 50 tons of wheat?"),
    ("clinics(id, name, town); vaccines(id, clinic_id, brand, doses)",
     "how many doses did each clinic give"),
    ("concerts(id, band, venue, concert_year); tickets(id, concert_id, price, sold)",
     "Show concerts in 2023 with tickets above 80."),
    ("gyms(id, name, city); members(id, gym_id, name, join_year)",
     "Who joined a gym in Berlin before 2019?"),
    ("libraries(id, name, branch); computers(id, library_id, model, working)",
     "Find libraries whose computers are all working."),
    ("airlines(id, name, country); planes(id, airline_id, model, seats)",
     "Which airline has the most seats in total?"),
]


# One prompt of each kind for real-shape pairs on a CPU (a 1.5B target: seconds a prompt).
REAL_SHAPE_PROMPTS = {
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "prose": "The history of the printing press begins in the fifteenth century, when",
    "sql": "Schema: books(id, title, author, pages)\nQuestion: Which books have more "
           "than 300 pages?\nSQL:",
}


def unlike_prompts():
    return [f"Schema: {schema}\nQuestion: {question}\nSQL:" for schema, question in UNLIKE]


@dataclass
class CountedStats(DecodingStats):
    """A decoder's statistics, plus what forward hooks counted (``CountCalls``)."""

    target_passes: int = 0
    draft_passes: int = 0
    target_seconds: float = 0.0
    draft_seconds: float = 0.0


def ours(pair, tokens, eos, speculative=True, **kwargs):
    """Our decoder as ``f(ids) -> GenerationOutput``; stats also count calls.
    kwargs: options of ``speculative_generate`` (none: its defaults)."""
    def decode(ids):
        counter = CountCalls(target=pair.target, draft=pair.draft)
        with counter as calls:
            if speculative:
                out = speculative_generate(pair.target, pair.draft, ids, tokens, eos_token_id=eos,
                                           vocab_size=pair.vocab_size, **kwargs)
            else:
                out = autoregressive_generate(pair.target, ids, tokens, eos_token_id=eos)
        out.stats = CountedStats(**vars(out.stats), target_passes=calls["target"],
                                 draft_passes=calls["draft"],
                                 target_seconds=counter.seconds["target"],
                                 draft_seconds=counter.seconds["draft"])
        return out
    return decode


def transformers_generate(pair, tokens, eos, assistant=None):
    """transformers' ``generate``, alone or with the draft as ``assistant_model``
    (a copy sharing its weights: transformers keeps its schedule's state on
    the assistant)."""
    draft = shared_copy(pair.draft) if assistant else None

    def decode(ids):
        counter = CountCalls(target=pair.target, **({"draft": draft} if draft else {}))
        with counter as calls:
            start = clock(pair.device)
            out = pair.target.generate(ids, assistant_model=draft, do_sample=False,
                                       max_new_tokens=tokens, eos_token_id=eos,
                                       pad_token_id=pair.tokenizer.pad_token_id,
                                       attention_mask=torch.ones_like(ids))
            wall = clock(pair.device) - start
        new = out[0, ids.shape[1]:]
        return GenerationOutput(new, CountedStats(
            target_calls=calls["target"], new_tokens=len(new), wall_time_s=wall,
            target_passes=calls["target"], draft_passes=calls.get("draft", 0),
            target_seconds=counter.seconds["target"],
            draft_seconds=counter.seconds.get("draft", 0.0)))
    return decode


def predicted_speedup(stats, costs):
    """The cost model's speedup over plain decoding for the steps these runs
    took: expected tokens of each step (alpha pooled over the runs, the step's
    draft length) over its cost (g c + verify(g + 1), in one-token passes)."""
    decided = [a for s in stats for a in s.decided_alpha]
    alpha = sum(decided) / len(decided) if decided else 0.0
    gammas = [g for s in stats for g in s.draft_lens]
    tokens = sum(expected_tokens_per_step(alpha, g) for g in gammas)
    cost = sum(g * costs.draft_step + costs.verify_cost(g + 1) for g in gammas)
    return alpha, tokens / cost


def methods_for(pair, n, eos, costs, few):
    """The decoders to compare, by name; ``few``: on a real-shape pair (seconds
    per pass) leave out those that tell the least."""
    methods = {
        "autoregressive (ours)": ours(pair, n, eos, speculative=False),
        f"speculative, the default call ({DEFAULT_DRAFT_LEN_POLICY} + {DEFAULT_STOP_RULE})":
            ours(pair, n, eos),
        "speculative, constant gamma=4": ours(pair, n, eos, draft_len_policy="constant"),
        "speculative, heuristic": ours(pair, n, eos, draft_len_policy="heuristic"),
        "speculative, goodput": ours(pair, n, eos, draft_len_policy="goodput", costs=costs,
                                     stop_rule=None),
        "speculative, goodput + entropy": ours(pair, n, eos, draft_len_policy="goodput",
                                               costs=costs, stop_rule="entropy"),
        "transformers generate": transformers_generate(pair, n, eos),
        "transformers assisted (defaults)": transformers_generate(pair, n, eos, assistant=True),
    }
    if few:
        for name in ("speculative, goodput + entropy", "transformers generate"):
            del methods[name]
    return methods


def print_table(pair, prompts, warmup, methods, costs, repeats):
    """Time ``methods`` side by side and print one table row per method."""
    results = time_side_by_side(methods, prompts, warmup, repeats)
    base = results["autoregressive (ours)"]
    assisted = results["transformers assisted (defaults)"]
    print("\n| method | tokens/s | vs autoregressive | vs assisted | target calls / token | "
          "draft calls / token | s / target call | s / draft call | overhead ms / token | "
          "alpha | tau | predicted | measured / predicted |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    differing = {}
    for name, r in results.items():
        differing[name] = sum(o != b for o, b in zip(r["outputs"], base["outputs"]))
        if differing[name] and pair.target.dtype == torch.float32:
            raise SystemExit(f"{name}: greedy output differs from autoregressive decoding")
        rate = r["tokens"] / r["wall_s"]
        speed = base["wall_s"] / r["wall_s"]
        target_calls = sum(s.target_passes for s in r["stats"]) / r["tokens"]
        draft_calls = sum(s.draft_passes for s in r["stats"]) / r["tokens"]
        # per-call seconds and the rest, from the last repeat (forward hooks)
        seconds = {m: sum(getattr(s, f"{m}_seconds") for s in r["stats"])
                   for m in ("target", "draft")}
        passes = {m: sum(getattr(s, f"{m}_passes") for s in r["stats"])
                  for m in ("target", "draft")}
        per_call = [f"{seconds[m] / passes[m]:.3f}" if passes[m] else "" for m in passes]
        last_wall = sum(s.wall_time_s for s in r["stats"])
        overhead = 1000 * (last_wall - sum(seconds.values())) / r["tokens"]
        cells = ["", "", "", ""]
        if r["stats"][0].draft_lens:  # a speculative decoder of ours
            alpha, predicted = predicted_speedup(r["stats"], costs)
            tau = r["tokens"] / sum(s.target_calls for s in r["stats"])
            cells = [f"{alpha:.3f}", f"{tau:.2f}", f"{predicted:.2f}x", f"{speed / predicted:.0%}"]
        print(f"| {name} | {rate:.1f} | {speed:.2f}x | {assisted['wall_s'] / r['wall_s']:.2f}x | "
              f"{target_calls:.3f} | {draft_calls:.3f} | {per_call[0]} | {per_call[1]} | "
              f"{overhead:.1f} | " + " | ".join(cells) + " |")
    print("\n(calls per token count every forward pass, the ones that read the prompt too; tokens per prompt: "
          f"{base['tokens'] / len(prompts):.1f} on average)")
    differing = {name: k for name, k in differing.items() if k}
    if not differing:
        print("all greedy outputs agree token for token")
    for name, k in differing.items():
        print(f"{name}: {k} of {len(prompts)} prompts differ from autoregressive decoding "
              f"(half precision: near-ties round differently in multi-token passes)")


def print_goodput_choices(costs):
    """What the cost model predicts at these costs for gamma = 4 and for goodput's choice."""
    step_cost = 4 * costs.draft_step + costs.verify_cost(5)  # gamma = 4, in target passes
    predicted = ", ".join(f"alpha {a}: {expected_tokens_per_step(a, 4) / step_cost:.2f}x"
                          for a in (0.6, 0.7, 0.8, 0.9, 0.95))
    print(f"Cost model with the measured c and verify cost, gamma = 4, predicts {predicted}")
    choices = []
    for a in (0.6, 0.7, 0.8, 0.9, 0.95):  # goodput's best block at each alpha, and its speedup
        policy = GoodputPolicy(costs, alpha=a)
        best = policy.best_draft_len()
        choices.append(f"alpha {a}: gamma = {best}, {policy.goodput(best):.2f}x")
    print(f"goodput's choice at those costs: {', '.join(choices)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="zoo")
    parser.add_argument("--self-draft", action="store_true",
                        help="random pairs: the target drafts for itself (alpha = 1)")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.6, 0.8, 0.95],
                        help="layered pairs: the alphas to calibrate the pair to, in turn")
    parser.add_argument("--domain", default="sql")
    parser.add_argument("--prompt-set", choices=("heldout", "unlike"), default="heldout")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="default: float32 for the zoo and on a CPU, else bfloat16")
    args = parser.parse_args(argv)
    if args.prompt_set == "unlike" and args.domain != "sql":
        parser.error("--prompt-set unlike has SQL prompts only: use --domain sql")
    for flag, value in (("--prompts", args.prompts), ("--tokens", args.tokens),
                        ("--repeats", args.repeats), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} must be an integer >= 1, got {value}")
    torch.set_num_threads(args.threads)
    dtype = DTYPES.get(args.dtype)
    layered = args.pair in LAYERED_PAIRS
    real_shapes = args.pair in RANDOM_PAIRS or layered
    if args.self_draft and args.pair not in RANDOM_PAIRS:
        parser.error(f"--self-draft needs a random pair: {sorted(RANDOM_PAIRS)}")
    if layered:
        bad = [a for a in args.alpha if not 0 < a <= 1]
        if bad:
            parser.error(f"--alpha must be in (0, 1], got {bad}")
        pair = layered_pair(args.pair, args.device or get_device(), dtype)
    elif real_shapes:
        pair = random_pair(args.pair, args.device or get_device(), dtype, args.self_draft)
    else:
        pair = load_pair(args.pair, device=args.device, dtype=dtype)
    if real_shapes:
        texts = ["Hello, world."] + list(REAL_SHAPE_PROMPTS.values())[:args.prompts]
    else:
        texts = (unlike_prompts() if args.prompt_set == "unlike"
                 else load_corpus()[args.domain]["prompts"])[:args.prompts + 1]
    prompts = [pair.tokenizer(t, return_tensors="pt").input_ids.to(pair.device) for t in texts]
    warmup, prompts = prompts[0], prompts[1:]
    eos, n = pair.tokenizer.eos_token_id, args.tokens
    start = time.perf_counter()
    costs = measure_costs(pair.target, pair.draft, repeats=3 if real_shapes else 5)
    print(f"pair {pair.name} on {pair.device} in {str(pair.target.dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads, "
          f"{'real-shape' if real_shapes else args.prompt_set + ' ' + args.domain} prompts: "
          f"{len(prompts)} x up to {n} tokens (end-of-text stops), greedy, best of "
          f"{args.repeats} interleaved; measured c = {costs.draft_step:.3f}, verify cost of "
          f"2 / 5 / 9 / 17 tokens = {costs.verify[1]:.2f} / {costs.verify[4]:.2f} / "
          f"{costs.verify[8]:.2f} / {costs.verify[16]:.2f} one-token passes (measured in "
          f"{time.perf_counter() - start:.0f} s: the default call's first use on a pair "
          f"pays this once, here in the warm-up)")
    methods = methods_for(pair, n, eos, costs, few=real_shapes)
    if not layered:
        print_table(pair, prompts, warmup, methods, costs, args.repeats)
    for alpha in sorted(args.alpha) if layered else ():  # scale 0 (alpha 1) comes last
        start = time.perf_counter()
        scale, measured, confidence = calibrate(pair, alpha)
        upper = len(pair.target.model.layers) - pair.draft_layers
        print(f"\n## alpha {alpha}: the target's upper {upper} layers' residual branches "
              f"scaled by {scale:.4f}; calibration alpha {measured:.3f} "
              f"({time.perf_counter() - start:.0f} s); the draft runs the target's first "
              f"{pair.draft_layers} layers and its head; its median top probability "
              f"{confidence:.2f}")
        print_table(pair, prompts, warmup, methods, costs, args.repeats)
    if args.pair in RANDOM_PAIRS:  # a random pair's alpha is an accident
        print("random weights: this pair's alpha is an accident.")
    if real_shapes:
        print_goodput_choices(costs)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"(benchmark took {time.time() - start:.0f}s)")
