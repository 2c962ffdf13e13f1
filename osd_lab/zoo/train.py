"""Rebuild the zoo from the shipped corpus: tokenizer, target and draft.

    python -m osd_lab.zoo.train            # about 40 minutes on 2 CPU cores

1. A byte-level BPE tokenizer (4096 tokens) is trained on all training text.
2. The *target* (Llama architecture, ~17M parameters) is trained on all four
   domains.
3. The *draft* (one layer, ~2M parameters) is trained on one domain only
   (``--draft-domain``, default ``sql``): good there, poor elsewhere. That gap
   is what distillation and online adaptation close in later notebooks.

Everything is seeded; weights are saved in float16 (loaded as float32) so the
shipped zoo stays small. Figures for the README come from
``python -m osd_lab.zoo.report`` afterwards.
"""

import argparse
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus

ZOO_DIR = Path(__file__).resolve().parent / "models"
EOS = "<|endoftext|>"

# Model shapes. The draft is one wide-enough layer: on a CPU its step time is
# mostly fixed per-layer overhead, so depth is what makes it slow.
TARGET_SHAPE = dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6,
                    intermediate_size=1024)
DRAFT_SHAPE = dict(hidden_size=192, num_hidden_layers=1, num_attention_heads=4,
                   intermediate_size=512)


# -----------------------------------------------------------------------------
# tokenizer

def train_tokenizer(texts, vocab_size=4096):
    """Byte-level BPE; every encoding starts with the EOS token used as BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS,
                                   eos_token=EOS, pad_token=EOS)


def token_stream(tokenizer, docs):
    """Concatenate documents, each starting with BOS, into one 1-D LongTensor."""
    ids = [i for d in docs for i in tokenizer(d).input_ids]
    return torch.tensor(ids, dtype=torch.long)


# -----------------------------------------------------------------------------
# models

def make_model(tokenizer, shape, max_len=512):
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_len,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, **shape)
    return LlamaForCausalLM(config)


def train_lm(model, stream, steps, batch_size=8, seq_len=256, lr=1e-3,
             warmup=50, seed=0, desc="train"):
    """Next-token training on random windows of ``stream``; returns losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1,
                            betas=(0.9, 0.95))
    # linear warmup, then cosine decay to lr / 10
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warmup)
                                              * (0.55 + 0.45 * math.cos(math.pi * s / steps)))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc)
    for _ in bar:
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + seq_len] for s in starts])  # (B, T)
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def save(model, path):
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.to(torch.float16).save_pretrained(path, max_shard_size="15MB")
    model.to(torch.float32)


# -----------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft-domain", default="sql", choices=DOMAINS)
    parser.add_argument("--target-steps", type=int, default=900)
    parser.add_argument("--draft-steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    set_seed(args.seed)
    corpus = load_corpus()
    t0 = time.time()

    docs = {d: list(corpus[d]["train"]) for d in DOMAINS}
    tokenizer = train_tokenizer([doc for d in DOMAINS for doc in docs[d]])
    tokenizer.save_pretrained(args.out / "tokenizer")
    print(f"tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.0f}s)")

    all_docs = [doc for d in DOMAINS for doc in docs[d]]
    random.Random(args.seed).shuffle(all_docs)
    target_stream = token_stream(tokenizer, all_docs)
    draft_stream = token_stream(tokenizer, docs[args.draft_domain])
    print(f"tokens: target {len(target_stream):,}, draft ({args.draft_domain}) "
          f"{len(draft_stream):,}")

    draft = make_model(tokenizer, DRAFT_SHAPE)
    print(f"draft: {draft.num_parameters() / 1e6:.2f}M parameters")
    train_lm(draft, draft_stream, args.draft_steps, lr=3e-3, seed=args.seed + 1,
             desc=f"draft ({args.draft_domain})")
    save(draft, args.out / "draft")

    target = make_model(tokenizer, TARGET_SHAPE)
    print(f"target: {target.num_parameters() / 1e6:.2f}M parameters")
    train_lm(target, target_stream, args.target_steps, seed=args.seed + 2,
             desc="target (all domains)")
    save(target, args.out / "target")
    print(f"done in {(time.time() - t0) / 60:.1f} min -> {args.out}")


if __name__ == "__main__":
    main()
