"""Update modes against steady plain decoding: absolute served tokens/s.

    python benchmarks/update_modes.py [--rounds 1]

The main job's stream (360 queries, sharp: sql, math, code, prose, 90 each;
greedy, up to 32 new tokens or end-of-text) served on 2 threads by the online
decoder with its updates on the serving path (every 4th query) and in the
background (after every query, and every 4th), each from a fresh copy of the
all-domain draft, with no baseline beside the queries; plain decoding of the
same stream on the same 2 threads, with no trainer anywhere, before and
after them. Served tokens/s count decoding and update time. A check on the
decoder's own side-by-side baseline (``baseline=True``), which decodes each
query plainly right after serving it: in the background mode that baseline
runs next to a trainer that has just worked, and it may not be as fast as
plain decoding that runs alone. Nothing here is a test; run it on a quiet
machine (one round about 10 minutes on 2 cores).
"""

import argparse
import copy
import time

import torch

from osd_lab.decoding import autoregressive_generate
from osd_lab.models import load_pair
from osd_lab.online import ONLINE_PAIR, OnlineConfig, OnlineSpeculativeDecoder, make_stream
from osd_lab.zoo.corpus import load_corpus

ORDER = ("sql", "math", "code", "prose")  # the main job's
MAX_NEW_TOKENS = 32
RUNS = {"sync, every 4th query": ("sync", 4), "background, every query": ("background", 1),
        "background, every 4th query": ("background", 4)}


def per_domain(domains, tokens, seconds):
    """({domain: tokens/s}, tokens/s over all)."""
    sums = {}
    for d, n, s in zip(domains, tokens, seconds):
        total = sums.setdefault(d, [0, 0.0])
        total[0] += n
        total[1] += s
    return {d: n / s for d, (n, s) in sums.items()}, sum(tokens) / sum(seconds)


def plain(pair, stream):
    tokens, seconds = [], []
    for _, prompt in stream:
        ids = pair.tokenizer(prompt, return_tensors="pt").input_ids
        stats = autoregressive_generate(pair.target, ids, MAX_NEW_TOKENS,
                                        eos_token_id=pair.tokenizer.eos_token_id).stats
        tokens.append(stats.new_tokens)
        seconds.append(stats.wall_time_s)
    return per_domain([d for d, _ in stream], tokens, seconds)


def online(pair, stream, mode, interval):
    with OnlineSpeculativeDecoder(pair.target, copy.deepcopy(pair.draft), pair.tokenizer,
                                  OnlineConfig(update_mode=mode, update_interval=interval,
                                               threads=2, max_new_tokens=MAX_NEW_TOKENS),
                                  vocab_size=pair.vocab_size) as decoder:
        for domain, prompt in stream:
            decoder.serve(prompt, domain)
    h = decoder.history
    return per_domain(h["domain"], h["new_tokens"],
                      [a + b for a, b in zip(h["latency_s"], h["update_s"])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.time()
    pair = load_pair(ONLINE_PAIR)
    corpus = load_corpus()
    stream = make_stream("sharp", {d: corpus[d]["prompts"][8:] for d in ORDER}, 360, seed=0)
    plain(pair, stream[:8])  # warm-up
    print("| round | run | " + " | ".join(ORDER) + " | whole stream | vs plain (mean of "
          "before and after) |")
    print("|---:|---|" + "---:|" * (len(ORDER) + 2))
    for round_ in range(1, args.rounds + 1):
        results = {"plain, before": plain(pair, stream)}
        for name, (mode, interval) in RUNS.items():
            results[name] = online(pair, stream, mode, interval)
        results["plain, after"] = plain(pair, stream)
        reference = (results["plain, before"][1] + results["plain, after"][1]) / 2
        for name, (domains, whole) in results.items():
            cells = " | ".join(f"{domains[d]:.1f}" for d in ORDER)
            print(f"| {round_} | {name} | {cells} | {whole:.1f} | {whole / reference:.2f}x |",
                  flush=True)
    print(f"\n{ONLINE_PAIR}, 2 threads, served tokens/s (decoding + updates); took "
          f"{time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
