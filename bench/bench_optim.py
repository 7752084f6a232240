"""Time one AdamATan2 step against torch.optim.AdamW(foreach=True) on a TRM-sized (about 7M) set of tensors.

    python bench/bench_optim.py [--device cpu|cuda] [--steps 20] [--dtype float32|bfloat16]
"""

import argparse
import statistics
import time

import torch

from hybrid.optim import AdamATan2


def trm_like_params(device: str, dtype: torch.dtype, hidden: int = 512, layers: int = 2, vocab: int = 12):
    """The dense tensors of a 2-layer, 512-wide TRM block stack plus its heads (SwiGLU, 4x expansion -> 1536)."""
    inter = 1536
    shapes = [(vocab, hidden), (vocab, hidden), (2, hidden), (2,)]
    for _ in range(layers):
        shapes += [(3 * hidden, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)]
    shapes += [(hidden, hidden)] * 1  # brings the total to about 7M, TRM's size (TRM paper)
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def timed_step(opt: torch.optim.Optimizer, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(opts: list[torch.optim.Optimizer], steps: int, device: str) -> list[list[float]]:
    """Alternate the optimisers step by step, so load from other processes on shared cores hits both alike."""
    for _ in range(3):  # warm-up: allocates state, first kernel launches
        for opt in opts:
            opt.step()
    times = [[] for _ in opts]
    for _ in range(steps):
        for opt, record in zip(opts, times):
            record.append(timed_step(opt, device))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    atan2_params = trm_like_params(args.device, dtype)
    adamw_params = trm_like_params(args.device, dtype)
    n = sum(p.numel() for p in atan2_params)
    atan2 = AdamATan2(atan2_params, lr=1e-4, weight_decay=0.1)
    adamw = torch.optim.AdamW(adamw_params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

    t_atan2, t_adamw = map(statistics.median, time_interleaved([atan2, adamw], args.steps, args.device))
    print(f"{n / 1e6:.2f}M params in {len(atan2_params)} tensors, {args.dtype} on {args.device}, "
          f"median of {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"AdamATan2          {t_atan2 * 1e3:8.2f} ms/step")
    print(f"AdamW(foreach)     {t_adamw * 1e3:8.2f} ms/step")
    print(f"ratio AdamATan2 / AdamW = {t_atan2 / t_adamw:.2f}")


if __name__ == "__main__":
    main()
