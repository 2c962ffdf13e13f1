"""Train the zoo target's speculative streams and, as the baseline, Medusa heads.

    python zoo/train_streams.py      # streams: about 12 minutes on 2 idle CPU cores

Streams, as the paper trains them (Bhendawade et al. 2024): the model is
fine-tuned jointly with its streams. LoRA adapters of rank ``--base-rank`` on
the stream layers of the target are shared by the main stream and the
streams; the loss is the next-token cross-entropy of the main stream (so it
stays a good model) plus the future n-gram cross-entropy of the streams: at
position t, stream j predicts token t + j + 1, averaged over j and t. The
shipped streams run on the target with those adapters merged in
(``osd_lab.streaming.load_streaming_model``).

Medusa heads (``--only medusa``): the target stays frozen and the heads learn
the same future n-gram objective. Both see the zoo's training text (all four
domains) in random windows, seeded. Every ``--checkpoint-every`` steps the
trainable weights, the optimizer and the data generator are saved under
``--checkpoints``; a rerun with the same settings resumes from there (one
with other settings is refused: another ``--checkpoints`` folder starts
afresh). At the end the script prints the held-out perplexity of the main
stream and each guess's top-1 accuracy per domain. The weights are written in float16 to
``osd_lab/zoo/models/streams/``. Taught in ``notebooks/09_speculative_streaming``.
"""

import argparse
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from osd_lab.cache import new_cache
from osd_lab.medusa import MedusaHeads, MedusaModel
from osd_lab.metrics import perplexity
from osd_lab.models import ZOO_DIR
from osd_lab.sampling import set_seed
from osd_lab.streaming import (STREAMS_DIR, StreamingModel, Streams, load_zoo_target,
                               merged_base, save_weights, top1_accuracy, tune_base)
from osd_lab.zoo.corpus import DOMAINS, load_corpus
from train import token_stream  # zoo/train.py, beside this script


STEPS = dict(streams=900, medusa=150)  # what the shipped streams and heads were trained for
LR = dict(streams=3e-3, medusa=1e-2)


def future_ngram_loss(draft_logits: torch.Tensor, input_ids: torch.Tensor,
                      positions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of draft j (1-based) at position t against token t + j + 1.

    draft_logits: ``(B, P, gamma, V)`` at the P ``positions``; input_ids: ``(B, T)``.
    Targets past the end of the window are left out.
    """
    gamma = draft_logits.shape[2]
    target_at = positions[:, None] + torch.arange(2, gamma + 2)  # (P, gamma): t + j + 1
    padded = torch.cat([input_ids, input_ids.new_full((len(input_ids), gamma + 1), -100)], 1)
    labels = padded[:, target_at]  # (B, P, gamma), -100 past the end
    return torch.nn.functional.cross_entropy(draft_logits.flatten(0, 2), labels.flatten(),
                                             ignore_index=-100)


def train(model, trainable, stream, steps, batch_size, seq_len, positions_per_window, lr,
          seed, checkpoint, checkpoint_every, desc, main_loss=False, settings=None):
    """Train ``trainable`` (a part of ``model``) on random windows; resumable.
    ``main_loss``: add the main stream's next-token cross-entropy (the model
    itself is being fine-tuned). ``settings`` (a dict) is saved with each
    checkpoint; a checkpoint saved with other settings is refused, not resumed."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(trainable.parameters(), lr=lr, weight_decay=0.0)
    # cosine decay from lr to lr / 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.55 + 0.45 * math.cos(math.pi * s / steps))
    first_step, losses = 0, []
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("settings") != settings:
            raise SystemExit(f"{checkpoint} holds a run with other settings "
                             f"({state.get('settings')}, not {settings}): pass another "
                             "--checkpoints folder, or delete it to start over")
        trainable.load_state_dict(state["weights"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        first_step, losses = state["step"], state["losses"]
        print(f"{desc}: resuming at step {first_step} from {checkpoint}")
    trainable.train()
    bar = tqdm(range(first_step, steps), desc=desc, initial=first_step, total=steps)
    for step in bar:
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + seq_len] for s in starts])  # (B, T)
        # drafts at a few positions per window: the LM head over all would dominate
        positions = torch.randperm(seq_len - 2, generator=gen)[:positions_per_window].sort().values
        main_logits, draft_logits = model(batch, new_cache(model.base), streams_at=positions)
        loss = future_ngram_loss(draft_logits, batch, positions)  # (B, P, gamma, V) logits
        if main_loss:  # the main stream at t predicts t + 1
            loss = loss + torch.nn.functional.cross_entropy(main_logits[:, :-1].flatten(0, 1),
                                                            batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(weights=trainable.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(),
                            generator=gen.get_state(), step=step + 1, losses=losses,
                            settings=settings),
                       checkpoint)
    trainable.eval()
    return losses


def report(name, model, tokenizer, corpus, num_docs=8, length=128):
    """Held-out perplexity of the main stream and top-1 accuracy of each guess."""
    for domain in DOMAINS:
        docs = corpus[domain]["heldout"][:num_docs]
        ids = [tokenizer(text, return_tensors="pt").input_ids[0, :length] for text in docs]
        accuracy = top1_accuracy(model, ids)
        print(f"{name} {domain}: main-stream perplexity "
              f"{perplexity(model.base, tokenizer, docs):.2f}; top-1 accuracy main "
              f"{accuracy[0]:.3f}, " + ", ".join(f"+{j} {a:.3f}"
                                               for j, a in enumerate(accuracy[1:], 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--stream-layers", type=int, default=4)
    parser.add_argument("--base-rank", type=int, default=4,
                        help="LoRA rank of the target's stream layers, trained with the "
                             "streams (0: the target stays frozen)")
    parser.add_argument("--adapter-rank", type=int, default=0,
                        help="rank of adapters that only the streams use")
    parser.add_argument("--steps", type=int, default=None,
                        help="default: 900 for the streams, 150 for the Medusa heads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--positions", type=int, default=16,
                        help="positions per window whose drafts are trained")
    parser.add_argument("--lr", type=float, default=None,
                        help="default: 3e-3 for the streams, 1e-2 for the Medusa heads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("streams", "medusa"), default=None)
    parser.add_argument("--out", type=Path, default=STREAMS_DIR)
    parser.add_argument("--checkpoints", type=Path, default=Path("outputs/train_streams"))
    parser.add_argument("--checkpoint-every", type=int, default=25)
    args = parser.parse_args(argv)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    corpus = load_corpus()
    docs = [doc for d in DOMAINS for doc in corpus[d]["train"]]
    random.Random(args.seed).shuffle(docs)
    stream = token_stream(tokenizer, docs)
    print(f"{len(stream):,} training tokens; windows of {args.batch_size} x {args.seq_len}")
    for name in ("streams", "medusa"):
        if args.only not in (None, name):
            continue
        set_seed(args.seed)
        target = load_zoo_target("cpu")  # a fresh, untuned copy for each
        if name == "streams":
            streams = Streams(target, args.gamma, args.stream_layers, args.adapter_rank,
                              args.base_rank)
            if args.base_rank:
                tune_base(target, streams)  # its stream layers: W + B A, B A trained
            model, trainable = StreamingModel(target, streams), streams
        else:
            model = MedusaModel(target, MedusaHeads(target, args.gamma))
            trainable = model.heads
        steps = args.steps or STEPS[name]
        lr = args.lr or LR[name]
        print(f"{name}: {sum(p.numel() for p in trainable.parameters()):,} trainable "
              f"parameters, {steps} steps at lr {lr:g}")
        losses = train(model, trainable, stream, steps, args.batch_size, args.seq_len,
                       args.positions, lr, args.seed + 1, args.checkpoints / f"{name}.pt",
                       args.checkpoint_every, desc=name,
                       main_loss=name == "streams" and args.base_rank > 0,
                       settings=dict(vars(args), steps=steps, lr=lr, out=None, only=None,
                                     checkpoints=None, checkpoint_every=None))
        print(f"{name}: loss {sum(losses[:10]) / len(losses[:10]):.3f} (first 10 steps) -> "
              f"{sum(losses[-10:]) / len(losses[-10:]):.3f} (last 10)")
        untuned = load_zoo_target("cpu")
        save_weights(trainable, args.out, untuned)
        if name == "streams" and args.base_rank:  # what decoding runs: the merged model
            model = StreamingModel(merged_base(untuned, streams), streams)
        report(name, model.eval(), tokenizer, corpus)
    target = load_zoo_target("cpu")
    print("zoo target: held-out perplexity " + ", ".join(
        f"{d} {perplexity(target, tokenizer, corpus[d]['heldout'][:8]):.2f}" for d in DOMAINS))


if __name__ == "__main__":
    main()
