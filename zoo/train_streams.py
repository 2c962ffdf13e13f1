"""Train the zoo target's speculative streams and, as the baseline, Medusa heads.

    python zoo/train_streams.py      # 40 minutes on 2 busy CPU cores

(150 steps each: streams 22 minutes, Medusa heads 17, on 2 cores shared with
other jobs; one step of the streams is about 1.5 s on idle cores.)

The target stays frozen. Both drafters learn the future n-gram objective on
the zoo's training text (all four domains): at position t, stream (head) j
predicts token t + j + 1, cross-entropy averaged over j and t. They see the
same windows for the same number of steps, seeded. Every ``--checkpoint-every``
steps the trainable weights, the optimizer and the data generator are saved
under ``--checkpoints``; a rerun resumes from there. The weights are written
in float16 to ``osd_lab/zoo/models/streams/``. Taught in
``notebooks/09_speculative_streaming``.
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
from osd_lab.models import ZOO_DIR
from osd_lab.sampling import set_seed
from osd_lab.streaming import (STREAMS_DIR, StreamingModel, Streams, load_zoo_target,
                               save_weights)
from osd_lab.zoo.corpus import DOMAINS, load_corpus
from train import token_stream  # zoo/train.py, beside this script


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
          seed, checkpoint, checkpoint_every, desc):
    """Train ``trainable`` (a part of ``model``) on random windows; resumable."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(trainable.parameters(), lr=lr, weight_decay=0.0)
    # cosine decay from lr to lr / 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.55 + 0.45 * math.cos(math.pi * s / steps))
    first_step, losses = 0, []
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
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
        _, draft_logits = model(batch, new_cache(model.base), streams_at=positions)
        loss = future_ngram_loss(draft_logits, batch, positions)  # (B, P, gamma, V) logits
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
                            generator=gen.get_state(), step=step + 1, losses=losses),
                       checkpoint)
    trainable.eval()
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--stream-layers", type=int, default=2)
    parser.add_argument("--adapter-rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--positions", type=int, default=16,
                        help="positions per window whose drafts are trained")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("streams", "medusa"), default=None)
    parser.add_argument("--out", type=Path, default=STREAMS_DIR)
    parser.add_argument("--checkpoints", type=Path, default=Path("outputs/train_streams"))
    parser.add_argument("--checkpoint-every", type=int, default=25)
    args = parser.parse_args(argv)
    set_seed(args.seed)
    target = load_zoo_target("cpu")
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    docs = [doc for d in DOMAINS for doc in load_corpus()[d]["train"]]
    random.Random(args.seed).shuffle(docs)
    stream = token_stream(tokenizer, docs)
    print(f"{len(stream):,} training tokens; {args.steps} steps of "
          f"{args.batch_size} x {args.seq_len}")
    drafters = {
        "streams": lambda: StreamingModel(target, Streams(
            target, args.gamma, args.stream_layers, args.adapter_rank)),
        "medusa": lambda: MedusaModel(target, MedusaHeads(target, args.gamma)),
    }
    for name, make in drafters.items():
        if args.only not in (None, name):
            continue
        set_seed(args.seed)
        model = make()
        trainable = model.streams if name == "streams" else model.heads
        print(f"{name}: {model.extra_parameters():,} trainable parameters")
        losses = train(model, trainable, stream, args.steps, args.batch_size, args.seq_len,
                       args.positions, args.lr, args.seed + 1, args.checkpoints / f"{name}.pt",
                       args.checkpoint_every, desc=name)
        print(f"{name}: loss {sum(losses[:10]) / len(losses[:10]):.3f} (first 10 steps) -> "
              f"{sum(losses[-10:]) / len(losses[-10:]):.3f} (last 10)")
        save_weights(trainable, args.out)


if __name__ == "__main__":
    main()
