"""Online speculative decoding: update interval, buffer size, AdaSPEC, and offline
distillation on the same data, side by side.

    python benchmarks/online.py [--pair zoo-all] [--queries 300] [--stream iid]

Every run starts from the pair's draft (``--pair``: by default the one the online
decoder is shown with, ``osd_lab.online.ONLINE_PAIR``; ``zoo``: the draft
trained on sql only) and serves the
same seeded stream of held-out prompts over all four domains (greedy, the
goodput draft-length policy, up to 32 new tokens or end-of-text, forward KL,
lr 1e-3 unless said, batch 8), each query also decoded plainly beside it, so
each run reports its served tokens/s with updates counted against plain
decoding of the same queries, and the update share of serving time. Then
exact alpha (draft_len 4, greedy, until end-of-text) is measured on held-out
prompts that are not in the stream. Rows:
  * online, with several update intervals and buffer sizes, and with AdaSPEC
    token selection (k = 0.4), on one torch thread;
  * online on 2 threads, updates on the serving path ("sync") or in a
    background thread (``osd_lab.background``: serving and the trainer on one
    thread each while it trains; the plain decoding they are compared with
    gets both threads, the trainer paused), with the trainer's CPU time;
  * offline: the same queries answered by the target (the same greedy
    continuations), distilled with the same number of steps and batch size
    as the default online run, sampled uniformly from all of them: what one
    would get by collecting the data first and training once.
Prints a markdown table; nothing here is a test.
"""

import argparse
import copy
import time

import torch

from osd_lab.decoding import autoregressive_generate
from osd_lab.distill import distill
from osd_lab.evaluation import alpha_by_domain, served_speed
from osd_lab.models import load_pair
from osd_lab.online import ONLINE_PAIR, STREAMS, OnlineSpeculativeDecoder, make_stream
from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus

MAX_NEW_TOKENS = 32


def evaluate(pair, draft, eval_prompts):
    """{domain: alpha} of greedy speculative decoding on held-out prompts."""
    return alpha_by_domain(pair.target, draft, eval_prompts, max_new_tokens=MAX_NEW_TOKENS,
                           vocab_size=pair.vocab_size, eos_token_id=pair.tokenizer.eos_token_id)


def run_online(pair, stream, **settings):
    """Serve the stream with a fresh copy of the draft; returns (draft, history)."""
    draft = copy.deepcopy(pair.draft)
    with OnlineSpeculativeDecoder(pair.target, draft, pair.tokenizer,
                                  max_new_tokens=MAX_NEW_TOKENS, vocab_size=pair.vocab_size,
                                  baseline=True, **settings) as decoder:
        for domain, prompt in stream:
            decoder.serve(prompt, domain)
    return draft, decoder


def run_offline(pair, stream, steps, batch_size):
    """Distil a fresh copy of the draft on the target's answers to the stream's queries."""
    prompts = [pair.tokenizer(prompt, return_tensors="pt").input_ids[0] for _, prompt in stream]
    answers = {i: torch.cat([ids, autoregressive_generate(
        pair.target, ids, MAX_NEW_TOKENS, eos_token_id=pair.tokenizer.eos_token_id).tokens])
        for i, ids in enumerate(prompts)}  # what the server answered: greedy, EOS included
    draft = copy.deepcopy(pair.draft)
    distill(pair.target, draft, prompts, loss="fkl", data="target", steps=steps,
            batch_size=batch_size, lr=1e-3, vocab_size=pair.vocab_size,
            target_cache=answers, progress=False)
    return draft


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("zoo-all", "zoo"), default=ONLINE_PAIR)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--stream", choices=STREAMS, default="iid")
    parser.add_argument("--eval-prompts", type=int, default=16, help="held-out per domain")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # steadier on a shared 2-core machine
    set_seed(0)
    start = time.time()
    pair = load_pair(args.pair)
    corpus = load_corpus()
    n_eval = args.eval_prompts
    eval_prompts = {d: [pair.tokenizer(p, return_tensors="pt").input_ids
                        for p in corpus[d]["prompts"][:n_eval]] for d in DOMAINS}
    stream = make_stream(args.stream, {d: corpus[d]["prompts"][n_eval:] for d in DOMAINS},
                         args.queries, seed=0)

    default = dict(update_interval=4, buffer_size=128, lr=1e-3)
    runs = {"online, interval 4, buffer 128": default,
            "online, interval 1, buffer 128": dict(default, update_interval=1),
            "online, interval 2, buffer 128": dict(default, update_interval=2),
            "online, interval 16, buffer 128": dict(default, update_interval=16),
            "online, interval 4, buffer 8": dict(default, buffer_size=8),
            "online, interval 4, buffer 32": dict(default, buffer_size=32),
            "online, interval 4, buffer 128, lr 3e-3": dict(default, lr=3e-3),
            "online AdaSPEC k=0.4, interval 4, buffer 128": dict(default, keep_fraction=0.4),
            # the same cores for serving and training: sync on 2 threads, or background
            # (serving and the trainer on 1 thread each while it trains; plain decoding on 2)
            "online, interval 4, 2 threads, sync": dict(default, threads=2, update_mode="sync"),
            "online, interval 4, 2 threads, background": dict(default, threads=2,
                                                              update_mode="background"),
            "online, interval 1, 2 threads, background": dict(default, threads=2,
                                                              update_interval=1,
                                                              update_mode="background")}
    results = {f"no update ({args.pair} draft)": (evaluate(pair, pair.draft, eval_prompts), None)}
    for name, settings in runs.items():
        draft, decoder = run_online(pair, stream, **settings)
        history, speed = decoder.history, served_speed(decoder.history)
        serving_s = sum(history["latency_s"]) + sum(history["update_s"])
        trainer = (f", trainer CPU {decoder.trainer_cpu_s / serving_s:.0%} of serving time"
                   if decoder.trainer else "")
        results[name] = (evaluate(pair, draft, eval_prompts),
                         f"{len(history['updates'])} updates, served {speed['speedup']:.2f}x "
                         f"plain decoding, updates {speed['update_share']:.1%} of serving "
                         f"time{trainer}")
        print(f"{name}: done at {time.time() - start:.0f}s", flush=True)
    steps = args.queries // default["update_interval"]
    draft = run_offline(pair, stream, steps, batch_size=8)
    results["offline FKL on the same queries"] = (evaluate(pair, draft, eval_prompts),
                                                  f"{steps} steps")
    print(f"offline: done at {time.time() - start:.0f}s", flush=True)

    print(f"\n{args.queries} queries ({args.stream} stream over {', '.join(DOMAINS)}), greedy, "
          f"goodput policy, up to {MAX_NEW_TOKENS} new tokens, fkl, lr 1e-3 unless said, batch "
          f"8; alpha (draft_len 4, until end-of-text) on {n_eval} held-out prompts per domain "
          f"not in the stream\n")
    # the mean over the domains where the draft started below 0.6: the ones it has to learn
    before = results[f"no update ({args.pair} draft)"][0]
    weak = [d for d in DOMAINS if before[d] < 0.6]
    print(f"pair {args.pair}; domains the draft starts below alpha 0.6 on: {', '.join(weak)}\n")
    print("| run | " + " | ".join(DOMAINS) + f" | {' + '.join(weak)} mean (change) | notes |")
    print("|---|" + "---:|" * (len(DOMAINS) + 1) + "---|")
    weak_before = sum(before[d] for d in weak) / max(1, len(weak))
    for name, (alpha, notes) in results.items():
        mean = sum(alpha[d] for d in weak) / max(1, len(weak))
        cells = " | ".join(f"{alpha[d]:.3f}" for d in DOMAINS)
        print(f"| {name} | {cells} | {mean:.3f} ({mean - weak_before:+.3f}) | {notes or ''} |")
    print(f"\n(took {(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
