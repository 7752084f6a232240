"""Research over depth: sweeps of supervision steps and inner recursion counts, and adaptive halting at inference.

Both work on any reasoner driven by `ACTLossHead` (pure grid models and hybrid HF models alike):

- `depth_sweep` runs ONE rollout of max(steps) supervision steps per batch and per (T, n) setting, reading metrics
  after every requested step. Metrics at a step equal those of `hybrid.eval.loop.evaluate` run with that many steps
  (the latents do not depend on the step limit at evaluation), plus the halting head's calibration and the compute.
- `adaptive_evaluate` lets each example leave the batch once the halting head says so (q_halt > threshold) or once
  its prediction has not changed for `patience` steps; the batch really shrinks, so halted examples cost nothing.
  With several processes every rank keeps stepping until all ranks are done, with exactly one all-reduce per step.

Compute is counted per example: network calls of the recursive core (steps x T x (n + 1) for TRM, HRM and single-z)
and the matmul FLOPs of those calls, measured with torch's FLOP counter on the core (attention included).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from hybrid.core.act import ACTCarry, Batch
from hybrid.core.losses import IGNORE_LABEL_ID, ACTLossHead, act_metrics, correctness
from hybrid.core.recursion import HRMCore, SingleZCore, TRMCore
from hybrid.eval.loop import normalise, reduce_sums

CALIBRATION_BINS = 10
CORES = (TRMCore, HRMCore, SingleZCore)


# --- loading a model and its evaluation data ------------------------------------------------------------------------


@dataclass
class ResearchModel:
    """A trained model ready for the research tools, whichever mode it was trained in."""

    loss_head: ACTLossHead
    kind: Literal["pure", "hybrid"]
    trained_steps: int  # halt_max_steps it was trained with
    source: Path
    backbone: str | None = None  # hybrid: the backbone name or folder (its tokenizer decodes traces)
    pad_token_id: int | None = None  # hybrid: the id that pads text batches


def load_research_model(path: str | Path) -> ResearchModel:
    """A `train_pure.py` run (or one of its checkpoint folders), or a folder written by a hybrid model's
    `save_pretrained` (recognised by its config.json of model_type "hybrid_recursive")."""
    path = Path(path)
    config_file = path / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != "hybrid_recursive":
            raise ValueError(f"{config_file}: model_type {model_type!r} is not 'hybrid_recursive'")
        from hybrid.models.configuration_hybrid import HybridRecursiveConfig
        from hybrid.models.modeling_hybrid import MODEL_FOR_TASK

        config = HybridRecursiveConfig.from_pretrained(path)
        model = MODEL_FOR_TASK[config.task].from_pretrained(path, config=config)
        pad = getattr(model.backbone.config, "pad_token_id", None)
        loss_head = model.act_loss_head().eval()
        return ResearchModel(loss_head, "hybrid", config.halt_max_steps, path, config.backbone_name_or_path, pad)

    from hybrid.train.restore import load_pure_run

    run = load_pure_run(path)
    loss_head = ACTLossHead(run.act, loss_type=run.arch.loss_type).eval()
    return ResearchModel(loss_head, "pure", run.arch.halt_max_steps, run.checkpoint)


def research_batches(
    model: ResearchModel,
    data: str | Path,
    *,
    global_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "test",
) -> Iterator[tuple[Batch, Tensor]]:
    """(batch, real-row mask) pairs of one rank. Pure: a `build_data.py` folder (its `split`). Hybrid: a tokenized
    `datasets` folder (`save_to_disk`, a Dataset or a DatasetDict holding `split`) with `input_ids` and `labels`
    (token level) or `label` (sequence level), padded to the longest text of each batch."""
    data = Path(data)
    if model.kind == "pure":
        from hybrid.data.format import read_split
        from hybrid.data.sampler import eval_batches

        yield from eval_batches(
            read_split(data, split), global_batch_size=global_batch_size, rank=rank, world_size=world_size
        )
        return

    from datasets import DatasetDict, load_from_disk

    from hybrid.data.text_tasks import TextCollator

    if global_batch_size <= 0 or global_batch_size % world_size:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of world_size {world_size}"
        )
    dataset = load_from_disk(str(data))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{data}: no split {split!r}; it has {sorted(dataset)}")
        dataset = dataset[split]
    hf_model = model.loss_head.act.reasoner.model
    label_column = "labels" if hf_model.task == "token" else "label"
    missing = {"input_ids", label_column} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"{data}: missing columns {sorted(missing)} (it has {dataset.column_names}); save a dataset tokenized with "
            "hybrid.data.text_tasks.tokenize_dataset"
        )
    if model.pad_token_id is None:
        raise ValueError(f"{model.source}: the backbone config has no pad_token_id to pad text batches with")
    collate = TextCollator(model.pad_token_id)
    local = global_batch_size // world_size
    columns = ["input_ids", label_column]
    for start in range(0, len(dataset), global_batch_size):
        lo = min(start + rank * local, len(dataset))
        hi = min(lo + local, start + global_batch_size, len(dataset))
        if hi > lo:
            rows = dataset.select(range(lo, hi)).select_columns(columns)
            batch = collate(list(rows))
            if hf_model.backbone_is_frozen:
                # Once per batch, not at each of up to hundreds of supervision steps: a frozen backbone's features
                # never change (the same reuse as training's feature cache).
                with torch.no_grad():
                    batch["features"] = hf_model.backbone_features(batch["input_ids"], batch["attention_mask"])
            yield batch, torch.ones(hi - lo, dtype=torch.bool)


# --- compute ---------------------------------------------------------------------------------------------------------


def recursive_core(module: nn.Module) -> nn.Module | None:
    """The recursive core (TRM, HRM or single-z) inside `module`; None for heads without one (hybrid baselines)."""
    cores = [m for m in module.modules() if isinstance(m, CORES)]
    if len(cores) > 1:
        raise ValueError(f"expected at most one recursive core (TRM/HRM/single-z) in the model, found {len(cores)}")
    return cores[0] if cores else None


def cycle_counts(
    loss_head: ACTLossHead, H_cycles: int | None = None, L_cycles: int | None = None
) -> tuple[int | None, int | None]:
    """(T, n) a step runs with: the overrides, else the core's own; (None, None) for a model without a core."""
    core = recursive_core(loss_head)
    if core is None:
        if H_cycles is not None or L_cycles is not None:
            raise ValueError("the model has no recursive core, so H_cycles / L_cycles cannot be overridden")
        return None, None
    T = core.H_cycles if H_cycles is None else H_cycles
    n = core.L_cycles if L_cycles is None else L_cycles
    if T < 1 or n < 1:
        raise ValueError(f"H_cycles (T) and L_cycles (n) must be >= 1, got T={T}, n={n}")
    return T, n


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # torch's counter has no formula for the fused CPU kernel: QK^T and AV, 2 FLOPs per multiply-add each.
    batch, heads, q_len, head_dim = query
    return 4 * batch * heads * q_len * key[-2] * head_dim


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


class CoreFlops:
    """Context manager counting the matmul FLOPs spent inside the recursive core while it is active (none without
    a core)."""

    def __init__(self, loss_head: ACTLossHead):
        self.core = recursive_core(loss_head)
        self.counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
        self.flops = 0

    def __enter__(self) -> Self:
        core = self.core
        self._hooks = (
            []
            if core is None
            else [core.register_forward_pre_hook(self._start), core.register_forward_hook(self._stop)]
        )
        return self

    def _start(self, *_) -> None:  # a pre-hook's return value would replace the core's arguments
        self.counter.__enter__()

    def _stop(self, *_) -> None:
        self.counter.__exit__(None, None, None)
        self.flops += self.counter.get_total_flops()

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()


# --- metrics of one step -----------------------------------------------------------------------------------------------


def step_sums(outputs: dict[str, Tensor], labels: Tensor, steps: Tensor, rows: Tensor) -> dict[str, Tensor]:
    """Metric sums (as `act_metrics`) over `rows` (bool [B]) plus the halting head's calibration: Brier score and the
    per-bin confidence / correctness sums of sigmoid(q_halt) that make the expected calibration error."""
    logits, q_halt = outputs["logits"], outputs["q_halt_logits"]
    sums, seq_correct = act_metrics(logits, labels, q_halt, rows, steps)
    _, _, counts = correctness(logits, labels)
    valid = rows & (counts > 0)
    confidence = torch.sigmoid(q_halt.double())
    target = seq_correct.double()
    sums["brier"] = torch.where(valid, (confidence - target) ** 2, 0).sum()
    bins = (confidence * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
    for b in range(CALIBRATION_BINS):
        in_bin = valid & (bins == b)
        sums[f"calib_{b}_confidence"] = torch.where(in_bin, confidence, 0).sum()
        sums[f"calib_{b}_correct"] = torch.where(in_bin, target, 0).sum()
    return sums


def finish_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Reduced sums -> metrics over `count` (as `evaluate`), with `ece` from the calibration bins."""
    count = max(totals.get("count", 0.0), 1.0)
    bins = {k: v for k, v in totals.items() if k.startswith("calib_")}
    result = normalise({k: v for k, v in totals.items() if k not in bins})
    result["ece"] = (
        sum(abs(bins[f"calib_{b}_confidence"] - bins[f"calib_{b}_correct"]) for b in range(CALIBRATION_BINS)) / count
    )
    return result


def _add(total: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
    for key, value in sums.items():
        total[key] = total.get(key, torch.zeros((), dtype=torch.float64)) + value.detach().double().cpu()


def _take(batches, max_examples: int | None, world_size: int) -> Iterator[tuple[Batch, Tensor]]:
    """Batches until `max_examples` (counted over all ranks, as `evaluate` does) have been seen."""
    seen = 0
    for batch, mask in batches:
        if max_examples is not None and seen >= max_examples:
            return
        seen += int(mask.sum()) * world_size
        yield batch, mask


# --- the depth sweep -------------------------------------------------------------------------------------------------


@torch.no_grad()
def depth_sweep(
    loss_head: ACTLossHead,
    batches: Iterable[tuple[Batch, Tensor]],
    *,
    steps: Sequence[int],
    cycles: Sequence[tuple[int | None, int | None]] = ((None, None),),
    device: torch.device | str = "cpu",
    max_examples: int | None = None,
    world_size: int = 1,
) -> list[dict[str, float]]:
    """One row per ((T, n), step): exact_accuracy, accuracy (token), q_halt_accuracy, brier, ece, losses, count,
    net_calls and flops per example. The batches are held in memory and replayed for every (T, n)."""
    steps = sorted(set(steps))
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive supervision step counts, got {steps}")
    batches = list(_take(batches, max_examples, world_size))
    rows = []
    for H_cycles, L_cycles in cycles:
        T, n = cycle_counts(loss_head, H_cycles, L_cycles)
        kwargs = {k: v for k, v in (("H_cycles", H_cycles), ("L_cycles", L_cycles)) if v is not None}
        per_step, flops, examples = _rollout_sums(loss_head, batches, max(steps), set(steps), device, kwargs)
        for step in steps:
            metrics = finish_metrics(reduce_sums(per_step[step], device))
            compute = _compute(T, n, step, step * flops / max(examples, 1))
            rows.append({"H_cycles": T, "L_cycles": n, **metrics, "steps": step, **compute})
    return rows


def _rollout_sums(loss_head, batches, max_steps, wanted, device, step_kwargs):
    """Sums per requested step over all batches, the core FLOPs of one step summed over batches, and the rows run."""
    was_training = loss_head.training
    loss_head.eval()
    per_step: dict[int, dict[str, Tensor]] = {s: {} for s in wanted}
    flops, examples = 0, 0
    try:
        for batch, _ in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            carry = loss_head.initial_carry(batch)
            for step in range(1, max_steps + 1):
                with CoreFlops(loss_head) if step == 1 else nullcontext() as counter:
                    carry, _, sums, outputs, _ = loss_head(carry, batch, halt_max_steps=max_steps, **step_kwargs)
                if step == 1:
                    flops += counter.flops
                    examples += carry.steps.shape[0]
                if step in wanted:
                    every_row = torch.ones_like(carry.halted)
                    metrics = step_sums(outputs, carry.current_data["labels"], carry.steps, every_row)
                    metrics.update({k: sums[k] for k in sums if k.endswith("loss")})
                    _add(per_step[step], metrics)
    finally:
        loss_head.train(was_training)
    return per_step, flops, examples


# --- adaptive halting -----------------------------------------------------------------------------------------------


def _subset(carry: ACTCarry, keep: Tensor) -> ACTCarry:
    return ACTCarry(
        inner=tuple(z[keep] for z in carry.inner),
        steps=carry.steps[keep],
        halted=carry.halted[keep],
        current_data={k: v[keep] for k, v in carry.current_data.items()},
    )


def _summed_over_ranks(active: int, has_batch: bool, device) -> tuple[int, int]:
    """(active rows, ranks holding a batch) over all ranks: the one collective of every step."""
    counts = torch.tensor([active, int(has_batch)], dtype=torch.int64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return int(counts[0]), int(counts[1])


@torch.no_grad()
def adaptive_evaluate(
    loss_head: ACTLossHead,
    batches: Iterable[tuple[Batch, Tensor]],
    *,
    max_steps: int,
    threshold: float | None = None,
    patience: int | None = None,
    device: torch.device | str = "cpu",
    max_examples: int | None = None,
    world_size: int = 1,
    **step_kwargs,
) -> dict[str, float]:
    """Evaluate with per-example early exit; every example stops at `max_steps` at the latest.

    threshold: halt when q_halt > threshold (None: the halting head is not used).
    patience: halt when the argmax prediction (over attended positions) has not changed for `patience` consecutive
        steps (None: not used). Both given: whichever comes first.
    Returns the metrics of `evaluate` read at each example's own halting step (`steps` is the mean steps run),
    `halted_early` (fraction stopped before max_steps), and `net_calls` / `flops` per example actually spent.
    Padding rows (mask False) are dropped before the first step."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 (or None), got {patience}")
    T, n = cycle_counts(loss_head, step_kwargs.get("H_cycles"), step_kwargs.get("L_cycles"))
    was_training = loss_head.training
    loss_head.eval()
    totals: dict[str, Tensor] = {}
    flops, early = 0.0, 0
    batches = iter(_take(batches, max_examples, world_size))
    any_batch = True
    try:
        while any_batch:
            item = next(batches, None)
            carry = None
            if item is not None:
                batch, mask = item
                keep = mask.to(device)
                batch = {k: v.to(device)[keep] for k, v in batch.items()}
                carry = loss_head.initial_carry(batch) if keep.any() else None
            active = 0 if carry is None else carry.steps.shape[0]
            last_preds, unchanged = None, None
            for step in range(1, max_steps + 1):
                active_anywhere, ranks_with_batch = _summed_over_ranks(active, item is not None, device)
                any_batch = ranks_with_batch > 0
                if active_anywhere == 0:
                    break
                if active == 0:
                    continue  # this rank is done: it only joins the collective until every rank is
                with CoreFlops(loss_head) as counter:
                    carry, _, _, outputs, _ = loss_head(carry, batch, halt_max_steps=max_steps, **step_kwargs)
                flops += counter.flops
                stop = carry.halted.clone()  # True only at max_steps in eval mode
                if threshold is not None:
                    stop |= outputs["q_halt_logits"] > threshold
                preds = _attended(outputs["preds"], carry.current_data)
                if patience is not None:
                    same = torch.zeros_like(stop) if last_preds is None else (preds == last_preds).all(-1)
                    unchanged = torch.where(same, (0 if unchanged is None else unchanged) + 1, 0)
                    stop |= unchanged >= patience
                _add(totals, step_sums(outputs, carry.current_data["labels"], carry.steps, stop))
                early += int((stop & ~carry.halted).sum())
                keep = ~stop
                carry = _subset(carry, keep)
                batch = carry.current_data
                last_preds = preds[keep]
                unchanged = None if unchanged is None else unchanged[keep]
                active = int(keep.sum())
    finally:
        loss_head.train(was_training)
    totals["halted_early"] = torch.tensor(float(early), dtype=torch.float64)
    totals["flops"] = torch.tensor(flops, dtype=torch.float64)
    result = finish_metrics(reduce_sums(totals, device))
    result.update(_compute(T, n, result["steps"], result["flops"]))
    return result


def _compute(T: int | None, n: int | None, steps: float, flops: float) -> dict[str, float | None]:
    """Per-example compute: T * (n + 1) network calls per step for every core; None for heads without a core."""
    if T is None:
        return {"net_calls": None, "flops": None}
    return {"net_calls": steps * T * (n + 1), "flops": flops}


def _attended(preds: Tensor, data: Batch) -> Tensor:
    """Predictions with unattended (padding) positions zeroed, so only real tokens decide "unchanged"."""
    mask = data.get("attention_mask")
    if mask is None or mask.shape != preds.shape:
        return preds
    return torch.where(mask.bool(), preds, IGNORE_LABEL_ID)


# --- plots -------------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_sweep(rows: list[dict], path, *, trained_steps: int | None = None) -> Path:
    """PNG: exact and token accuracy against supervision steps (log2 axis), one line per (T, n); a dotted line marks
    the trained depth."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the sweep plot is written as .png")
    settings = sorted({(r["H_cycles"], r["L_cycles"]) for r in rows})
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("exact_accuracy", "accuracy"), ("exact accuracy", "token accuracy")):
        for T, n in settings:
            line = sorted((r["steps"], r[metric]) for r in rows if (r["H_cycles"], r["L_cycles"]) == (T, n))
            ax.plot(*zip(*line), marker="o", label=f"T={T}, n={n}")
        if trained_steps is not None:
            ax.axvline(trained_steps, color="grey", linestyle=":", label=f"trained ({trained_steps} steps)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("supervision steps")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_adaptive(fixed: list[dict], adaptive: list[dict], path) -> Path:
    """PNG: exact accuracy against mean steps per example, fixed depth (line) and each adaptive rule (points)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the adaptive-halting plot is written as .png")
    fig = _figure(6, 4)
    ax = fig.subplots()
    line = sorted((r["steps"], r["exact_accuracy"]) for r in fixed)
    ax.plot(*zip(*line), marker="o", color="black", label="fixed depth")
    for r in adaptive:
        ax.scatter(r["steps"], r["exact_accuracy"], zorder=3)
        ax.annotate(
            r["rule"], (r["steps"], r["exact_accuracy"]), fontsize=7, xytext=(4, -8), textcoords="offset points"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean supervision steps per example")
    ax.set_ylabel("exact accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = [
    "CoreFlops",
    "ResearchModel",
    "adaptive_evaluate",
    "cycle_counts",
    "depth_sweep",
    "finish_metrics",
    "load_research_model",
    "plot_adaptive",
    "plot_sweep",
    "recursive_core",
    "research_batches",
    "step_sums",
]


def model_data_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every research recipe shares: which model (--checkpoint), which data (--data, --split)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="pure run / checkpoint folder, or hybrid model folder"
    )
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="test")
    return parser
