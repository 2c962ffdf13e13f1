"""The main job: ``python -m osd_lab`` (``make run``), an online speculative decoder.

On the embedded zoo: measure the zoo (per-domain perplexity, tokens/s of draft
and target), then serve a stream of queries whose domain shifts, with a
draft that keeps distilling on the target's corrections and a draft-length
policy (goodput by default) that drafts only where it pays. Every query is
also decoded autoregressively in the same run, so the report compares served
tokens/s (updates included) with plain decoding of the same queries, per
domain block and over the stream; held-out alpha per domain before and after;
plots saved to ``--out``.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots go to files
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from osd_lab.checks import check_float, check_int  # noqa: E402
from osd_lab.decoding import autoregressive_generate  # noqa: E402
from osd_lab.divergences import DIVERGENCES  # noqa: E402
from osd_lab.evaluation import alpha_by_domain, served_speed, speed_by_block  # noqa: E402
from osd_lab.metrics import perplexity  # noqa: E402
from osd_lab.models import context_length, load_pair  # noqa: E402
from osd_lab.online import (DEFAULTS, ONLINE_PAIR, STREAMS, UPDATE_MODES,  # noqa: E402
                            OnlineSpeculativeDecoder, make_stream)
from osd_lab.plots import plot_alpha, plot_speed  # noqa: E402
from osd_lab.policies import DRAFT_LEN_POLICIES  # noqa: E402
from osd_lab.sampling import set_seed  # noqa: E402
from osd_lab.zoo.corpus import DOMAINS, load_corpus  # noqa: E402

STREAM_ORDER = ("sql", "math", "code", "prose")  # sql first: the sql-only draft's own domain
LAST_FRACTION = 1 / 3  # "late in a block": after the draft has had time to adapt
# 4 blocks of 90: each domain is learned and then served for a while, as traffic that
# stays on a topic is, and the job still fits in about 5 minutes on 2 CPU cores
QUERIES = 360
MAX_QUERIES = 10_000  # about an hour on a laptop CPU; more is surely a typo
STOP_RULES = ("auto", "none", "confidence", "entropy")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m osd_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("zoo-all", "zoo"), default=ONLINE_PAIR,
                        help="zoo-all: the draft trained on all four domains; zoo: the "
                             "draft trained on sql only")
    parser.add_argument("--stream", choices=STREAMS, default="sharp")
    parser.add_argument("--queries", type=int, default=QUERIES)
    # defaults: OnlineSpeculativeDecoder's, from one place (osd_lab.online.DEFAULTS)
    parser.add_argument("--draft-len-policy", choices=DRAFT_LEN_POLICIES,
                        default=DEFAULTS.draft_len_policy)
    parser.add_argument("--draft-len", type=int, default=DEFAULTS.draft_len,
                        help="gamma (constant), its start (heuristic) or its most (goodput); "
                             "default 4, 4 and 16")
    parser.add_argument("--stop-rule", choices=STOP_RULES, default=DEFAULTS.stop_rule,
                        help="end blocks early on the draft's own doubt (osd_lab.policies; "
                             "auto: the confidence rule with goodput; none turns it off)")
    parser.add_argument("--update-interval", type=int, default=DEFAULTS.update_interval,
                        help="queries between updates (default: 1 in the background, 4 "
                             "with --update-mode sync; osd_lab.online.UPDATE_INTERVAL)")
    parser.add_argument("--update-mode", choices=UPDATE_MODES, default=DEFAULTS.update_mode,
                        help="sync: updates on the serving path; background: in a thread "
                             "on half the threads while serving goes on; auto: background "
                             "with 2 threads or more")
    parser.add_argument("--buffer-size", type=int, default=DEFAULTS.buffer_size)
    parser.add_argument("--loss", choices=DIVERGENCES, default=DEFAULTS.loss)
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr,
                        help="default: by the draft's size (osd_lab.finetune.default_lr)")
    parser.add_argument("--keep-fraction", type=float, default=DEFAULTS.keep_fraction,
                        help="AdaSPEC's k: distil only this fraction of tokens (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="serve the stream this many queries at a time (BASS; its own "
                             "draft-length schedule)")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out per domain")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (serving and training together)")
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    parser.add_argument("--seed", type=int, default=0)
    return parser


def check_flags(args):
    """Every flag, before any work; ``ValueError`` names the flag."""
    check_int("--queries", args.queries, 1, MAX_QUERIES)
    if args.update_interval is not None:
        check_int("--update-interval", args.update_interval, low=1)
    for flag, value in (("--buffer-size", args.buffer_size), ("--threads", args.threads),
                        ("--eval-prompts", args.eval_prompts), ("--batch-size", args.batch_size)):
        check_int(flag, value, low=1)
    check_int("--threads", args.threads, 1, os.cpu_count())
    if args.update_mode == "background":
        check_int("--threads (with --update-mode background: half serve, half train)",
                  args.threads, 2, os.cpu_count())
    if args.draft_len is not None:
        check_int("--draft-len", args.draft_len, low=1)
    if args.lr is not None:
        check_float("--lr", args.lr, 0, 1, low_open=True)
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
    except ValueError as err:
        parser.error(str(err))
    start = time.time()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    pair = load_pair(args.pair)
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
            draft_len_policy=args.draft_len_policy,
            stop_rule=None if args.stop_rule == "none" else args.stop_rule,
            update_interval=args.update_interval, loss=args.loss, buffer_size=args.buffer_size,
            lr=args.lr, max_new_tokens=args.max_new_tokens, vocab_size=pair.vocab_size,
            keep_fraction=args.keep_fraction, seed=args.seed, baseline=True,
            update_mode=args.update_mode, threads=args.threads)
    except ValueError as err:
        parser.error(str(err))

    print(f"osd_lab main job: zoo on {pair.device} ({torch.get_num_threads()} threads), target "
          f"{pair.target.num_parameters() / 1e6:.1f}M / draft "
          f"{pair.draft.num_parameters() / 1e6:.2f}M parameters (draft trained on "
          f"{'sql only' if args.pair == 'zoo' else 'all four domains'})\n")
    print("| domain | target ppl | draft ppl | target tokens/s | draft tokens/s |\n|---|---:|---:|---:|---:|")
    for d in DOMAINS:
        docs = corpus[d]["heldout"][:n_eval]
        rates = [autoregressive_generate(m, eval_prompts[d][0], args.max_new_tokens,
                                         eos_token_id=None).stats.tokens_per_s
                 for m in (pair.target, pair.draft)]
        print(f"| {d} | {perplexity(pair.target, pair.tokenizer, docs):.2f} | "
              f"{perplexity(pair.draft, pair.tokenizer, docs):.2f} | {rates[0]:.0f} | {rates[1]:.0f} |")
    policy = decoder.policies["draft"]
    if args.draft_len_policy == "goodput":
        costs = policy.costs
        print(f"\nmeasured costs (goodput policy): draft step c = {costs.draft_step:.3f} of a "
              f"target step; target pass over 2 / 5 / 9 tokens = {costs.verify[1]:.2f} / "
              f"{costs.verify[4]:.2f} / {costs.verify[8]:.2f} one-token passes")

    def alphas():
        return alpha_by_domain(pair.target, pair.draft, eval_prompts, draft_len=4,
                               max_new_tokens=args.max_new_tokens, vocab_size=pair.vocab_size,
                               eos_token_id=pair.tokenizer.eos_token_id)

    before = alphas()
    size = args.batch_size
    with tqdm(total=len(stream), desc=f"serving a {args.stream} stream") as progress:
        for first in range(0, len(stream), size):
            batch = stream[first:first + size]
            if size == 1:
                decoder.serve(batch[0][1], batch[0][0])
            else:  # batched speculative decoding, split by draft (osd_lab.batched)
                decoder.serve_batch([p for _, p in batch], [d for d, _ in batch])
            progress.update(len(batch))
    serving_s = sum(decoder.history["latency_s"]) + sum(decoder.history["update_s"])
    decoder.close()  # background: the last updates run and their weights swap in
    after = alphas()

    h = decoder.history
    mode = decoder.update_mode
    if mode == "background":  # what the trainer took: the cores, not serving time
        mode += (f" (trainer: {decoder.trainer_cpu_s:.1f} s of CPU time, "
                 f"{decoder.trainer_cpu_s / serving_s:.0%} of the serving wall time; while it "
                 f"trained, serving ran on {args.threads // 2} of {args.threads} threads; plain "
                 f"decoding on all {args.threads}, the trainer paused; {len(h['swaps'])} weight "
                 f"swaps, {len(h['trainer_errors'])} trainer errors)")
    print(f"\nonline run: {args.queries} queries ({args.stream} stream over "
          f"{', '.join(STREAM_ORDER)}), served in batches of {size}, draft-length policy "
          f"{args.draft_len_policy if size == 1 else 'bass'}"
          f"{f', stop rule {decoder.stop_rule}' if decoder.stop_rule else ''}, update every "
          f"{decoder.update_interval} queries, loss {args.loss}"
          f"{f' (AdaSPEC, k={args.keep_fraction})' if args.keep_fraction else ''}, "
          f"{len(h['updates'])} updates, {len(h['skipped'])} skipped, updates {mode}\n")
    print(f"held-out alpha ({n_eval} prompts per domain, greedy, draft_len 4, until "
          f"end-of-text or {args.max_new_tokens} tokens):")
    print("| domain | alpha before | alpha after | change |\n|---|---:|---:|---:|")
    for d in DOMAINS:
        print(f"| {d} | {before[d]:.3f} | {after[d]:.3f} | {after[d] - before[d]:+.3f} |")
    print(f"\nserved tokens/s (decoding + updates) against plain decoding of the same queries "
          f"in this run; 'last' is each block's last {LAST_FRACTION:.0%}:")
    print("| block | queries | served tokens/s | plain tokens/s | speedup | last: speedup | "
          "update share | mean gamma | served alpha, last | break-even after (queries) | latency p50 / p95, "
          "served (ms) | plain (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    blocks = speed_by_block(h, LAST_FRACTION)
    for d, block in blocks.items():
        whole, last, queries = block["all"], block["last"], block["queries"]
        late = queries[-last["queries"]:]
        gamma = sum(h["draft_len"][i] for i in queries) / len(queries)
        known = [h["alpha"][i] for i in late if h["alpha"][i] == h["alpha"][i]]  # not NaN
        alpha = f"{sum(known) / len(known):.3f}" if known else "-"
        even = block["break_even"]
        served, plain = (" / ".join(f"{1e3 * s:.0f}" for s in block["latency"][k])
                         for k in ("served", "plain"))
        print(f"| {d} | {whole['queries']} | {whole['served_tps']:.0f} | "
              f"{whole['baseline_tps']:.0f} | {whole['speedup']:.2f}x | {last['speedup']:.2f}x | "
              f"{whole['update_share']:.1%} | {gamma:.1f} | {alpha} | "
              f"{even or 'not in the block'} | {served} | {plain} |")
    total = served_speed(h)
    print(f"| whole stream | {total['queries']} | {total['served_tps']:.0f} | "
          f"{total['baseline_tps']:.0f} | {total['speedup']:.2f}x | | "
          f"{total['update_share']:.1%} | | | | | |")
    print("(break-even: the block's queries served before its serving time so far, decoding + "
          "updates, fell below plain decoding's for good)")

    window = max(1, min(20, min(b["all"]["queries"] for b in blocks.values())))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    plot_alpha(h, axes[0], window=window)
    plot_speed(h, axes[1], window=window,
               break_even={d: b["queries"][b["break_even"] - 1]
                           for d, b in blocks.items() if b["break_even"]})
    fig.tight_layout()
    fig.savefig(args.out / "online_alpha_speed.png", dpi=110)
    print(f"\nplots saved to {args.out.resolve() / 'online_alpha_speed.png'}; "
          f"took {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
