"""Batched decoding, side by side in one process: when does speculation stop paying?

    python benchmarks/batched.py [--pair zoo-all] [--prompts 16] [--tokens 32] [--batch-sizes 1 2 4 8 16]
                                 [--draft-len 4] [--repeats 2] [--device cpu] [--dtype float32]
                                 [--threads N] [--clock wall|cpu]

The same ``--prompts`` prompts are decoded in batches of each size B (so
every B does the same work) by
  * transformers' ``generate`` with left padding (batched autoregressive),
  * ``batched_autoregressive_generate`` (ours),
  * ``batched_speculative_generate`` with a constant draft length and with
    the BASS schedule,
and, once, by single-sequence ``speculative_generate`` one prompt after
another. All produce ``--tokens`` greedy tokens per prompt (no EOS stop);
ours must equal the single-sequence greedy output, else the script stops.
Twice: on sql (the zoo's best domain for either draft) and on a mixed batch (sql, code,
prose, math in turn). Each method is warmed up at each B, then timed
``--repeats`` times interleaved; the fastest run counts. On a CPU shared with
other programs, ``--threads 1 --clock cpu`` counts this process's CPU time,
which their load does not inflate.

The cost model explains the crossover: at batch B a speculative step costs
gamma draft passes over B x 1 tokens and one target pass over
B x (gamma + 1), against tau target passes over B x 1 for autoregressive
decoding; predicted speedup = tau / (gamma c_B + r_B), with
c_B = draft(B, 1) / target(B, 1) and r_B = target(B, gamma + 1) / target(B, 1)
measured here. Nothing here is a test.
"""

import argparse
import time

import torch

from osd_lab.batched import (batched_autoregressive_generate, batched_speculative_generate,
                             left_pad)
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.measure import measure_pass_time
from osd_lab.timing import clock
from osd_lab.models import load_pair
from osd_lab.online import ONLINE_PAIR
from osd_lab.zoo.corpus import load_corpus

DOMAINS = ("sql", "code", "prose", "math")


def chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_hf(pair, prompts, tokens, batch_size, now):
    """transformers' generate, left-padded batches; returns the time and outputs."""
    outputs, wall = [], 0.0
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else 0
    for chunk in chunks(prompts, batch_size):
        ids, mask = left_pad([p[None] for p in chunk], pad)
        start = now()
        out = pair.target.generate(ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=tokens, min_new_tokens=tokens,
                                   eos_token_id=None, pad_token_id=pad)
        wall += now() - start
        outputs += [row.tolist() for row in out[:, ids.shape[1]:]]
    return wall, outputs, {}


def run_ours(pair, prompts, tokens, batch_size, now, **kwargs):
    """Ours in batches: autoregressive, or speculative when ``kwargs`` are given."""
    outputs, wall, steps, rows, decided = [], 0.0, 0, 0, []
    for chunk in chunks(prompts, batch_size):
        start = now()
        if kwargs:
            out = batched_speculative_generate(pair.target, pair.draft, chunk, tokens,
                                               vocab_size=pair.vocab_size, eos_token_id=None,
                                               **kwargs)
            steps += out.stats.target_calls
            rows += sum(out.stats.batch_sizes)
            decided += [a for seq in out.stats.sequences for a in seq.decided_alpha]
        else:
            out = batched_autoregressive_generate(pair.target, chunk, tokens, eos_token_id=None)
        wall += now() - start
        outputs += [t.tolist() for t in out.tokens]
    stats = dict(tau=len(outputs) * tokens / rows, alpha=sum(decided) / len(decided),
                 steps=steps) if kwargs else {}
    return wall, outputs, stats


def run_sequential(pair, prompts, tokens, draft_len, now):
    """Single-sequence speculative decoding, one prompt after another."""
    outputs, wall, calls, decided = [], 0.0, 0, []
    for ids in prompts:
        start = now()
        out = speculative_generate(pair.target, pair.draft, ids, tokens, draft_len=draft_len,
                                   draft_len_policy="constant", vocab_size=pair.vocab_size,
                                   eos_token_id=None)
        wall += now() - start
        calls += out.stats.target_calls
        decided += out.stats.decided_alpha
        outputs.append(out.tokens.tolist())
    return wall, outputs, dict(tau=len(prompts) * tokens / calls,
                               alpha=sum(decided) / len(decided))


def pick_prompts(pair, corpus, domain, count):
    """``count`` held-out prompts of one domain, or of all four in turn ("mixed")."""
    domains = DOMAINS if domain == "mixed" else (domain,)
    texts = [corpus[domains[i % len(domains)]]["prompts"][i // len(domains)]
             for i in range(count)]
    return [pair.tokenizer(t, return_tensors="pt").input_ids[0].to(pair.device) for t in texts]


def benchmark(pair, prompts, args, now):
    """Best-of-repeats tokens/s of every method at every batch size; prints two
    tables and returns the crossover batch size (None if speculation always paid)."""
    gamma = args.draft_len
    methods = {  # (prompts, tokens, batch size) -> (wall, outputs, stats)
        "transformers generate (padded)": lambda ps, n, b: run_hf(pair, ps, n, b, now),
        "autoregressive (ours, batched)": lambda ps, n, b: run_ours(pair, ps, n, b, now),
        f"speculative (batched, gamma={gamma})": lambda ps, n, b: run_ours(
            pair, ps, n, b, now, draft_len=gamma),
        "speculative (batched, BASS schedule)": lambda ps, n, b: run_ours(
            pair, ps, n, b, now, draft_len_policy="bass"),
    }
    reference = [autoregressive_generate(pair.target, p, args.tokens, eos_token_id=None).tokens.tolist()
                 for p in prompts]
    run_sequential(pair, prompts[:1], 2, gamma, now)  # warm-up
    for b in args.batch_sizes:  # warm up every method at every size
        for run in methods.values():
            run(prompts[:b], 2, b)
    best, sequential = {}, None
    for _ in range(args.repeats):  # interleaved: every method at every size, then again
        for b in args.batch_sizes:
            for name, run in methods.items():
                result = run(prompts, args.tokens, b)
                if (name, b) not in best or result[0] < best[(name, b)][0]:
                    best[(name, b)] = result
        result = run_sequential(pair, prompts, args.tokens, gamma, now)
        if sequential is None or result[0] < sequential[0]:
            sequential = result
    if sequential[1] != reference:
        raise SystemExit("sequential speculative decoding differs from greedy decoding")
    passes = {b: pass_times(pair, b, gamma, args.clock == "cpu") for b in args.batch_sizes}
    total = len(prompts) * args.tokens
    print("\n| B | method | tokens/s | vs autoregressive (ours, same B) | alpha | tau | "
          "predicted | same tokens |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    crossover = None
    for b in args.batch_sizes:
        ar_wall = best[("autoregressive (ours, batched)", b)][0]
        target_1, target_g, draft_1 = passes[b]
        step_cost = gamma * draft_1 / target_1 + target_g / target_1  # in target(B, 1) passes
        spec_best = 0.0
        for name in methods:
            wall, outputs, stats = best[(name, b)]
            same = outputs == reference
            if "ours" in name or "speculative" in name:
                if not same:
                    raise SystemExit(f"{name} at B={b}: output differs from greedy decoding")
            if "speculative" in name:
                spec_best = max(spec_best, ar_wall / wall)
            predicted = f"{stats['tau'] / step_cost:.2f}x" if f"gamma={gamma}" in name else ""
            alpha = f"{stats['alpha']:.3f}" if stats else ""
            tau = f"{stats['tau']:.2f}" if stats else ""
            print(f"| {b} | {name} | {total / wall:.1f} | {ar_wall / wall:.2f}x | {alpha} | "
                  f"{tau} | {predicted} | {'yes' if same else 'no'} |")
        if crossover is None and spec_best < 1:
            crossover = b
    wall, _, stats = sequential
    smallest = min(args.batch_sizes)
    print(f"| any | speculative (sequential, gamma={gamma}) | {total / wall:.1f} | "
          f"{best[('autoregressive (ours, batched)', smallest)][0] / wall:.2f}x "
          f"(vs B={smallest}) | "
          f"{stats['alpha']:.3f} | {stats['tau']:.2f} |  | yes |")
    print(f"\ncost model: c_B = draft(B, 1) / target(B, 1), r_B = target(B, {gamma + 1}) / "
          f"target(B, 1); predicted speedup = tau / (gamma c_B + r_B)")
    print("| B | target(B, 1) ms | target(B, gamma+1) ms | draft(B, 1) ms | c_B | r_B | "
          "gamma c_B + r_B |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b in args.batch_sizes:
        target_1, target_g, draft_1 = passes[b]
        c_b, r_b = draft_1 / target_1, target_g / target_1
        print(f"| {b} | {target_1 * 1e3:.2f} | {target_g * 1e3:.2f} | {draft_1 * 1e3:.2f} | "
              f"{c_b:.3f} | {r_b:.2f} | {gamma * c_b + r_b:.2f} |")
    print(f"\ncrossover: speculation stops paying at B = {crossover}" if crossover else
          "\ncrossover: speculation pays at every batch size measured")
    return crossover


def pass_times(pair, batch_size, gamma, cpu_time):
    """Seconds of target(B, 1), target(B, gamma + 1) and draft(B, 1) passes."""
    return tuple(measure_pass_time(model, batch_size, width, cpu_time=cpu_time)
                 for model, width in ((pair.target, 1), (pair.target, gamma + 1),
                                      (pair.draft, 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default=ONLINE_PAIR,
                        help=f"a load_pair name (default {ONLINE_PAIR!r}: the all-domain zoo draft; "
                             f"'zoo': the sql-only one)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--domains", nargs="+", default=["sql", "mixed"],
                        choices=DOMAINS + ("mixed",))
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (CPU device and one thread only; "
                             "steady when other programs share the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.batch_sizes) < 1 or args.prompts < 1 or args.tokens < 2 or args.repeats < 1:
        parser.error("--batch-sizes, --prompts and --repeats must be >= 1, --tokens >= 2")
    pair = load_pair(args.pair, device=args.device, dtype=getattr(torch, args.dtype))
    if args.clock == "cpu" and (pair.device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu needs the CPU device and --threads 1")

    def now():
        return time.process_time() if args.clock == "cpu" else clock(pair.device)
    corpus = load_corpus()
    print(f"pair {pair.name} on {pair.device} ({args.dtype}), {torch.get_num_threads()} threads, "
          f"{args.prompts} prompts x {args.tokens} greedy tokens (no EOS stop), batch sizes "
          f"{args.batch_sizes}, best of {args.repeats} interleaved after a warm-up, "
          f"{args.clock} clock")
    for domain in args.domains:
        print(f"\n## {domain}")
        benchmark(pair, pick_prompts(pair, corpus, domain, args.prompts), args, now)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"(benchmark took {time.time() - start:.0f}s)")
