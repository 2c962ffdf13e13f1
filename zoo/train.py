"""Rebuild the zoo from the shipped corpus: tokenizer, target and draft.

    python zoo/train.py            # about 40 minutes on 2 CPU cores
    python zoo/train.py --only draft --draft-domain all --draft-layers 2 \
        --draft-width 256 --draft-name draft-all   # a draft alone, on the shipped tokenizer

1. A byte-level BPE tokenizer (4096 tokens) is trained on all training text.
2. The *target* (Llama architecture, ~17M parameters) is trained on all four
   domains.
3. The *draft* (one layer, ~2M parameters) is trained on one domain only
   (``--draft-domain``, default ``sql``): good there, poor elsewhere. That gap
   is what distillation and online adaptation close in later notebooks.

Everything is seeded; weights are saved in float16 (loaded as float32) so the
shipped zoo stays small. Training checkpoints every ``CHECKPOINT_EVERY`` steps
into ``<out>/checkpoints/`` and resumes from there when run again with the
same settings (the checkpoint is removed once the model is saved). Figures for the README come from
``python zoo/report.py`` afterwards.
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

from osd_lab.models import ZOO_DIR
from osd_lab.sampling import set_seed
from osd_lab.zoo.corpus import DOMAINS, load_corpus

EOS = "<|endoftext|>"

# Model shapes. The draft is one wide-enough layer: on a CPU its step time is
# mostly fixed per-layer overhead, so depth is what makes it slow.
TARGET_SHAPE = dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6,
                    intermediate_size=1024)
DRAFT_SHAPE = dict(hidden_size=192, num_hidden_layers=1, num_attention_heads=4,
                   intermediate_size=512)
CHECKPOINT_EVERY = 100  # steps


def draft_shape(layers: int, width: int) -> dict:
    """A draft's Llama shape: heads of 48 dimensions, an MLP 8/3 as wide (to
    a multiple of 64), as ``DRAFT_SHAPE`` (1 layer, width 192)."""
    if width % 48:
        raise ValueError(f"--draft-width must be a multiple of 48 (heads of 48), got {width}")
    return dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 48,
                intermediate_size=64 * round(width * 8 / 3 / 64))


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
             warmup=50, seed=0, desc="train", checkpoint=None):
    """Next-token training on random windows of ``stream``; returns losses.
    checkpoint: a file to save the run to every ``CHECKPOINT_EVERY`` steps and
    to resume from if it exists."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1,
                            betas=(0.9, 0.95))
    # linear warmup, then cosine decay to lr / 10
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warmup)
                                              * (0.55 + 0.45 * math.cos(math.pi * s / steps)))
    losses = []
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        losses = state["losses"]
        print(f"{desc}: resumed from {checkpoint} at step {len(losses)}")
    model.train()
    bar = tqdm(range(len(losses), steps), desc=desc, initial=len(losses), total=steps)
    for step in bar:
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
        if checkpoint is not None and (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(model=model.state_dict(), opt=opt.state_dict(),
                            sched=sched.state_dict(), gen=gen.get_state(), losses=losses),
                       checkpoint)
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
    parser.add_argument("--only", choices=("all", "draft"), default="all",
                        help="draft: train a draft alone, with the shipped tokenizer")
    parser.add_argument("--draft-domain", default="sql", choices=DOMAINS + ("all",))
    parser.add_argument("--draft-layers", type=int, default=DRAFT_SHAPE["num_hidden_layers"])
    parser.add_argument("--draft-width", type=int, default=DRAFT_SHAPE["hidden_size"])
    parser.add_argument("--draft-name", default="draft", help="its folder under --out")
    parser.add_argument("--target-steps", type=int, default=900)
    parser.add_argument("--draft-steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag, value in (("--draft-layers", args.draft_layers), ("--draft-steps", args.draft_steps),
                        ("--target-steps", args.target_steps)):
        if value < 1:
            parser.error(f"{flag} must be an integer >= 1, got {value}")
    try:
        shape = draft_shape(args.draft_layers, args.draft_width)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    set_seed(args.seed)
    corpus = load_corpus()
    t0 = time.time()

    docs = {d: list(corpus[d]["train"]) for d in DOMAINS}
    all_docs = [doc for d in DOMAINS for doc in docs[d]]
    if args.only == "draft":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(ZOO_DIR / "tokenizer")
    else:
        tokenizer = train_tokenizer(all_docs)
        tokenizer.save_pretrained(args.out / "tokenizer")
        print(f"tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.0f}s)")

    random.Random(args.seed).shuffle(all_docs)
    draft_docs = all_docs if args.draft_domain == "all" else docs[args.draft_domain]
    draft_stream = token_stream(tokenizer, draft_docs)
    print(f"tokens: draft ({args.draft_domain}) {len(draft_stream):,}")

    draft = make_model(tokenizer, shape)
    print(f"draft: {draft.num_parameters() / 1e6:.2f}M parameters "
          f"({args.draft_layers} layers, width {args.draft_width})")
    checkpoint = args.out / "checkpoints" / f"{args.draft_name}-seed{args.seed}.pt"
    train_lm(draft, draft_stream, args.draft_steps, lr=3e-3, seed=args.seed + 1,
             desc=f"draft ({args.draft_domain})", checkpoint=checkpoint)
    save(draft, args.out / args.draft_name)
    checkpoint.unlink(missing_ok=True)
    if args.only == "draft":
        print(f"done in {(time.time() - t0) / 60:.1f} min -> {args.out / args.draft_name}")
        return

    target_stream = token_stream(tokenizer, all_docs)
    print(f"tokens: target {len(target_stream):,}")

    target = make_model(tokenizer, TARGET_SHAPE)
    print(f"target: {target.num_parameters() / 1e6:.2f}M parameters")
    checkpoint = args.out / "checkpoints" / f"target-seed{args.seed}.pt"
    train_lm(target, target_stream, args.target_steps, seed=args.seed + 2,
             desc="target (all domains)", checkpoint=checkpoint)
    save(target, args.out / "target")
    checkpoint.unlink(missing_ok=True)
    print(f"done in {(time.time() - t0) / 60:.1f} min -> {args.out}")


if __name__ == "__main__":
    main()
