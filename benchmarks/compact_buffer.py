"""What the compact replay buffer costs in alpha on the zoo.

The online decoder's buffer keeps, per position, the target's top-k
log-probabilities and the mass of the rest (``buffer_top_k``, default 64)
instead of the full logits. Here the same seeded stream of held-out zoo
queries is served from the zoo's draft once per buffer setting (otherwise the
defaults of ``benchmarks/online.py``: update every 4, buffer 128, forward KL),
and exact greedy alpha is measured per domain on prompts not in the stream.

    python benchmarks/compact_buffer.py [--queries 120] [--top-k 64 16 4]

or, from notebook 06 (the folder ``benchmarks`` on ``sys.path``):

    from compact_buffer import compare_buffers
    table = compare_buffers(queries=120)   # {setting: {domain: alpha, "mean": ...}}
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online import evaluate, run_online  # noqa: E402

from osd_lab.models import load_pair  # noqa: E402
from osd_lab.online import make_stream  # noqa: E402
from osd_lab.sampling import set_seed  # noqa: E402
from osd_lab.zoo.corpus import DOMAINS, load_corpus  # noqa: E402


def compare_buffers(queries=120, top_ks=(None, 64, 16), num_eval=8, stream="iid", seed=0):
    """{label: {domain: alpha, ..., "mean": alpha}} after serving the same stream
    with each ``buffer_top_k`` (None: full logits), plus the draft before."""
    set_seed(seed)
    pair = load_pair("zoo")
    corpus = load_corpus()
    eval_prompts = {d: [pair.tokenizer(p, return_tensors="pt").input_ids
                        for p in corpus[d]["prompts"][:num_eval]] for d in DOMAINS}
    queries_by_domain = {d: corpus[d]["prompts"][num_eval:] for d in DOMAINS}
    served = make_stream(stream, queries_by_domain, queries, seed=seed)

    def with_mean(alphas):
        return {**alphas, "mean": sum(alphas.values()) / len(alphas)}

    table = {"no update": with_mean(evaluate(pair, pair.draft, eval_prompts))}
    for top_k in top_ks:
        draft, _ = run_online(pair, served, update_interval=4, buffer_size=128,
                              buffer_top_k=top_k)
        label = "full logits" if top_k is None else f"top-{top_k} + tail"
        table[label] = with_mean(evaluate(pair, draft, eval_prompts))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=120)
    parser.add_argument("--top-k", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out per domain")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # steadier on a shared 2-core machine
    start = time.time()
    table = compare_buffers(args.queries, (None, *args.top_k), args.eval_prompts)
    print(f"exact greedy alpha after {args.queries} queries (iid stream, update every 4, "
          f"buffer 128), {args.eval_prompts} held-out prompts per domain\n")
    columns = (*DOMAINS, "mean")
    print("| buffer | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, alphas in table.items():
        print(f"| {label} | " + " | ".join(f"{alphas[c]:.3f}" for c in columns) + " |")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
