"""Speed, side by side in one process: autoregressive vs speculative vs transformers.

    python benchmarks/speed.py [--pair zoo] [--domain sql] [--prompts 20] [--tokens 64]
                               [--draft-len 4] [--device cuda] [--dtype bfloat16]

On the same prompts and device, greedy decoding with
  * ``autoregressive_generate`` (KV cache, the baseline),
  * ``speculative_generate`` with a constant draft length and with the
    "heuristic" dynamic draft length,
  * transformers' assisted generation ``target.generate(assistant_model=draft)``
    with the same constant draft length, and with transformers' own defaults.
Every method's tokens must equal the baseline's; in float32 the script stops
otherwise. In half precision it reports the prompts whose outputs differ: the
target scores several tokens in one pass, whose rounding differs from a
one-token pass, so near-ties may break the other way.
It prints tokens/s, speedup over the baseline, alpha, tau, the cost model's
predicted speedup from the measured alpha and c, and the verify ratio (one
target pass over draft_len + 1 tokens / one over 1 token), which the cost
model takes to be 1. Timings are totals over all prompts after one warm-up
prompt; nothing here is a test.

--pair: "zoo", a preset of ``osd_lab.models.PRESETS``, or a random-initialised
pair with real shapes from ``random_pairs.py`` ("random-qwen2.5": Qwen2.5
0.5B drafting for 1.5B), which measures costs, not a trained pair's speedup.
"""

import argparse
import copy
import time

import torch

from osd_lab.cost import (expected_tokens_per_step, measure_cost_ratio, measure_verify_ratio,
                          speedup)
from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.timing import clock
from osd_lab.models import load_pair
from osd_lab.sampling import get_device
from osd_lab.zoo.corpus import load_corpus
from random_pairs import RANDOM_PAIRS, random_pair

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_ours(pair, prompts, tokens, **kwargs):
    """Total wall time, the outputs, and pooled speculative stats."""
    outputs, wall, alphas, new, calls = [], 0.0, [], 0, 0
    for ids in prompts:
        if kwargs:
            out = speculative_generate(pair.target, pair.draft, ids, tokens,
                                       vocab_size=pair.vocab_size, **kwargs)
            alphas += out.stats["decided_alpha"]  # the positions verification decided
            calls += out.stats["target_calls"]
        else:
            out = autoregressive_generate(pair.target, ids, tokens)
        outputs.append(out.tokens.tolist())
        wall += out.stats["wall_time_s"]
        new += len(out.tokens)
    stats = dict(alpha=sum(alphas) / len(alphas), tau=new / calls) if kwargs else {}
    return wall, outputs, stats


def run_hf(pair, prompts, tokens, assistant=None):
    """transformers' generate; with ``assistant`` (generation-config overrides,
    possibly empty) it uses the draft as assistant model."""
    draft = None
    if assistant is not None:
        draft = copy.deepcopy(pair.draft)  # transformers keeps schedule state on it
        draft.generation_config.update(**assistant)
    outputs, wall = [], 0.0
    for ids in prompts:
        start = clock(pair.device)
        out = pair.target.generate(ids, assistant_model=draft,
                                   do_sample=False, max_new_tokens=tokens,
                                   min_new_tokens=tokens, eos_token_id=None,
                                   pad_token_id=pair.tokenizer.pad_token_id,
                                   attention_mask=torch.ones_like(ids))
        wall += clock(pair.device) - start
        outputs.append(out[0, ids.shape[1]:].tolist())
    return wall, outputs, {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="zoo")
    parser.add_argument("--domain", default="sql")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="default: float32 for the zoo and on a CPU, else bfloat16")
    args = parser.parse_args(argv)
    dtype = DTYPES.get(args.dtype)
    if args.pair in RANDOM_PAIRS:
        pair = random_pair(args.pair, args.device or get_device(), dtype)
    else:
        pair = load_pair(args.pair, device=args.device, dtype=dtype)
    texts = load_corpus()[args.domain]["prompts"][:args.prompts + 1]
    prompts = [pair.tokenizer(t, return_tensors="pt").input_ids.to(pair.device) for t in texts]
    warmup, prompts = prompts[:1], prompts[1:]
    gamma = args.draft_len
    methods = {
        "autoregressive (ours)": lambda p: run_ours(pair, p, args.tokens),
        f"speculative (ours, gamma={gamma})": lambda p: run_ours(
            pair, p, args.tokens, draft_len=gamma),
        f"speculative (ours, heuristic from {gamma})": lambda p: run_ours(
            pair, p, args.tokens, draft_len=gamma, draft_len_policy="heuristic"),
        "transformers generate": lambda p: run_hf(pair, p, args.tokens),
        f"transformers assisted (gamma={gamma})": lambda p: run_hf(
            pair, p, args.tokens, dict(num_assistant_tokens=gamma,
                                       num_assistant_tokens_schedule="constant",
                                       assistant_confidence_threshold=0.0)),
        "transformers assisted (defaults)": lambda p: run_hf(pair, p, args.tokens, {}),
    }
    cost_ratio = measure_cost_ratio(pair)
    verify_ratio = measure_verify_ratio(pair.target, gamma + 1)
    print(f"pair {pair.name} on {pair.device} in {str(pair.target.dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads, domain {args.domain}, {len(prompts)} prompts x "
          f"{args.tokens} tokens, greedy; measured c = {cost_ratio:.3f}, verify ratio "
          f"({gamma + 1} tokens / 1) = {verify_ratio:.2f}")
    results = {}
    for name, run in methods.items():
        run(warmup)
        wall, outputs, stats = run(prompts)
        results[name] = (wall, outputs, stats)
    base_wall, base_outputs, _ = results["autoregressive (ours)"]
    total = sum(len(o) for o in base_outputs)
    print(f"\n| method | tokens/s | vs autoregressive | alpha | tau | cost-model prediction |")
    print("|---|---:|---:|---:|---:|---:|")
    differing = {}  # method: prompts whose output differs from the baseline's
    for name, (wall, outputs, stats) in results.items():
        differing[name] = sum(o != b for o, b in zip(outputs, base_outputs))
        if differing[name] and pair.target.dtype == torch.float32:
            raise SystemExit(f"{name}: greedy output differs from autoregressive decoding")
        predicted = (f"{speedup(stats['alpha'], gamma, cost_ratio):.2f}x"
                     if "gamma=" in name and stats else "")
        alpha = f"{stats['alpha']:.3f}" if stats else ""
        tau = f"{stats['tau']:.2f}" if stats else ""
        print(f"| {name} | {total / wall:.1f} | {base_wall / wall:.2f}x | {alpha} | {tau} | "
              f"{predicted} |")
    if args.pair in RANDOM_PAIRS:  # its own alpha means nothing: what would a real one give?
        step_cost = gamma * cost_ratio + verify_ratio  # in target one-token passes
        predicted = ", ".join(f"alpha {a}: {expected_tokens_per_step(a, gamma) / step_cost:.2f}x"
                              for a in (0.6, 0.7, 0.8, 0.9))
        print(f"\nrandom weights: this pair's alpha is an accident. Cost model with the measured "
              f"c and verify ratio, gamma={gamma}, predicts {predicted}")
    differing = {name: n for name, n in differing.items() if n}
    if not differing:
        print("\nall greedy outputs agree token for token")
    for name, n in differing.items():
        print(f"\n{name}: {n} of {len(prompts)} prompts differ from autoregressive decoding "
              f"(half precision: near-ties round differently in multi-token passes)")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"(benchmark took {time.time() - start:.0f}s)")
