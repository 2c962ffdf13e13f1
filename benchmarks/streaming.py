"""Speculative Streaming vs Medusa heads vs a draft model, side by side in one run.

    python benchmarks/streaming.py [--prompts 8] [--tokens 48] [--device cpu] [--dtype float32]

On each zoo domain, the same held-out prompts are decoded greedily until
end-of-text or --tokens, by
  * ``autoregressive_generate`` of the zoo target (KV cache, the baseline),
  * ``autoregressive_generate`` of the streams' model: the zoo target with
    the LoRA adapters it was fine-tuned with jointly with its streams merged
    in (``load_streaming_model``), the baseline of the streams,
  * ``streaming_generate`` with the zoo's trained streams: a chain, and a tree,
  * ``streaming_generate`` with the Medusa heads on the frozen target: a
    chain, and a tree,
  * ``speculative_generate`` with the zoo's all-domain draft model (gamma 4).
Every method is warmed up on one prompt first; then each is timed --repeats
times, methods interleaved, and the fastest total kept (other programs only
ever add time). Each prints tokens/s, its speed against the autoregressive
decoding of the model whose output it reproduces (measured in the same run:
the streams against their own model's), mean tokens per target forward
pass, and the parameters it adds to the target. In float32 every output must
equal that autoregressive decoding token for token (the script stops
otherwise). Nothing here is a test.
"""

import argparse
import time

import torch

from osd_lab.decoding import autoregressive_generate, speculative_generate
from osd_lab.medusa import load_medusa_model
from osd_lab.models import load_pair
from osd_lab.sampling import get_device
from osd_lab.timing import time_side_by_side
from osd_lab.streaming import load_streaming_model, streaming_generate
from osd_lab.zoo.corpus import DOMAINS, load_corpus


def methods(pair, streaming, medusa, args):
    """name -> (decode one prompt, parameters added to the target, its baseline)."""
    tokens, tree = args.tokens, dict(tree_nodes=args.tree_nodes, tree_width=args.tree_width)
    plain, own = "autoregressive", "autoregressive, the streams' model"
    return {
        plain: (lambda ids: autoregressive_generate(pair.target, ids, tokens), 0, plain),
        own: (lambda ids: autoregressive_generate(streaming.base, ids, tokens), 0, own),
        "streaming, chain": (lambda ids: streaming_generate(streaming, ids, tokens),
                             streaming.extra_parameters(), own),
        f"streaming, tree of {args.tree_nodes}": (
            lambda ids: streaming_generate(streaming, ids, tokens, **tree),
            streaming.extra_parameters(), own),
        "Medusa heads, chain": (lambda ids: streaming_generate(medusa, ids, tokens),
                                medusa.extra_parameters(), plain),
        f"Medusa heads, tree of {args.tree_nodes}": (
            lambda ids: streaming_generate(medusa, ids, tokens, **tree),
            medusa.extra_parameters(), plain),
        f"draft model (gamma={args.draft_len})": (
            lambda ids: speculative_generate(pair.target, pair.draft, ids, tokens,
                                             draft_len=args.draft_len,
                                             draft_len_policy="constant",
                                             vocab_size=pair.vocab_size),
            pair.draft.num_parameters(), plain),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="timed prompts per domain")
    parser.add_argument("--streams", default="zoo",
                        help="the streams to load: zoo (shipped) or a folder of train_streams.py")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--draft-len", type=int, default=4)
    parser.add_argument("--tree-nodes", type=int, default=8)
    parser.add_argument("--tree-width", type=int, default=2)
    parser.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16",
                                                               "float16"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else get_device()
    pair = load_pair("zoo-all", device=device, dtype=getattr(torch, args.dtype))
    streaming = load_streaming_model(args.streams, base=pair.target)
    medusa = load_medusa_model(base=pair.target)
    decoders = methods(pair, streaming, medusa, args)
    print(f"zoo on {device}, {args.dtype}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.prompts} held-out prompts x {args.tokens} greedy "
          f"tokens per domain (until end-of-text), warm-up 1 prompt, best of {args.repeats} "
          f"interleaved; streams: gamma {streaming.gamma}, "
          f"{streaming.streams.num_stream_layers} stream layers")
    print("\n| domain | method | tokens/s | vs its autoregressive | tokens per pass | "
          "extra parameters |")
    print("|---|---|---:|---:|---:|---:|")
    corpus = load_corpus()
    for domain in args.domains:
        texts = corpus[domain]["prompts"][:args.prompts + 1]
        prompts = [pair.tokenizer(t, return_tensors="pt").input_ids.to(device) for t in texts]
        results = time_side_by_side({name: decode for name, (decode, _, _) in decoders.items()},
                                    prompts[1:], prompts[0], args.repeats)
        for name, (_, extra, baseline_name) in decoders.items():
            result, baseline = results[name], results[baseline_name]
            if result["outputs"] != baseline["outputs"]:
                message = f"{domain}, {name}: greedy output differs from {baseline_name}"
                if args.dtype == "float32":
                    raise SystemExit(message)
                print(f"(note: {message}; {args.dtype} rounding can flip near-ties)")
            speed = result["tokens"] / result["wall_s"]
            print(f"| {domain} | {name} | {speed:.1f} | "
                  f"{speed / (baseline['tokens'] / baseline['wall_s']):.2f}x | "
                  f"{result['tokens'] / result['passes']:.2f} | {extra:,} |")
    if args.dtype == "float32":
        print("\nall greedy outputs agree token for token")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"(benchmark took {time.time() - start:.0f}s)")
