"""Distillation methods side by side at an equal training budget on the zoo.

    python benchmarks/distillation.py [--steps 150] [--eval-prompts 16]

The zoo's draft was trained on sql only. Each method starts from that draft
and distils on prompts cut from the *training* documents of its weak domains
(code, prose, math), with target-generated continuations (DistillSpec's
"target" data source), the same prompts, steps, batch size and learning rate.
Then exact alpha and tau of speculative decoding (draft_len 4) are measured on
each domain's *held-out* prompts (until end-of-text), greedy and at temperature 1. AdaSPEC also
trains its reference model for the same number of steps first (twice the
compute; said in the table). Prints a markdown table; nothing here is a test.
"""

import argparse
import copy
import time

from osd_lab.distill import adaspec, distill
from osd_lab.evaluation import acceptance_rate
from osd_lab.models import load_pair
from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus

WEAK_DOMAINS = ("code", "prose", "math")


def training_prompts(tokenizer, per_domain, prompt_tokens=16):
    """The first ``prompt_tokens`` tokens of training documents of the weak domains."""
    corpus = load_corpus()
    return [tokenizer(doc, return_tensors="pt").input_ids[0, :prompt_tokens]
            for d in WEAK_DOMAINS for doc in corpus[d]["train"][:per_domain]]


def evaluate(pair, draft, eval_prompts):
    """{(domain, temperature): (alpha, tau)} on held-out prompts."""
    return {(domain, temperature): acceptance_rate(pair.target, draft, prompts,
                                                   temperature=temperature,
                                                   vocab_size=pair.vocab_size,
                                                   eos_token_id=pair.tokenizer.eos_token_id)
            for domain, prompts in eval_prompts.items() for temperature in (0.0, 1.0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-prompts", type=int, default=96, help="per weak domain")
    parser.add_argument("--eval-prompts", type=int, default=16, help="per domain")
    args = parser.parse_args(argv)
    set_seed(0)
    start = time.time()
    pair = load_pair("zoo")
    corpus = load_corpus()
    prompts = training_prompts(pair.tokenizer, args.train_prompts)
    eval_prompts = {d: [pair.tokenizer(p, return_tensors="pt").input_ids[0]
                        for p in corpus[d]["prompts"][:args.eval_prompts]] for d in DOMAINS}
    settings = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    data="target", vocab_size=pair.vocab_size, target_cache={})
    results = {"none": evaluate(pair, pair.draft, eval_prompts)}
    for method in ("fkl", "rkl", "jsd", "tvd", "adaspec"):
        draft = copy.deepcopy(pair.draft)
        if method == "adaspec":
            adaspec(pair.target, draft, prompts, **settings)
        else:
            distill(pair.target, draft, prompts, loss=method, **settings)
        results[method] = evaluate(pair, draft, eval_prompts)
        print(f"{method}: done at {time.time() - start:.0f}s", flush=True)

    print(f"\n{len(prompts)} training prompts ({', '.join(WEAK_DOMAINS)}), {args.steps} steps x "
          f"{args.batch_size} sequences, lr {args.lr}; alpha (tau) on {args.eval_prompts} "
          f"held-out prompts per domain, draft_len 4\n")
    header = " | ".join(f"{d} {'greedy' if t == 0 else 'T=1'}"
                        for d in DOMAINS for t in (0.0, 1.0))
    print(f"| method | {header} |\n|---|" + "---:|" * (2 * len(DOMAINS)))
    for method, table in results.items():
        name = "AdaSPEC (k=0.4, +reference)" if method == "adaspec" else method
        cells = " | ".join(f"{table[d, t]['alpha']:.3f} ({table[d, t]['tau']:.2f})"
                           for d in DOMAINS for t in (0.0, 1.0))
        print(f"| {name} | {cells} |")
    print(f"\n(took {(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
