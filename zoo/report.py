"""Measure the zoo: the figures the README quotes.

    python zoo/report.py [--prompts 50] [--tokens 32]

Per domain: target and draft perplexity on held-out documents, the exact
acceptance rate alpha = mean over positions of sum_v min(p, q) (temperature 1)
along the target's greedy continuations of held-out prompts, and the greedy
agreement rate; then the per-token decode step time of both models and their
ratio c.
"""

import argparse

import torch
from tqdm.auto import tqdm

from osd_lab.measure import decode_step_time
from osd_lab.metrics import acceptance_along_greedy, perplexity
from osd_lab.models import load_pair
from osd_lab.zoo.corpus import DOMAINS, load_corpus


def measure_domains(pair, num_prompts=50, num_tokens=32):
    """One row per domain: perplexities, mean alpha and greedy agreement."""
    corpus = load_corpus()
    rows = []
    for domain in tqdm(DOMAINS, desc="domains"):
        heldout, prompts = corpus[domain]["heldout"], corpus[domain]["prompts"]
        alphas, agrees = [], []
        for prompt in prompts[:num_prompts]:
            ids = pair.tokenizer(prompt, return_tensors="pt").input_ids
            stats = acceptance_along_greedy(pair.target, pair.draft, ids, num_tokens,
                                            vocab_size=pair.vocab_size,
                                            eos_token_id=pair.tokenizer.eos_token_id)
            alphas.append(stats["alpha"])
            agrees.append(stats["agree"])
        rows.append(dict(
            domain=domain,
            target_ppl=perplexity(pair.target, pair.tokenizer, heldout[:num_prompts]),
            draft_ppl=perplexity(pair.draft, pair.tokenizer, heldout[:num_prompts]),
            alpha=torch.cat(alphas).mean().item(),
            greedy_agreement=torch.cat(agrees).float().mean().item()))
    return rows


def measure_step_times(pair):
    """Seconds per KV-cached decode step of target and draft, and c = draft / target."""
    target_s, draft_s = decode_step_time(pair.target), decode_step_time(pair.draft)
    return dict(target_step_s=target_s, draft_step_s=draft_s, cost_ratio=draft_s / target_s)


def format_table(rows):
    lines = ["| domain | target ppl | draft ppl | alpha (T=1) | greedy agreement |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['domain']} | {r['target_ppl']:.2f} | {r['draft_ppl']:.2f} | "
              f"{r['alpha']:.3f} | {r['greedy_agreement']:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    pair = load_pair("zoo")
    print(f"zoo on {pair.device}: target {pair.target.num_parameters() / 1e6:.1f}M, "
          f"draft {pair.draft.num_parameters() / 1e6:.2f}M parameters, "
          f"{torch.get_num_threads()} threads")
    print(format_table(measure_domains(pair, args.prompts, args.tokens)))
    times = measure_step_times(pair)
    print(f"decode step: target {times['target_step_s'] * 1e3:.2f} ms, draft "
          f"{times['draft_step_s'] * 1e3:.2f} ms, c = {times['cost_ratio']:.3f}")


if __name__ == "__main__":
    main()
