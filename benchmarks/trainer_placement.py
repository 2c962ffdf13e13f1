"""Where the background trainer runs: a thread of the serving process or a
process of its own, measured side by side.

    python benchmarks/trainer_placement.py [--pair zoo-all] [--queries 24] [--repeats 2]

The online decoder's background mode (``osd_lab.background``) trains in a
thread. Python runs one thread at a time (the GIL) except inside torch's
ops, so a thread pays for every Python step the other thread takes; a
process pays none of that, but its weights have to cross a process boundary
after every update. This script measures the first part. Two workloads, each
on one torch thread of this 2-core machine:
  * serving: ``speculative_generate`` with its defaults on held-out queries
    of all four domains (greedy, up to 32 new tokens or end-of-text);
  * training: the decoder's own update (``OnlineSpeculativeDecoder.update``:
    a distillation step on a buffer of served queries), in a loop.
Conditions, interleaved, best of ``--repeats``: each workload alone; both,
the trainer in a thread of the serving process; both, the trainer in a
spawned process. Prints serving tokens/s and updates/s, each as a share of
its speed alone. Nothing here is a test; run it on a quiet machine.
"""

import argparse
import copy
import queue
import threading
import time

import torch
import torch.multiprocessing as mp

from osd_lab.decoding import speculative_generate
from osd_lab.models import load_pair
from osd_lab.online import ONLINE_PAIR, OnlineConfig, OnlineSpeculativeDecoder
from osd_lab.zoo.corpus import DOMAINS, load_corpus

MAX_NEW_TOKENS = 32
BUFFER_QUERIES = 32  # served to fill the trainer's buffer before timing


def prompts(count, start):
    """``count`` held-out prompts from ``start`` on, the domains in turn."""
    corpus = load_corpus()
    per_domain = -(-count // len(DOMAINS))
    mixed = [corpus[d]["prompts"][start + i] for i in range(per_domain) for d in DOMAINS]
    return mixed[:count]


def trainer_loop(pair_name, ready, go, stop, results):
    """Fill a decoder's buffer, signal ``ready``; from ``go`` to ``stop``, run
    updates; put (updates, seconds) in ``results``. Runs in a thread or a process."""
    torch.set_num_threads(1)
    pair = load_pair(pair_name)
    decoder = OnlineSpeculativeDecoder(pair.target, copy.deepcopy(pair.draft), pair.tokenizer,
                                       OnlineConfig(update_mode="sync", threads=1,
                                                    update_interval=BUFFER_QUERIES + 1,
                                                    max_new_tokens=MAX_NEW_TOKENS),
                                       vocab_size=pair.vocab_size)
    for prompt in prompts(BUFFER_QUERIES, start=40):  # not the queries served below
        decoder.serve(prompt)
    ready.set()
    go.wait()
    start, updates = time.perf_counter(), 0
    while not stop.is_set():
        decoder.update()
        updates += 1
    results.put((updates, time.perf_counter() - start))


def serve(pair, queries):
    """Seconds and new tokens for speculative decoding of every query."""
    start, tokens = time.perf_counter(), 0
    for ids in queries:
        out = speculative_generate(pair.target, pair.draft, ids, MAX_NEW_TOKENS,
                                   eos_token_id=pair.tokenizer.eos_token_id,
                                   vocab_size=pair.vocab_size)
        tokens += out.stats.new_tokens
    return time.perf_counter() - start, tokens


def run(pair, pair_name, queries, trainer, seconds=None):
    """One condition: serving alone (trainer None), or beside a trainer in a
    "thread" or "process"; the trainer alone when ``queries`` is None (for
    ``seconds``). Returns (serving tokens/s or None, updates/s or None)."""
    if trainer is None:
        elapsed, tokens = serve(pair, queries)
        return tokens / elapsed, None
    if trainer == "process":
        context = mp.get_context("spawn")
        ready, go, stop, results = (context.Event(), context.Event(), context.Event(),
                                    context.Queue())
        worker = context.Process(target=trainer_loop, args=(pair_name, ready, go, stop, results))
    else:
        ready, go, stop, results = (threading.Event(), threading.Event(), threading.Event(),
                                    queue.Queue())
        worker = threading.Thread(target=trainer_loop, args=(pair_name, ready, go, stop, results))
    worker.start()
    ready.wait()
    go.set()
    if queries is None:
        time.sleep(seconds)
        serving = None
    else:
        elapsed, tokens = serve(pair, queries)
        serving = tokens / elapsed
    stop.set()
    updates, elapsed = results.get()
    worker.join()
    return serving, updates / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("zoo-all", "zoo"), default=ONLINE_PAIR)
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    pair = load_pair(args.pair)
    queries = [pair.tokenizer(p, return_tensors="pt").input_ids
               for p in prompts(args.queries, start=8)]
    serve(pair, queries[:4])  # warm-up
    best = {}
    for repeat in range(args.repeats):
        alone_tps, _ = run(pair, args.pair, queries, None)
        seconds = len(queries) * MAX_NEW_TOKENS / alone_tps  # about as long as serving
        conditions = {"serving alone": (alone_tps, None),
                      "trainer alone": run(pair, args.pair, None, "thread", seconds),
                      "both, trainer in a thread": run(pair, args.pair, queries, "thread"),
                      "both, trainer in a process": run(pair, args.pair, queries, "process")}
        for name, (tps, ups) in conditions.items():
            old = best.get(name, (None, None))
            best[name] = (max(filter(None, (tps, old[0])), default=None),
                          max(filter(None, (ups, old[1])), default=None))
        print(f"repeat {repeat + 1}: done at {time.time() - start:.0f}s", flush=True)

    serving_alone, updates_alone = best["serving alone"][0], best["trainer alone"][1]
    print(f"\npair {args.pair}, {len(queries)} queries x up to {MAX_NEW_TOKENS} tokens, one "
          f"torch thread each, best of {args.repeats}\n")
    print("| condition | serving tokens/s | share of alone | updates/s | share of alone |")
    print("|---|---:|---:|---:|---:|")
    for name, (tps, ups) in best.items():
        cells = [f"{tps:.1f} | {tps / serving_alone:.0%}" if tps else " | ",
                 f"{ups:.2f} | {ups / updates_alone:.0%}" if ups else " | "]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\n(took {time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
