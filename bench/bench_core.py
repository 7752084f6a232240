"""Throughput of the recursive core on the paper configs: training steps (forward over all cycles, loss, backward, both
optimisers, EMA where the config has it) and eval steps, in float32 and bfloat16, against the matmul peak of the same
dtype timed in the same run.

    python bench/bench_core.py --config sudoku_mlp --dtype float32 bfloat16 --threads 1 2 --json-out bench/results.jsonl
    python bench/bench_core.py --config tiny --threads 1 2 --compile none blocks step
    python bench/bench_core.py --config hrm_sudoku --dtype bfloat16 --device cuda --batch 768

Every variant (dtype x threads x compile mode x train/eval) runs round-robin, one step each in turn, so load from
other processes on a shared machine hits all of them alike; each reports the median step time with its quartiles and
extremes (a mean would be skewed by one stalled step). The configs are those of configs/pure/*.yaml with random data
of the datasets' sizes; `tiny` is the launch-bound TRM of issue 14 (D=64, T=2, n=2, S=16+2).

FLOPs count the block matmuls only, as the papers' budgets do: the no-grad forward layers plus 3x the layers with
gradient (forward + backward), plus HRM's extra no-grad forward for the Q-continue target in training. The fraction
of peak is against a large square matmul of the same dtype at the same thread count, timed round-robin with the
steps in this run.

--memory-T 2 4 8 also prints the memory of a training step for each T (H_cycles), which must not grow with T since the
T-1 no-grad cycles keep no activations: the CUDA allocator's peak, or on CPU the bytes autograd saves for backward.
--profile prints the top ops of one training step per dtype (torch.profiler, self time), before the timing.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hybrid.config import load_config
from hybrid.core.layers import ReasoningModule, swiglu_intermediate_size
from hybrid.core.losses import ACTLoss
from hybrid.models.pure import PureConfig, build_pure_model
from hybrid.optim import EMA, AdamATan2, SparseSignSGD
from hybrid.train.config import PureTrainConfig

REPO = Path(__file__).resolve().parents[1]
SUDOKU = {"seq_len": 81, "vocab_size": 11, "num_puzzle_identifiers": 1}
MAZE = {"seq_len": 900, "vocab_size": 6, "num_puzzle_identifiers": 1}
# bench name -> (paper config, dataset sizes, default batch on CPU)
PAPER = {
    "sudoku_mlp": ("trm_sudoku_mlp.yaml", SUDOKU, 16),
    "sudoku_att": ("trm_sudoku_att.yaml", SUDOKU, 16),
    "hrm_sudoku": ("hrm_sudoku.yaml", SUDOKU, 16),
    "maze": ("trm_maze.yaml", MAZE, 1),
    "hrm_maze": ("hrm_maze.yaml", MAZE, 1),
}
TINY = PureConfig(
    seq_len=16, vocab_size=6, num_puzzle_identifiers=8, H_cycles=2, L_cycles=2, L_layers=2, hidden_size=64,
    num_heads=2, puzzle_emb_ndim=64, puzzle_emb_len=2, pos_encodings="rope", forward_dtype="float32",
)
COMPILE_MODES = ("none", "blocks", "step")


def bench_config(name: str) -> tuple[PureConfig, bool, int]:
    """(model config, whether training keeps an EMA, default batch)."""
    if name == "tiny":
        return TINY, False, 64
    yaml, sizes, batch = PAPER[name]
    cfg = load_config(PureTrainConfig, REPO / "configs" / "pure" / yaml)
    return cfg.arch_config(sizes), cfg.training.ema, batch


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
    """Block-layer calls of one supervision step (TRM: T(n+1) network calls, the last n+1 with gradient; HRM: Tn L
    calls and T H calls, the last of each with gradient), times the FLOPs of one layer over the batch."""
    T, n = cfg.H_cycles, cfg.L_cycles
    if cfg.family == "hrm":
        forward = T * n * cfg.L_layers + T * cfg.H_layers
        with_grad = cfg.L_layers + cfg.H_layers
    else:
        forward = T * (n + 1) * cfg.L_layers
        with_grad = (n + 1) * cfg.L_layers
    layers = forward
    if train:
        layers += 2 * with_grad + (forward if not cfg.no_ACT_continue else 0)
    return layers * block_flops_per_token(cfg) * cfg.total_len * batch


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul(dtype: torch.dtype, device: str) -> tuple[object, float]:
    """A square matmul to time as the peak (one call, its FLOPs); timed round-robin with the steps, so its median sees
    the same load as theirs."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * n**3


def random_batch(cfg: PureConfig, batch: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    data = {
        "inputs": torch.randint(1, cfg.vocab_size, (batch, cfg.seq_len), generator=g),
        "labels": torch.randint(1, cfg.vocab_size, (batch, cfg.seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (batch,), generator=g),
    }
    return {k: v.to(device) for k, v in data.items()}


class StepRunner:
    """The training loop's step (hybrid.train.loop.Trainer.train_step) without the loop around it."""

    def __init__(self, cfg: PureConfig, batch: int, *, ema: bool, compile_mode: str, device: str):
        self.reasoner, act = build_pure_model(cfg, generator=torch.Generator().manual_seed(0))
        self.reasoner.to(device)
        self.head = ACTLoss(act, loss_type=cfg.loss_type)
        if compile_mode == "blocks":
            for module in self.reasoner.modules():
                if isinstance(module, ReasoningModule):
                    module.compile(dynamic=False)
        self.forward = torch.compile(self.head, dynamic=False) if compile_mode == "step" else self.head
        self.adam = AdamATan2(self.reasoner.parameters(), lr=1e-4, weight_decay=0.1)
        self.sparse = (
            SparseSignSGD(self.reasoner.encoder.puzzle_emb, lr=1e-2, weight_decay=0.1) if cfg.puzzle_emb_ndim > 0 else None
        )
        self.ema = EMA(self.reasoner) if ema else None
        self.batch, self.device = batch, device
        self.data = random_batch(cfg, batch, device)
        self.carry = self.head.initial_carry(self.data)

    def train_step(self):
        self.head.train()
        self.carry, loss, metrics, *_ = self.forward(self.carry, self.data)
        (loss / self.batch).backward()
        # The loop reads the reduced metrics back once per step (its non-finite check).
        torch.stack([v.double() for v in metrics.values()] + [loss.detach().double()]).tolist()
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.reasoner)

    @torch.no_grad()
    def eval_step(self):
        self.head.eval()
        self.forward(self.head.initial_carry(self.data), self.data)


@dataclass
class Variant:
    dtype: str
    threads: int
    compile_mode: str
    mode: str  # train | eval
    run: object
    flops: float
    times: list


def train_step_memory(runner: StepRunner) -> float:
    """MiB: CUDA allocator peak, or on CPU the distinct storages autograd saves for backward."""
    if runner.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        runner.train_step()
        return torch.cuda.max_memory_allocated() / 2**20
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        runner.train_step()
    return sum(saved.values()) / 2**20


def profile_step(runner: StepRunner, rows: int = 15):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.train_step()
    key = "self_cuda_time_total" if runner.device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, med, q3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", *PAPER], required=True)
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="forward dtype(s); the paper configs train in bfloat16")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to compare in this process (default: torch's); CPU only")
    parser.add_argument("--compile", nargs="+", default=["none"], choices=COMPILE_MODES,
                        help="none; blocks: torch.compile each block stack; step: torch.compile the whole "
                             "supervision step's forward (ACT + reasoner + loss)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (compiled variants: +2)")
    parser.add_argument("--no-eval", action="store_true", help="time training steps only")
    parser.add_argument("--memory-T", type=int, nargs="*", default=[], help="H_cycles values for the memory check")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one training step")
    parser.add_argument("--json-out", default=None, help="append one JSON line with every figure of this run")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    threads = [0] if args.device == "cuda" else (args.threads or [torch.get_num_threads()])

    base, ema, default_batch = bench_config(args.config)
    batch = args.batch or default_batch
    load = os.getloadavg()
    print(f"config={args.config} batch={batch} device={args.device} torch={torch.__version__} "
          f"cpu_capability={torch.backends.cpu.get_cpu_capability()} load average={load[0]:.2f} {load[1]:.2f}")

    peaks = {}
    for dtype, k in itertools.product(args.dtype, threads):
        run, flops = matmul(getattr(torch, dtype), args.device)
        peaks[dtype, k] = Variant(dtype, k, "-", "matmul", run, flops, [])

    variants = []
    for dtype, compile_mode in itertools.product(args.dtype, args.compile):
        cfg = replace(base, forward_dtype=dtype)
        runner = StepRunner(cfg, batch, ema=ema, compile_mode=compile_mode, device=args.device)
        for k, mode in itertools.product(threads, ["train"] + ([] if args.no_eval else ["eval"])):
            fn = runner.train_step if mode == "train" else runner.eval_step
            variants.append(Variant(dtype, k, compile_mode, mode, fn, step_flops(cfg, batch, mode == "train"), []))
        if args.profile and compile_mode == args.compile[0]:
            print(f"\nprofile of one {dtype} training step (compile={compile_mode}, {torch.get_num_threads()} threads):")
            profile_step(runner)

    timed = list(peaks.values()) + variants
    for v in timed:  # warm-up, including compilation
        if v.threads:
            torch.set_num_threads(v.threads)
        for _ in range(args.warmup + (2 if v.compile_mode not in ("none", "-") else 0)):
            v.run()
    for _ in range(args.steps):
        for v in timed:
            if v.threads:
                torch.set_num_threads(v.threads)
            synchronize(args.device)
            start = time.perf_counter()
            v.run()
            synchronize(args.device)
            v.times.append(time.perf_counter() - start)
    peak = {key: v.flops / statistics.median(v.times) for key, v in peaks.items()}
    for (dtype, k), flops in peak.items():
        print(f"matmul peak {dtype:<9} threads={k}: {flops / 1e9:8.1f} GFLOP/s (median of {args.steps})")

    rows = []
    print(f"\n{'dtype':<9}{'thr':>4} {'compile':<8}{'mode':<6}{'median s':>10}{'  quartiles s':<19}{'min-max s':<17}"
          f"{'ex/s':>9}{'GFLOP/s':>9}{'of peak':>8}")
    for v in variants:
        q1, med, q3 = quartiles(v.times)
        flops = v.flops / med
        row = dict(dtype=v.dtype, threads=v.threads, compile=v.compile_mode, mode=v.mode, median_s=med, q1_s=q1,
                   q3_s=q3, min_s=min(v.times), max_s=max(v.times), examples_per_s=batch / med, flops_per_s=flops,
                   fraction_of_peak=flops / peak[v.dtype, v.threads])
        rows.append(row)
        print(f"{v.dtype:<9}{v.threads:>4} {v.compile_mode:<8}{v.mode:<6}{med:>10.4f}  {q1:>8.4f}-{q3:<8.4f}"
              f"{min(v.times):>8.4f}-{max(v.times):<8.4f}{batch / med:>9.1f}{flops / 1e9:>9.1f}"
              f"{flops / peak[v.dtype, v.threads]:>8.1%}")

    memory = {}
    if args.memory_T:
        what = "CUDA peak MiB" if args.device == "cuda" else "saved-for-backward MiB"
        print(f"\ntraining-step memory vs T ({what}, {args.dtype[0]}):")
        for T in args.memory_T:
            cfg = replace(base, forward_dtype=args.dtype[0], H_cycles=T)
            memory[T] = train_step_memory(StepRunner(cfg, batch, ema=ema, compile_mode="none", device=args.device))
            print(f"  T={T}: {memory[T]:.1f}")

    if args.json_out:
        record = dict(
            time=time.strftime("%Y-%m-%dT%H:%M:%S"), commit=git_commit(), config=args.config, batch=batch,
            device=torch.cuda.get_device_name() if args.device == "cuda" else args.device, torch=torch.__version__,
            cpu_capability=torch.backends.cpu.get_cpu_capability(), loadavg_start=load, loadavg_end=os.getloadavg(),
            steps=args.steps, peaks={f"{d}/{k}": p for (d, k), p in peak.items()}, rows=rows,
            memory_mib_by_T=memory,
        )
        with open(args.json_out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
