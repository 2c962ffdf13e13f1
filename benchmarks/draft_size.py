"""Which default draft? Candidates trained on all four domains, side by side.

    python zoo/train.py --only draft --draft-domain all --draft-layers 2 \
        --draft-width 256 --draft-name all-2x256 --out /tmp/drafts     # each candidate
    python benchmarks/draft_size.py /tmp/drafts/all-1x192 /tmp/drafts/all-2x256 ...

For the zoo's own draft (trained on sql only) and each candidate folder:
parameters and size on disk; c and v(k) against the zoo target
(``measure_costs``, on the threads given); exact greedy alpha per domain on
held-out prompts until end-of-text; and the alpha that offline distillation
reaches per domain: forward KL on the target's continuations of training
prompts of all four domains (``--steps`` x 8 sequences, lr 1e-3, the same
prompts and batches for every candidate). Prints a markdown table; nothing
here is a test.
"""

import argparse
import copy
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from osd_lab.distill import distill
from osd_lab.evaluation import alpha_by_domain
from osd_lab.measure import measure_costs
from osd_lab.models import ZOO_DIR, load_pair
from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus


def training_prompts(tokenizer, per_domain, prompt_tokens=16):
    """The first ``prompt_tokens`` tokens of training documents of every domain."""
    corpus = load_corpus()
    return [tokenizer(doc, return_tensors="pt").input_ids[0, :prompt_tokens]
            for d in DOMAINS for doc in corpus[d]["train"][:per_domain]]


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", type=Path, nargs="*", help="draft folders")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--train-prompts", type=int, default=64, help="per domain")
    parser.add_argument("--eval-prompts", type=int, default=16, help="per domain")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for path in args.candidates:
        if not (path / "config.json").is_file():
            parser.error(f"{path} is not a model folder (no config.json)")
    torch.set_num_threads(args.threads)
    set_seed(0)
    start = time.time()
    pair = load_pair("zoo")
    corpus = load_corpus()
    eval_prompts = {d: [pair.tokenizer(p, return_tensors="pt").input_ids[0]
                        for p in corpus[d]["prompts"][:args.eval_prompts]] for d in DOMAINS}
    prompts = training_prompts(pair.tokenizer, args.train_prompts)
    target_cache = {}  # the target's continuations, generated once for every candidate
    drafts = {"zoo draft (sql only)": (pair.draft, ZOO_DIR / "draft")}
    for path in args.candidates:
        drafts[path.name] = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
                             .eval(), path)
    rows = []
    for name, (draft, path) in drafts.items():
        costs = measure_costs(pair.target, draft)
        alpha = dict(max_new_tokens=32, vocab_size=pair.vocab_size,
                     eos_token_id=pair.tokenizer.eos_token_id)
        before = alpha_by_domain(pair.target, draft, eval_prompts, **alpha)
        distilled = copy.deepcopy(draft)
        distill(pair.target, distilled, prompts, loss="fkl", data="target", steps=args.steps,
                batch_size=8, lr=1e-3, vocab_size=pair.vocab_size, target_cache=target_cache,
                progress=False)
        after = alpha_by_domain(pair.target, distilled, eval_prompts, **alpha)
        rows.append((name, draft.num_parameters(), folder_mb(path), costs, before, after))
        print(f"{name}: done at {time.time() - start:.0f}s", flush=True)

    print(f"\nzoo target; {torch.get_num_threads()} threads; alpha: greedy, draft_len 4, until "
          f"end-of-text or 32 tokens, {args.eval_prompts} held-out prompts per domain; "
          f"distilled: FKL, {args.steps} steps x 8, lr 1e-3, on {len(prompts)} training prompts "
          f"of all four domains\n")
    domains = " | ".join(DOMAINS)
    print(f"| draft | parameters | MB | c | v(2) / v(5) / v(9) | alpha before: {domains} | "
          f"distilled: {domains} |")
    print("|---|---:|---:|---:|---:|" + "---:|" * (2 * len(DOMAINS)))
    for name, size, mb, costs, before, after in rows:
        v = " / ".join(f"{costs.verify[k - 1]:.2f}" for k in (2, 5, 9))
        print(f"| {name} | {size / 1e6:.2f}M | {mb:.1f} | {costs.draft_step:.3f} | {v} | "
              + " | ".join(f"{before[d]:.3f}" for d in DOMAINS) + " | "
              + " | ".join(f"{after[d]:.3f}" for d in DOMAINS) + " |")
    print(f"\n(took {(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
