"""Where a speculative decoder's time goes: ours and transformers' assisted generation.

    python benchmarks/profile_step.py [--pair random-qwen2.5] [--self-draft]
                                      [--tokens 32] [--threads 2] [--top 20]

Greedy decoding of one prompt, after a warm-up, by ``speculative_generate``
(constant gamma=4) and by transformers' ``generate(assistant_model=draft)``
with its defaults. For each: the wall time split into the models' forward
passes and everything else (the decoder's own loop: sampling, verification,
statistics, cache handling), from ``CountCalls``; then cProfile's functions
with the most time of their own, so the loop's costs can be named. With
``--self-draft`` the target drafts for itself (alpha = 1): the forward passes
of both decoders are then comparable, and the rest is loop overhead.
Nothing here is a test.
"""

import argparse
import cProfile
import io
import pstats

import torch

from osd_lab.decoding import speculative_generate
from osd_lab.timing import CountCalls, clock
from random_pairs import RANDOM_PAIRS, random_pair, shared_copy
from speed import REAL_SHAPE_PROMPTS


def profile(name, decode, pair, draft, top):
    """Run ``decode()`` once under cProfile; print the split and the top functions."""
    counter = CountCalls(target=pair.target, draft=draft)
    profiler = cProfile.Profile()
    with counter as calls:
        start = clock(pair.device)
        profiler.enable()
        tokens = decode()
        profiler.disable()
        wall = clock(pair.device) - start
    in_models = sum(counter.seconds.values())
    print(f"\n## {name}: {tokens} tokens in {wall:.2f} s (under cProfile); "
          f"{calls['target']} target calls ({counter.seconds['target']:.2f} s), "
          f"{calls['draft']} draft calls ({counter.seconds['draft']:.2f} s), "
          f"outside the models {wall - in_models:.3f} s = "
          f"{1000 * (wall - in_models) / tokens:.1f} ms per token")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines()
                    if line.strip() and not line.startswith(("   Ordered", "         "))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="random-qwen2.5", choices=sorted(RANDOM_PAIRS))
    parser.add_argument("--self-draft", action="store_true")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pair = random_pair(args.pair, "cpu", torch.float32, self_draft=args.self_draft)
    ids = pair.tokenizer(REAL_SHAPE_PROMPTS["code"], return_tensors="pt").input_ids
    eos, n = pair.tokenizer.eos_token_id, args.tokens
    assistant = shared_copy(pair.draft)  # transformers keeps its schedule on it

    def ours():
        return len(speculative_generate(pair.target, pair.draft, ids, n, draft_len=4,
                                        draft_len_policy="constant", eos_token_id=eos).tokens)

    def theirs():
        out = pair.target.generate(ids, assistant_model=assistant, do_sample=False,
                                   max_new_tokens=n, eos_token_id=eos,
                                   pad_token_id=pair.tokenizer.pad_token_id,
                                   attention_mask=torch.ones_like(ids))
        return out.shape[1] - ids.shape[1]

    print(f"pair {pair.name} on cpu in float32, {torch.get_num_threads()} threads, "
          f"prompt of {ids.shape[1]} tokens, up to {n} new tokens, greedy")
    ours(), theirs()  # warm-up
    profile("ours, constant gamma=4", ours, pair, pair.draft, args.top)
    profile("transformers assisted (defaults)", theirs, pair, assistant, args.top)


if __name__ == "__main__":
    main()
