"""Hybrid training on CLUTRR-length stories, real all-MiniLM-L6-v2 layers [0, -1]: feature memory and epoch time of
three set-ups measured side by side in one run.

- recompute: no cache, the frozen backbone runs at every step; batches padded to the longest text of the task (as
  `recipes/train_hybrid.py` pads them for its persistent ACT carry), every column computed (before padding cuts).
- cached float32: the previous cache: float32 features held in memory, same fixed padding, `ShuffledBatches`, every
  column computed.
- cached float16 + bucketed: features in float16 in memory-mapped Arrow parts, `BucketedBatches`, each batch padded
  to its own longest story.
- training loop: what `recipes/train_hybrid.py` runs now: the float16 cache, fixed padding, `ShuffledBatches` and the
  persistent carry, with the columns that are padding in every slot cut before the head (`TextReasoner`).

An epoch is one supervision step (forward, backward, optimiser step) on each of `examples // batch_size` batches.
The two fixed-shape set-ups advance one persistent ACT carry, as the training loop does; bucketed batches change
shape, so each starts its own carry (the same work per step). Reported: the median epoch and its spread, memory per
example, and how far float16 features move the head's logits (fresh head, same weights).

    python bench/bench_hybrid.py --examples 256 --batch-size 32 --epochs 3
"""

import argparse
import os
import statistics
import time

import torch

from hybrid.data.clutrr import default_data_dir
from hybrid.data.feature_cache import FeatureCache
from hybrid.data.streams import BucketedBatches, ShuffledBatches
from hybrid.data.tasks import HybridTaskConfig, make_task
from hybrid.data.text_tasks import TextCollator, tokenize_dataset
from hybrid.models.backbones import backbone_max_length, load_backbone
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE, HybridRecursiveConfig
from hybrid.models.modeling_hybrid import hybrid_model_for

LAYERS = [0, -1]


def new_model(backbone, num_labels: int):
    torch.manual_seed(0)
    config = HybridRecursiveConfig(
        backbone_name_or_path=DEFAULT_BACKBONE, backbone_layers=LAYERS, num_labels=num_labels, task="sequence",
        hidden_size=128, num_heads=4, H_cycles=2, L_cycles=2, halt_max_steps=4,
    )
    return hybrid_model_for(config, backbone=backbone)


def time_epochs(model, stream, epochs: int, *, persistent: bool, cut: bool) -> list[float]:
    model.reasoner.cut_padding = cut
    act_loss = model.act_loss(generator=torch.Generator().manual_seed(0)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    carry, times = None, []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in stream:
            if carry is None or not persistent:
                carry = act_loss.initial_carry(batch)
            carry, loss, *_ = act_loss(carry, batch)
            optimizer.zero_grad()
            (loss / batch["input_ids"].shape[0]).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256, help="training stories timed (a seeded random subset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per cached set-up (recompute runs 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(default_data_dir()), help="CLUTRR folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backbone, tokenizer = load_backbone(DEFAULT_BACKBONE)
    backbone.requires_grad_(False)
    task = make_task(HybridTaskConfig(name="clutrr", data_dir=args.data))
    limit = backbone_max_length(backbone.config, tokenizer)
    sets = {"train": task.train.shuffle(seed=0).select(range(args.examples)), **task.tests}
    tokenized = {name: tokenize_dataset(d, tokenizer, level="sequence", max_length=limit) for name, d in sets.items()}
    pad_to = max(len(ids) for d in tokenized.values() for ids in d["input_ids"])
    train = tokenized["train"]
    lengths = [len(ids) for ids in train["input_ids"]]
    print(f"load average {os.getloadavg()}; {torch.get_num_threads()} threads; {len(train)} CLUTRR training stories of "
          f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), fixed padding to {pad_to} "
          f"(the task's longest), batch {args.batch_size}, layers {LAYERS}")

    start = time.perf_counter()
    half_cache = FeatureCache(backbone, tokenizer, layers=LAYERS, batch_size=args.batch_size)
    half = half_cache.attach(train)
    print(f"float16 cache build: {time.perf_counter() - start:.1f} s")
    full_cache = FeatureCache(backbone, tokenizer, layers=LAYERS, batch_size=args.batch_size, dtype="float32",
                              progress=False)
    full = full_cache.attach(train)
    full.values = [v.clone() for v in full.values]  # the previous cache: float32 tensors held in memory
    per32, per16 = full_cache.nbytes() / len(train), half_cache.nbytes() / len(train)
    print(f"memory per example: float32 {per32 / 1e6:.3f} MB held in memory, float16 {per16 / 1e6:.3f} MB on disk, "
          f"memory-mapped ({per32 / per16:.2f}x less)")

    model = new_model(backbone, task.num_labels).eval()
    fixed = TextCollator(tokenizer.pad_token_id, pad_to=pad_to)
    own = TextCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        rows = range(args.batch_size)
        reference = model(**{k: v for k, v in fixed([full[i] for i in rows]).items() if k != "labels"}).logits
        cast = model(**{k: v for k, v in own([half[i] for i in rows]).items() if k != "labels"}).logits
    print(f"float16 features + own-length padding vs float32 + fixed padding: logits max |diff| "
          f"{(cast - reference).abs().max().item():.2e} (logit scale {reference.abs().max().item():.2f}), "
          f"same argmax on {(cast.argmax(-1) == reference.argmax(-1)).float().mean().item():.0%} of {len(rows)}")

    stripped = train.remove_columns([c for c in train.column_names if c not in ("input_ids", "label")])
    setups = [  # name, data, collate, bucketed, epochs, padding columns cut
        ("recompute", list(stripped), fixed, False, 2, False),
        ("cached float32", full, fixed, False, args.epochs, False),
        ("cached float16 + bucketed", half, own, True, args.epochs, True),
        ("training loop", half, fixed, False, args.epochs, True),
    ]
    medians = {}
    for name, data, collate, bucketed, epochs, cut in setups:
        if bucketed:
            stream = BucketedBatches(data, collate, lengths=lengths, global_batch_size=args.batch_size, seed=0)
        else:
            stream = ShuffledBatches(data, collate, global_batch_size=args.batch_size, seed=0)
        times = time_epochs(new_model(backbone, task.num_labels), stream, epochs, persistent=not bucketed, cut=cut)
        medians[name] = statistics.median(times)
        print(f"{name:>26}: median epoch {medians[name]:.2f} s (min {min(times):.2f}, max {max(times):.2f}, "
              f"{epochs} epochs of {len(stream)} steps)")
    for name in ("cached float16 + bucketed", "training loop"):
        new = medians[name]
        print(f"speed-up of {name}: {medians['cached float32'] / new:.1f}x the float32 cached epoch, "
              f"{medians['recompute'] / new:.1f}x recomputing")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
