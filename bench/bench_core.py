"""Throughput and memory of the recursive core: training steps (forward over all cycles, loss, backward, both
optimisers) and eval steps, eager and with torch.compile.

    python bench/bench_core.py --config sudoku_mlp|tiny [--compile] [--batch 16] [--steps N] [--T 2 4 8] [--threads K]

FLOPs count matmuls only, as spec section 6 does: a training step is the no-grad blocks plus 3x the blocks with
gradient; the fraction of peak is against a large fp32 matmul timed in the same run. Memory of a training step is
measured for each T: it must not grow with T, because the T-1 no-grad cycles keep no activations. On CUDA it is the
allocator's peak; on CPU it is the bytes autograd saves for backward.

Reference (official code, fp32, 2 threads): Sudoku-MLP batch 16 about 3.5 examples/s; tiny batch 64 about 1000.
"""

import argparse
import time
from dataclasses import replace

import torch

from hybrid.core.losses import ACTLoss
from hybrid.core.layers import ReasoningModule, swiglu_intermediate_size
from hybrid.models.pure import PureConfig, build_pure_model
from hybrid.optim import AdamATan2, SparseSignSGD

CONFIGS = {
    "sudoku_mlp": PureConfig(
        seq_len=81, vocab_size=11, num_puzzle_identifiers=1, H_cycles=3, L_cycles=6, L_layers=2, hidden_size=512,
        num_heads=8, puzzle_emb_ndim=512, puzzle_emb_len=16, pos_encodings="none", mlp_t=True, forward_dtype="float32",
    ),
    "tiny": PureConfig(
        seq_len=16, vocab_size=6, num_puzzle_identifiers=8, H_cycles=2, L_cycles=2, L_layers=2, hidden_size=64,
        num_heads=2, puzzle_emb_ndim=64, puzzle_emb_len=2, pos_encodings="rope", forward_dtype="float32",
    ),
}
DEFAULT_BATCH = {"sudoku_mlp": 16, "tiny": 64}


def block_flops_per_token(cfg: PureConfig) -> int:
    """Forward matmul FLOPs of one block for one token (2 per multiply-accumulate)."""
    D, S = cfg.hidden_size, cfg.total_len
    mlp = 2 * 3 * D * swiglu_intermediate_size(D, cfg.expansion)
    if cfg.mlp_t:
        mix = 2 * 3 * D * swiglu_intermediate_size(S, cfg.expansion)
    else:
        mix = 2 * (D * 3 * D + D * D) + 2 * 2 * D * S
    return mix + mlp


def step_flops(cfg: PureConfig, batch: int, train: bool) -> float:
    """Spec 6: blocks per step T(n+1) x layers per network call; training adds 2x (backward) for the grad cycle."""
    layers = cfg.L_layers
    if cfg.family == "hrm":
        raise ValueError("bench_core counts TRM configs only")
    per_call = block_flops_per_token(cfg) * cfg.total_len * batch * layers
    calls = cfg.H_cycles * (cfg.L_cycles + 1)
    grad_calls = cfg.L_cycles + 1 if train else 0
    return per_call * (calls + 2 * grad_calls)


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def random_batch(cfg: PureConfig, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "inputs": torch.randint(1, cfg.vocab_size, (batch, cfg.seq_len), generator=g),
        "labels": torch.randint(1, cfg.vocab_size, (batch, cfg.seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (batch,), generator=g),
    }


class Trainer:
    def __init__(self, cfg: PureConfig, batch: int, compile_: bool):
        self.reasoner, act = build_pure_model(cfg, generator=torch.Generator().manual_seed(0))
        if compile_:
            for module in self.reasoner.modules():
                if isinstance(module, ReasoningModule):
                    module.compile(dynamic=False)
        self.head = ACTLoss(act, loss_type=cfg.loss_type)
        self.adam = AdamATan2(self.reasoner.parameters(), lr=1e-4, weight_decay=0.1)
        self.sparse = SparseSignSGD(self.reasoner.encoder.puzzle_emb, lr=1e-2, weight_decay=0.1)
        self.cfg, self.batch = cfg, batch
        self.data = random_batch(cfg, batch, torch.Generator().manual_seed(0))
        self.carry = self.head.initial_carry(self.data)

    def train_step(self):
        self.head.train()
        self.carry, loss, *_ = self.head(self.carry, self.data)
        (loss / self.batch).backward()
        self.sparse.step()
        self.adam.step()
        self.sparse.zero_grad()
        self.adam.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(self):
        self.head.eval()
        self.head(self.head.initial_carry(self.data), self.data)


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def train_step_memory(trainer: Trainer) -> float:
    """MiB: CUDA allocator peak, or on CPU the distinct tensors autograd saves for backward."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        trainer.train_step()
        return torch.cuda.max_memory_allocated() / 2**20
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.train_step()
    return sum(saved.values()) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--compile", action="store_true", help="also time with torch.compile on the block stacks")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--T", type=int, nargs="+", default=[2, 4, 8], help="H_cycles values for the memory check")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's); use 1 on a shared, busy machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    batch = args.batch or DEFAULT_BATCH[args.config]

    peak = matmul_peak()
    print(f"config={args.config} batch={batch} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"matmul peak (fp32 2048^3): {peak / 1e9:.1f} GFLOP/s\n")
    print(f"{'mode':<16}{'step s':>10}{'examples/s':>12}{'GFLOP/s':>10}{'of peak':>9}")
    for compiled in [False, True] if args.compile else [False]:
        trainer = Trainer(cfg, batch, compiled)
        for name, fn, train in (("train", trainer.train_step, True), ("eval", trainer.eval_step, False)):
            seconds = timed(fn, args.steps, args.warmup + (2 if compiled else 0))
            flops = step_flops(cfg, batch, train) / seconds
            label = f"{name}{' compiled' if compiled else ''}"
            print(f"{label:<16}{seconds:>10.3f}{batch / seconds:>12.1f}{flops / 1e9:>10.1f}{flops / peak:>9.1%}")

    what = "CUDA peak MiB" if torch.cuda.is_available() else "saved-for-backward MiB"
    print(f"\ntraining-step memory vs T ({what}):")
    for T in args.T:
        print(f"  T={T}: {train_step_memory(Trainer(replace(cfg, H_cycles=T), batch, False)):.1f}")


if __name__ == "__main__":
    main()
