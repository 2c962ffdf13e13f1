"""The main job: ``python -m osd_lab`` (``make run``), an online speculative decoder.

On the embedded zoo: measure the zoo (per-domain perplexity, tokens/s of draft
and target), then serve a stream of queries whose domain shifts, with a
draft that keeps distilling on the target's corrections. Prints alpha per
domain before and after, and the speedup over autoregressive decoding
measured in this run; saves plots to ``--out``.
"""

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots go to files
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from osd_lab.checks import check_float, check_int  # noqa: E402
from osd_lab.decoding import (autoregressive_generate,  # noqa: E402
                              speculative_generate)
from osd_lab.distill import acceptance_rate  # noqa: E402
from osd_lab.divergences import DIVERGENCES  # noqa: E402
from osd_lab.metrics import perplexity  # noqa: E402
from osd_lab.models import load_pair  # noqa: E402
from osd_lab.online import STREAMS, OnlineSpeculativeDecoder, make_stream  # noqa: E402
from osd_lab.plots import moving_average, plot_alpha, plot_tau  # noqa: E402
from osd_lab.sampling import set_seed  # noqa: E402
from osd_lab.zoo.corpus import DOMAINS, load_corpus  # noqa: E402

STREAM_ORDER = ("sql", "math", "code", "prose")  # the draft's own domain first
FIRST_LAST = 15  # queries at each end of a domain's share of the stream
MAX_QUERIES = 10_000  # about an hour on a laptop CPU; more is surely a typo


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m osd_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--stream", choices=STREAMS, default="sharp")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--update-interval", type=int, default=4)
    parser.add_argument("--buffer-size", type=int, default=128)
    parser.add_argument("--loss", choices=DIVERGENCES, default="fkl")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--keep-fraction", type=float, default=None,
                        help="AdaSPEC's k: distil only this fraction of tokens (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="serve the stream this many queries at a time (BASS)")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out per domain")
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    parser.add_argument("--seed", type=int, default=0)
    return parser


def check_flags(args):
    """Every flag, before any work; ``ValueError`` names the flag."""
    check_int("--queries", args.queries, 1, MAX_QUERIES)
    for flag, value in (("--draft-len", args.draft_len), ("--update-interval",
                        args.update_interval), ("--buffer-size", args.buffer_size),
                        ("--eval-prompts", args.eval_prompts), ("--batch-size", args.batch_size)):
        check_int(flag, value, low=1)
    check_float("--lr", args.lr, low=0, low_open=True)
    if args.keep_fraction is not None:
        check_float("--keep-fraction", args.keep_fraction, 0, 1, low_open=True)
    # with 1 new token nothing is drafted, and there is no alpha to report
    check_int("--max-new-tokens", args.max_new_tokens, low=2)
    check_int("--seed", args.seed, 0, 2**32 - 1)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out must be a folder, got the file {str(args.out)!r}")
    try:  # create it now and write into it: results are not lost at the end of a run
        args.out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as err:
        raise ValueError(f"--out must be a writable folder, got {str(args.out)!r} "
                         f"({err.strerror})") from err


def check_flags_fit(args, pair, corpus):
    """The flags that depend on the data: ``--eval-prompts`` leaves every domain
    prompts for the stream, and every prompt + ``--max-new-tokens`` fits the context."""
    fewest = min(len(corpus[d]["prompts"]) for d in DOMAINS)
    check_int("--eval-prompts", args.eval_prompts, 1, fewest - 1)
    longest = max(len(pair.tokenizer(p).input_ids) for d in DOMAINS for p in corpus[d]["prompts"])
    context = min(context_length(pair.target), context_length(pair.draft))
    check_int("--max-new-tokens", args.max_new_tokens, 2, context - longest)


def speed(pair, draft, prompts, args):
    """Tokens/s of autoregressive and speculative greedy decoding on ``prompts``."""
    ar_time = spec_time = tokens = 0
    for ids in prompts:
        ar = autoregressive_generate(pair.target, ids, args.max_new_tokens)
        spec = speculative_generate(pair.target, draft, ids, args.max_new_tokens,
                                    draft_len=args.draft_len, vocab_size=pair.vocab_size)
        ar_time += ar.stats["wall_time_s"]
        spec_time += spec.stats["wall_time_s"]
        tokens += len(ar.tokens)
    return tokens / ar_time, tokens / spec_time


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
    except ValueError as err:
        parser.error(str(err))
    start = time.time()
    set_seed(args.seed)
    pair = load_pair("zoo")
    corpus = load_corpus()
    try:
        check_flags_fit(args, pair, corpus)
    except ValueError as err:
        parser.error(str(err))
    n_eval = args.eval_prompts
    # held-out prompts: the first n_eval of each domain evaluate, the rest form the stream
    eval_prompts = {d: [pair.tokenizer(p, return_tensors="pt").input_ids.to(pair.device)
                        for p in corpus[d]["prompts"][:n_eval]] for d in DOMAINS}
    try:  # bad settings stop here, before any work, with the decoder's own message
        stream = make_stream(args.stream, {d: corpus[d]["prompts"][n_eval:]
                                           for d in STREAM_ORDER}, args.queries, seed=args.seed)
        decoder = OnlineSpeculativeDecoder(
            pair.target, pair.draft, pair.tokenizer, draft_len=args.draft_len,
            update_interval=args.update_interval, loss=args.loss, buffer_size=args.buffer_size,
            lr=args.lr, max_new_tokens=args.max_new_tokens, vocab_size=pair.vocab_size,
            keep_fraction=args.keep_fraction, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))

    print(f"osd_lab main job: zoo on {pair.device}, target "
          f"{pair.target.num_parameters() / 1e6:.1f}M / draft "
          f"{pair.draft.num_parameters() / 1e6:.2f}M parameters (draft trained on sql only)\n")
    print("| domain | target ppl | draft ppl | target tokens/s | draft tokens/s |\n|---|---:|---:|---:|---:|")
    for d in DOMAINS:
        docs = corpus[d]["heldout"][:n_eval]
        rates = [autoregressive_generate(m, eval_prompts[d][0], args.max_new_tokens)
                 .stats["tokens_per_s"] for m in (pair.target, pair.draft)]
        print(f"| {d} | {perplexity(pair.target, pair.tokenizer, docs):.2f} | "
              f"{perplexity(pair.draft, pair.tokenizer, docs):.2f} | {rates[0]:.0f} | {rates[1]:.0f} |")

    def alphas():
        return {d: acceptance_rate(pair.target, pair.draft, eval_prompts[d], args.draft_len,
                                   max_new_tokens=args.max_new_tokens,
                                   vocab_size=pair.vocab_size)["alpha"] for d in DOMAINS}

    speed_prompts = [p for d in DOMAINS for p in eval_prompts[d][:2]]
    before = alphas()
    ar_rate, spec_before = speed(pair, pair.draft, speed_prompts, args)

    size, serve_start = args.batch_size, time.perf_counter()
    with tqdm(total=len(stream), desc=f"serving a {args.stream} stream") as progress:
        for first in range(0, len(stream), size):
            batch = stream[first:first + size]
            if size == 1:
                decoder.serve(batch[0][1], batch[0][0])
            else:  # batched speculative decoding, split by draft (osd_lab.batched)
                decoder.serve_batch([p for _, p in batch], [d for d, _ in batch])
            progress.update(len(batch))
    serve_wall = time.perf_counter() - serve_start  # updates included: they are serving time

    after = alphas()
    ar_rate_2, spec_after = speed(pair, pair.draft, speed_prompts, args)
    h = decoder.history
    print(f"\nonline run: {args.queries} queries ({args.stream} stream over "
          f"{', '.join(STREAM_ORDER)}), served in batches of {args.batch_size}, "
          f"draft_len {args.draft_len}, update every "
          f"{args.update_interval} queries, loss {args.loss}"
          f"{f' (AdaSPEC, k={args.keep_fraction})' if args.keep_fraction else ''}, "
          f"{len(h['updates'])} updates, "
          f"{len(h['skipped'])} skipped\n")
    print("| domain | alpha before | alpha after | change |\n|---|---:|---:|---:|")
    for d in DOMAINS:
        print(f"| {d} | {before[d]:.3f} | {after[d]:.3f} | {after[d] - before[d]:+.3f} |")
    print(f"\nserved alpha per domain over its first and last queries in the stream "
          f"({FIRST_LAST} each, or half of them if fewer):")
    print("| domain | queries | first | last | change |\n|---|---:|---:|---:|---:|")
    for d in STREAM_ORDER:
        served = [a for domain, a in zip(h["domain"], h["alpha"]) if domain == d]
        k = max(1, min(FIRST_LAST, len(served) // 2))
        if served:
            first, last = sum(served[:k]) / k, sum(served[-k:]) / k
            print(f"| {d} | {len(served)} | {first:.3f} | {last:.3f} | {last - first:+.3f} |")
    avg = moving_average(h["alpha"], 20)
    print(f"\nmoving average of served alpha (20 queries): first {avg[min(19, len(avg) - 1)]:.3f}, "
          f"last {avg[-1]:.3f}; per-query latency {sum(h['latency_s']) / len(h['latency_s']) * 1e3:.0f} ms")
    print(f"serving throughput (batches of {args.batch_size}, updates included): "
          f"{sum(h['new_tokens']) / serve_wall:.0f} tokens/s")
    print(f"speed (greedy, {len(speed_prompts)} held-out prompts): autoregressive "
          f"{(ar_rate + ar_rate_2) / 2:.0f} tokens/s; speculative {spec_before:.0f} tokens/s "
          f"before ({spec_before / ar_rate:.2f}x), {spec_after:.0f} after "
          f"({spec_after / ar_rate_2:.2f}x)")

    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    plot_alpha(h, axes[0])
    plot_tau(h, axes[1])
    fig.tight_layout()
    fig.savefig(args.out / "online_alpha_tau.png", dpi=110)
    print(f"\nplots saved to {args.out.resolve() / 'online_alpha_tau.png'}; "
          f"took {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
