"""Peak memory of the online decoder serving a Qwen2.5-0.5B/1.5B-sized pair on a CPU.

Random-initialised models with the real shapes (``random_pairs.py``: 151936
ids, tied embeddings), float32, the default buffer (128 queries, top-64
targets): a short stream goes through ``OnlineSpeculativeDecoder`` with
updates, in up to three modes: "defaults" (no ``lora_rank`` argument: the
decoder chooses by the draft's size, and the run says what it chose), "lora"
(``lora_rank=LORA_RANK``) and "full" (``lora_rank=None``, every weight
trained). Each mode runs in its own process, so one's peak does not hide
the other's; the peak is the process's maximum resident set size (``ru_maxrss``), which includes the
models. The stream is sampled at temperature 1 (greedy, random models with
tied embeddings repeat a token and always agree), so most queries carry a
correction and are buffered.

    python benchmarks/memory.py                  # the defaults, about 4 min on 2 cores
    python benchmarks/memory.py --modes defaults lora full --threads 1
    python benchmarks/memory.py --modes lora --queries 4
    python benchmarks/memory.py --pair random-qwen2-tiny  # a dry run
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_pairs import random_pair  # noqa: E402

from osd_lab.online import LORA_RANK, OnlineSpeculativeDecoder  # noqa: E402

MODES = {"defaults": {}, "lora": dict(lora_rank=LORA_RANK), "full": dict(lora_rank=None)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def buffer_bytes(decoder) -> int:
    """Bytes held by the replay buffers: token ids plus target distributions."""
    return sum(sequence.nbytes + target.nbytes
               for buffer in decoder.buffers.values() for sequence, _, target in buffer)


def run_mode(mode, queries, max_new_tokens, update_interval, prompt_len, pair_name, threads):
    """Serve the stream in this process; returns what it measured, as a dict."""
    if threads:
        torch.set_num_threads(threads)
    pair = random_pair(pair_name, device="cpu", dtype=torch.float32)
    loaded_gib = peak_rss_gib()
    decoder = OnlineSpeculativeDecoder(pair.target, pair.draft, pair.tokenizer,
                                       update_interval=update_interval,
                                       max_new_tokens=max_new_tokens,
                                       vocab_size=pair.vocab_size, temperature=1.0,
                                       **MODES[mode])
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(queries):
        ids = torch.randint(5, 4096, (prompt_len,), generator=generator)  # the zoo's ids
        decoder.serve(pair.tokenizer.decode(ids))
    positions = sum(len(target.top_indices) if decoder.config.buffer_top_k else len(target)
                    for _, _, target in decoder.buffers["draft"])
    rank = decoder.lora_ranks["draft"]
    return {"mode": mode, "fine_tuning": "full fine-tuning" if rank is None else f"LoRA rank {rank}",
            "peak_rss_gib": peak_rss_gib(), "after_loading_gib": loaded_gib,
            "buffered_queries": len(decoder.buffers["draft"]), "buffered_positions": positions,
            "buffer_bytes": buffer_bytes(decoder),
            "full_logits_bytes": positions * pair.vocab_size * 4,
            "updates": len(decoder.history["updates"]), "skipped": len(decoder.history["skipped"]),
            "trainable_parameters": sum(p.numel() for p in pair.draft.parameters()
                                        if p.requires_grad),
            "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=["defaults"])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--update-interval", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=24)
    parser.add_argument("--pair", default="random-qwen2.5",
                        help="random-qwen2-tiny: a dry run in seconds")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: torch's default)")
    parser.add_argument("--one", choices=tuple(MODES), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    settings = (args.queries, args.max_new_tokens, args.update_interval, args.prompt_len,
                args.pair, args.threads)
    if args.one:
        print(json.dumps(run_mode(args.one, *settings)))
        return
    print(f"{args.pair} (draft / target), float32 CPU; {args.queries} queries of "
          f"{args.prompt_len} tokens, {args.max_new_tokens} new tokens, an update every "
          f"{args.update_interval}; torch threads {args.threads or torch.get_num_threads()}")
    for mode in args.modes:
        child = subprocess.run([sys.executable, __file__, "--one", mode, "--queries",
                                str(args.queries), "--max-new-tokens", str(args.max_new_tokens),
                                "--update-interval", str(args.update_interval),
                                "--prompt-len", str(args.prompt_len), "--pair", args.pair,
                                "--threads", str(args.threads)],
                               capture_output=True, text=True)
        if child.returncode:
            print(f"{mode}: failed (exit {child.returncode})\n{child.stderr[-2000:]}")
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{mode:8} ({r['fine_tuning']}): peak RSS {r['peak_rss_gib']:.2f} GiB (models "
              f"loaded: {r['after_loading_gib']:.2f} GiB); {r['updates']} updates, {r['skipped']} "
              f"skipped, {r['trainable_parameters'] / 1e6:.1f}M trainable weights; buffer "
              f"{r['buffered_queries']} queries, {r['buffered_positions']} positions, "
              f"{r['buffer_bytes'] / 2**20:.2f} MB (full logits: "
              f"{r['full_logits_bytes'] / 2**20:.0f} MB); {r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
