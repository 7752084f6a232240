"""Epoch time of hybrid training with and without the feature cache: 4x4 text Sudoku on the real all-MiniLM-L6-v2.

An epoch is one pass over the data with one ACT supervision step (forward, backward, optimiser step) per batch, as
the shared training loop does. Without the cache the frozen backbone runs at every step; with it the backbone ran once
per example when the cache was built (timed separately) and never again.

    python bench/bench_hybrid.py --examples 256 --batch-size 32 --epochs 2
"""

import argparse
import time

import torch
from torch.utils.data import DataLoader

from hybrid.data.feature_cache import FeatureCache
from hybrid.data.text_tasks import TextCollator, make_text_sudoku, tokenize_dataset
from hybrid.models.backbones import backbone_max_length, load_backbone
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE, HybridRecursiveConfig
from hybrid.models.modeling_hybrid import hybrid_model_for


def run_epochs(model, loader, epochs: int) -> list[float]:
    act_loss = model.act_loss().train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    carry, times = None, []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            if carry is None:
                carry = act_loss.initial_carry(batch)
            carry, loss, *_ = act_loss(carry, batch)
            optimizer.zero_grad()
            (loss / batch["input_ids"].shape[0]).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone, tokenizer = load_backbone(DEFAULT_BACKBONE)
    data = tokenize_dataset(
        make_text_sudoku(args.examples, n=4, num_blanks=6),
        tokenizer,
        level="token",
        max_length=backbone_max_length(backbone.config, tokenizer),
        single_token_words=True,
    )
    pad_to = max(len(ids) for ids in data["input_ids"])
    collate = TextCollator(tokenizer.pad_token_id, pad_to=pad_to)
    config = HybridRecursiveConfig(
        backbone_name_or_path=DEFAULT_BACKBONE, num_labels=4, hidden_size=128, num_heads=4, H_cycles=2, L_cycles=2
    )
    print(f"{args.examples} examples of {pad_to} tokens, batch {args.batch_size}, {torch.get_num_threads()} threads")

    model = hybrid_model_for(config, backbone=backbone)
    live = DataLoader(list(data), batch_size=args.batch_size, collate_fn=collate, drop_last=True)
    times = run_epochs(model, live, args.epochs)
    report("no cache", times, len(live) * args.batch_size)

    start = time.perf_counter()
    cache = FeatureCache(backbone, tokenizer, layers=config.backbone_layers, batch_size=args.batch_size)
    cached_data = cache.attach(data)
    build = time.perf_counter() - start
    print(f"cache build: {build:.2f} s ({cache.misses} examples)")
    torch.manual_seed(0)
    model = hybrid_model_for(config, backbone=backbone)
    cached = DataLoader(cached_data, batch_size=args.batch_size, collate_fn=collate, drop_last=True)
    times = run_epochs(model, cached, args.epochs)
    report("cache", times, len(cached) * args.batch_size)


def report(name: str, times: list[float], examples: int) -> None:
    for epoch, seconds in enumerate(times, 1):
        print(f"{name:>8} epoch {epoch}: {seconds:.2f} s, {examples / seconds:.1f} examples/s (supervision steps/s)")


if __name__ == "__main__":
    main()
