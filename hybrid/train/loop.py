"""One training loop for every model in hybrid: pure TRM/HRM on grids and recursive heads on Hugging Face models.

The loop follows the official TRM/HRM trainer (official pretrain.py: `train_batch`, `evaluate`):

- a persistent ACT carry of `global_batch / world_size` slots per rank, advanced one supervision step per optimiser
  step; halted slots take the next batch's rows;
- the loss head's sum divided by the *global* batch, dense gradients summed across ranks (so they are the global
  mean), the sparse puzzle-embedding update all-gathered inside its optimiser;
- both optimisers driven by one warm-up + cosine schedule (SignSGD first, then AdamATan2, as the official code);
- EMA of the dense parameters, evaluation on the EMA weights, metrics reduced across ranks: losses over the global
  batch and the rest over `count` in training; everything over `count` in evaluation (official pretrain.py,
  `train_batch` and `evaluate`).

Departures, each deliberate:
- No DDP wrapper: the sparse embedding's gathered rows live in a buffer that DDP would overwrite from rank 0 before
  every forward. One flattened all-reduce per step does the same job with a collective count independent of halting.
- Checkpoints hold the full training state (both optimisers, schedule step, EMA, every rank's RNG and ACT carry, the
  sampler position), so a resumed run continues exactly; the official checkpoints hold weights only.
- A non-finite loss stops the run before the optimiser step, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch
from torch import Tensor, nn

from hybrid.config import save_config
from hybrid.core.act import ACT, ACTCarry
from hybrid.core.losses import ACTLoss
from hybrid.core.rollout import ExitRules
from hybrid.eval.loop import evaluate, normalise, reduce_sums
from hybrid.optim import EMA, AdamATan2, SparseSignSGD, lr_at
from hybrid.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_aside, set_rng_state
from hybrid.train.config import CheckpointConfig, EvalConfig, OptimConfig, RunConfig
from hybrid.train.tracking import (  # noqa: F401  (the run-folder set-up is part of the loop's interface)
    MetricsLogger, check_run, plot_curves, prepare_run, read_metrics, resolve_resume, summary_table,
)
from hybrid.utils import UserError, get_logger

log = get_logger("hybrid.train")


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class BatchStream(Protocol):
    """A resumable source of this rank's training batches (e.g. `hybrid.data.sampler.TrainSampler`)."""

    def __iter__(self) -> Iterator[dict[str, Tensor]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Evaluator(Protocol):
    """Consumes final-step predictions during an evaluation and returns extra metrics (e.g. ARC pass@k)."""

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor], mask: Tensor) -> None: ...

    def result(self) -> dict[str, float]: ...


@dataclass
class LoopParts:
    """What a recipe hands the loop: the model, its data and its settings."""

    reasoner: nn.Module
    act: ACT
    loss_type: str
    train_stream: BatchStream
    eval_batches: Callable[[], Iterable[tuple[dict[str, Tensor], Tensor]]]  # fresh (batch, real-row mask) iterator
    total_steps: int
    global_batch_size: int
    sparse_embedding: nn.Module | None = None
    evaluators: Callable[[], list[Evaluator]] = list  # a fresh list per evaluation: votes never pool across evals
    config: object = None  # the resolved recipe config, saved with the run
    # Which state-dict keys checkpoints hold (None: all). Hybrid runs leave out the frozen backbone, which is
    # rebuilt from its name; a LoRA adapter inside it is kept.
    checkpoint_keys: Callable[[str], bool] | None = None


def _carry_state(carry: ACTCarry | None) -> dict | None:
    if carry is None:
        return None
    return {
        "inner": list(carry.inner),
        "steps": carry.steps,
        "halted": carry.halted,
        "current_data": dict(carry.current_data),
    }


def _carry_from_state(state: dict | None, device: torch.device) -> ACTCarry | None:
    if state is None:
        return None
    return ACTCarry(
        inner=tuple(t.to(device) for t in state["inner"]),
        steps=state["steps"].to(device),
        halted=state["halted"].to(device),
        current_data={k: v.to(device) for k, v in state["current_data"].items()},
    )


class Trainer:
    def __init__(
        self,
        parts: LoopParts,
        *,
        run: RunConfig,
        optim: OptimConfig,
        eval_cfg: EvalConfig,
        checkpoint: CheckpointConfig,
        accelerator,
        run_dir: Path,
    ):
        self.parts, self.run, self.optim_cfg, self.eval_cfg, self.ckpt_cfg = parts, run, optim, eval_cfg, checkpoint
        self.accelerator, self.run_dir = accelerator, run_dir
        self.device = accelerator.device
        self.world_size, self.rank = accelerator.num_processes, accelerator.process_index

        self.reasoner = parts.reasoner.to(self.device)
        self.act_loss = ACTLoss(parts.act, loss_type=parts.loss_type).to(self.device)
        # The compiled module shares its parameters and the ACT generator with act_loss: checkpoints are unchanged.
        # dynamic=None: pure mode's shapes never change (one static graph); hybrid mode cuts all-padding columns each
        # step, so its length varies and is made dynamic at the first change instead of recompiling per length.
        self.step_forward = torch.compile(self.act_loss, dynamic=None) if run.compile else self.act_loss
        check_schedule(optim, parts.total_steps)
        self.dense = [p for p in self.reasoner.parameters() if p.requires_grad]
        if not self.dense:
            raise UserError("the model has no trainable parameters")
        self._broadcast_model()

        self.adam = AdamATan2(
            self.dense, lr=0.0, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
        )
        self.sparse = (
            SparseSignSGD(parts.sparse_embedding, lr=0.0, weight_decay=optim.puzzle_emb_weight_decay)
            if parts.sparse_embedding is not None
            else None
        )
        self.ema = EMA(self.reasoner, mu=optim.ema_rate) if optim.ema else None
        self.step = 0
        self.carry: ACTCarry | None = None
        self.metrics = MetricsLogger(run_dir, accelerator.is_main_process)
        self.last_checkpoint: Path | None = None
        self.saved_step: int | None = None
        self.last_eval: dict[str, float] = {}
        self.metrics_kept: int | None = None  # metric records logged up to the checkpoint resumed from, when known

    # ---- distributed helpers -------------------------------------------------------------------------------------

    def _broadcast_model(self):
        """Every rank starts from rank 0's weights and buffers (the official code does the same)."""
        if self.world_size > 1:
            for tensor in list(self.reasoner.parameters()) + list(self.reasoner.buffers()):
                torch.distributed.broadcast(tensor.data, src=0)

    def _sync_dense_grads(self):
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(self.dense, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    # ---- training --------------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[dict[str, Tensor]]:
        empty_passes = 0
        while True:
            produced = False
            for batch in self.parts.train_stream:
                produced = True
                yield {k: v.to(self.device) for k, v in batch.items()}
            # A stream resumed right at the end of a pass yields nothing once, then starts the next pass.
            empty_passes = 0 if produced else empty_passes + 1
            if empty_passes == 2:
                raise UserError("the training data produced no batch; is the dataset smaller than one global batch?")

    def _set_lr(self) -> float:
        o = self.optim_cfg
        schedule = dict(warmup_steps=o.lr_warmup_steps, total_steps=self.parts.total_steps, min_ratio=o.lr_min_ratio)
        lr = lr_at(self.step, base_lr=o.lr, **schedule)
        for group in self.adam.param_groups:
            group["lr"] = lr
        if self.sparse is not None:
            for group in self.sparse.param_groups:
                group["lr"] = lr_at(self.step, base_lr=o.puzzle_emb_lr, **schedule)
        return lr

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        self.act_loss.train()
        if self.carry is None:
            self.carry = self.act_loss.initial_carry(batch)
        self.carry, loss, metric_sums, _, _ = self.step_forward(self.carry, batch)
        (loss / self.parts.global_batch_size).backward()
        self._sync_dense_grads()

        metric_sums = dict(metric_sums, loss=loss.detach())
        # The step's one host sync, kept on purpose: the loss must be known finite before the optimiser step, so a
        # diverged run stops with its weights and checkpoints untouched. Masking the updates on device instead would
        # save it only in a step with no other sync; on CUDA the forward has more (bench/README.md lists them).
        totals = reduce_sums(metric_sums, self.device)
        self.step += 1
        if not math.isfinite(totals["loss"]):
            where = self.last_checkpoint or "none was written yet"
            raise TrainingDivergedError(
                f"loss became {totals['loss']} at step {self.step}; stopped before the optimiser step. "
                f"Last good checkpoint: {where}"
            )
        lr = self._set_lr()
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.reasoner)
        return normalise(totals, loss_divisor=self.parts.global_batch_size) | {"lr": lr}

    # ---- evaluation ------------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        swap = self.ema.apply_to(self.reasoner) if self.ema is not None else contextlib.nullcontext()
        with swap:
            return evaluate(
                self.act_loss,
                self.parts.eval_batches(),
                halt_max_steps=self.eval_cfg.halt_max_steps or self.parts.act.halt_max_steps,
                exit=ExitRules(q_halt_threshold=self.eval_cfg.exit_threshold, patience=self.eval_cfg.exit_patience),
                device=self.device,
                evaluators=self.parts.evaluators(),
                max_examples=self.eval_cfg.max_examples,
                world_size=self.world_size,
            )

    # ---- checkpoints -----------------------------------------------------------------------------------------------

    def _gather_rank_states(self) -> list[dict]:
        mine = {
            "rng": rng_state(),
            "act_generator": self.parts.act.generator.get_state(),
            "carry": _carry_state(self.carry),
        }
        if self.world_size == 1:
            return [mine]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, mine)
        return gathered

    def _model_state(self) -> dict[str, Tensor]:
        keep = self.parts.checkpoint_keys or (lambda key: True)
        return {k: v.detach().clone() for k, v in self.reasoner.state_dict().items() if keep(k)}

    def save(self) -> Path | None:
        if self.saved_step == self.step:
            return self.last_checkpoint
        rank_states = self._gather_rank_states()
        path = None
        if self.accelerator.is_main_process:
            train_state = {
                "step": self.step,
                "world_size": self.world_size,
                "adam": self.adam.state_dict(),
                "sparse": self.sparse.state_dict() if self.sparse is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "sampler": self.parts.train_stream.state_dict(),
                "ranks": rank_states,
                "metrics_records": self.metrics.count(),
            }
            # model.safetensors holds the weights to evaluate (EMA when enabled, as the official checkpoints do);
            # the raw training weights go into the training state for an exact resume.
            if self.ema is not None:
                train_state["raw_model"] = self._model_state()
                with self.ema.apply_to(self.reasoner):
                    model_state = self._model_state()
            else:
                model_state = self._model_state()
            path = save_checkpoint(
                self.run_dir, self.step, model_state=model_state, train_state=train_state,
                keep_last=self.ckpt_cfg.keep_last,
            )
            self.last_checkpoint = path
        self.saved_step = self.step
        self.accelerator.wait_for_everyone()
        return path

    def resume_from(self, path: Path):
        model_state, train_state = load_checkpoint(path)
        if train_state["world_size"] != self.world_size:
            raise UserError(
                f"{path} was written by {train_state['world_size']} processes; resume it with the same number "
                f"(this launch has {self.world_size}) so every rank gets its carry and RNG state back"
            )
        weights = train_state.get("raw_model") or model_state
        load_model_state(self.reasoner, weights, source=path, keys=self.parts.checkpoint_keys)
        self.adam.load_state_dict(train_state["adam"])
        if self.sparse is not None:
            self.sparse.load_state_dict(train_state["sparse"])
        if self.ema is not None:
            if train_state["ema"] is None:
                raise UserError(f"{path} has no EMA state but this run has training.ema=true")
            self.ema.load_state_dict(train_state["ema"])
        self.parts.train_stream.load_state_dict(train_state["sampler"])
        mine = train_state["ranks"][self.rank]
        set_rng_state(mine["rng"])
        self.parts.act.generator.set_state(mine["act_generator"])
        self.carry = _carry_from_state(mine["carry"], self.device)
        self.step = int(train_state["step"])
        self.last_checkpoint, self.saved_step = path, self.step
        # The record count is only meaningful for this run folder's own metrics file.
        same_run = Path(path).resolve().parent.parent == Path(self.run_dir).resolve()
        self.metrics_kept = train_state.get("metrics_records") if same_run else None
        log.info(f"resumed from {path} at step {self.step}")

    def _start_from_here(self):
        """Make the run folder hold exactly the history up to `self.step` before training goes on from it: later
        checkpoints (another branch, or damaged ones) moved aside, metric records logged after the checkpoint
        dropped (kept next to the moved checkpoints when there are any), temporary folders of killed writes deleted."""
        aside = set_aside(self.run_dir, self.step)
        dropped = self.metrics.truncate(keep=self.metrics_kept, after_step=self.step)
        if dropped:
            log.info(f"dropped {len(dropped)} metric record(s) logged after step {self.step}; they are logged again")
            if aside is not None:
                (aside / "metrics.jsonl").write_text("".join(dropped))

    # ---- the run ---------------------------------------------------------------------------------------------------

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def fit(self) -> dict[str, float]:
        total = self.parts.total_steps
        if self.accelerator.is_main_process:
            self._start_from_here()
            if self.parts.config is not None:
                save_config(self.parts.config, self.run_dir / "config.yaml")
        progress = _progress(total, self.step, enabled=self.run.progress_bar and self.accelerator.is_main_process)
        batches = self._batches()
        window_start, window_steps = time.perf_counter(), 0
        eval_every = self.eval_cfg.interval
        ckpt_every = self.ckpt_cfg.every or eval_every
        stop = min(total, self.run.stop_at_step or total)
        while self.step < stop:
            record = self.train_step(next(batches))
            window_steps += 1
            progress.update(1)
            if self._due(self.run.log_every) or self.step == total:
                rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                window_start, window_steps = time.perf_counter(), 0
                record["steps_per_s"] = rate
                self.metrics.log(self.step, "train", record)
                self.accelerator.log({f"train/{k}": v for k, v in record.items()}, step=self.step)
                progress.set_postfix(
                    loss=f"{record['loss']:.4f}", acc=f"{record.get('accuracy', 0.0):.3f}", it_s=f"{rate:.2f}"
                )
            if self._due(eval_every) and self.step < total:
                self._evaluate_and_log()
            if self._due(ckpt_every) and self.step < total:
                self.save()
        progress.close()
        if self.step < total:  # stopped early on request: keep a checkpoint to resume from, skip the final eval
            self.save()
            log.info(f"stopped at step {self.step} of {total} (run.stop_at_step); resume with run.resume=auto")
            return {}
        # The checkpoint first: a failure in the final evaluation must not throw the training away.
        self.save()
        self._evaluate_and_log()
        if self.accelerator.is_main_process:
            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
            print(summary_table(read_metrics(self.metrics.path)))
        return self.last_eval

    def _evaluate_and_log(self):
        self.last_eval = self.evaluate()
        self.metrics.log(self.step, "eval", self.last_eval)
        self.accelerator.log({f"eval/{k}": v for k, v in self.last_eval.items()}, step=self.step)
        shown = {k: round(v, 4) for k, v in self.last_eval.items() if k in ("exact_accuracy", "accuracy", "steps")}
        log.info(f"step {self.step}: eval {shown}")


def check_schedule(optim: OptimConfig, total_steps: int) -> None:
    """Called by recipes before anything is written, and by the Trainer."""
    if optim.lr_warmup_steps > total_steps:
        raise UserError(f"training.lr_warmup_steps={optim.lr_warmup_steps} exceeds the run's {total_steps} steps")


def _progress(total: int, initial: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train")


__all__ = ["LoopParts", "Trainer", "TrainingDivergedError", "check_run", "prepare_run", "resolve_resume"]
