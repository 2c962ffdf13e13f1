"""The main job: ``python -m osd_lab`` (``make run``).

Loads the embedded zoo, continues one held-out prompt per domain with
KV-cached greedy decoding by target and draft, and prints per-domain
perplexity, tokens/s, and the exact acceptance rate of the draft.
"""

import argparse

from osd_lab.decoding import autoregressive_generate
from osd_lab.models import load_pair
from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus
from osd_lab.zoo.report import format_table, measure_domains, measure_step_times


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m osd_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=10,
                        help="held-out prompts per domain for perplexity and alpha")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_seed(args.seed)
    pair = load_pair("zoo")
    corpus = load_corpus()
    print(f"osd_lab zoo on {pair.device}: target {pair.target.num_parameters() / 1e6:.1f}M "
          f"parameters, draft {pair.draft.num_parameters() / 1e6:.2f}M\n")
    for domain in DOMAINS:
        prompt = corpus[domain]["prompts"][0]
        ids = pair.tokenizer(prompt, return_tensors="pt").input_ids
        print(f"== {domain} ==\n{prompt}", end="")
        for role, model in (("target", pair.target), ("draft", pair.draft)):
            out = autoregressive_generate(model, ids, args.max_new_tokens,
                                          eos_token_id=pair.tokenizer.eos_token_id)
            text = pair.tokenizer.decode(out.tokens, skip_special_tokens=True)
            print(f"\n  [{role}, {out.stats['tokens_per_s']:.0f} tokens/s] {text!r}")
        print()
    print(format_table(measure_domains(pair, args.prompts)))
    times = measure_step_times(pair)
    print(f"\ndecode step: target {times['target_step_s'] * 1e3:.2f} ms, draft "
          f"{times['draft_step_s'] * 1e3:.2f} ms, cost ratio c = {times['cost_ratio']:.3f}")


if __name__ == "__main__":
    main()
