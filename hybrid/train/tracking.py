"""The run folder: creating and locking it, choosing the checkpoint to resume from, logging metrics as JSON lines,
and turning them into curves and a summary.

A run folder holds `run.json` (written by `RunDir.create`, marks the folder as a hybrid run), `metrics.jsonl`
(one `{"step": ..., "split": "train" | "eval", <metric>: <number>, ...}` object per line), `checkpoints/` and `.lock`.

One process writes a run folder: `RunDir.create` takes an exclusive `flock` on `.lock` and the process holds it until
it exits. The kernel drops the lock of a process that dies (kill -9 included), so a stale lock never blocks a resume.
"""

import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from hybrid.checkpoint import DamagedCheckpointError, newest_intact_checkpoint, verify_checkpoint
from hybrid.train.config import RunConfig
from hybrid.utils import UserError, rank, world_size

RUN_MARKER, METRICS_FILE, LOCK_FILE = "run.json", "metrics.jsonl", ".lock"
SPLITS = ("train", "eval")
_held_locks: dict[Path, int] = {}  # run folder -> descriptor of its lock file, for this process's lifetime


class RunDirError(ValueError):
    """A run folder that cannot be used as asked."""


class RunExistsError(RunDirError):
    """The folder already holds a previous run and neither overwrite nor resume was asked for."""


class RunLockedError(RunDirError):
    """Another live process writes this run folder."""


@dataclass(frozen=True)
class RunDir:
    """A run folder; usable wherever a path is expected (`os.fspath(run_dir)`)."""

    path: Path
    resumed: bool

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints_path(self) -> Path:
        return self.path / "checkpoints"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> "RunDir":
        """Make `path` ready for a run and lock it for this process (see the module docstring).

        Missing or empty folder: a new run. Folder holding a previous run: `resume=True` keeps it (`resumed` is True),
        `overwrite=True` deletes its contents and starts afresh, neither raises `RunExistsError`. A non-empty folder
        that is not a run is never reused. A folder another process holds raises `RunLockedError` before anything in
        it changes. The folder must be writable (checked up front). Call it on the main process only.
        """
        cls.check(path, overwrite=overwrite, resume=resume)  # before the folder or its lock file is made
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_run_dir(path)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            raise RunDirError(f"run folder {path} is not writable: {err}") from err
        # Again under the lock: another writer may have finished between the first check and the lock.
        holds_run = cls.check(path, overwrite=overwrite, resume=resume)
        if holds_run and overwrite:
            for child in path.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if not (holds_run and resume):
            (path / RUN_MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        return cls(path=path, resumed=holds_run and resume)

    @staticmethod
    def check(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> bool:
        """Raise the `RunDirError` that `create` would raise, without changing the folder (the lock of an existing run
        is taken and kept, so a live writer is found now); return whether `path` holds a previous run. Recipes call
        it before expensive work (through `hybrid.train.loop.check_run`)."""
        if overwrite and resume:
            raise RunDirError(f"RunDir.create({path}): overwrite and resume exclude each other; choose one")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"run folder {path} exists and is not a folder")
        holds_run = (path / RUN_MARKER).is_file()
        if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()) and not holds_run:
            raise RunDirError(f"run folder {path} is not empty and holds no previous run ({RUN_MARKER} missing); "
                              "choose a new or empty folder")
        if holds_run and not (overwrite or resume):
            raise RunExistsError(f"run folder {path} already holds a previous run; pass run.overwrite=true to delete it "
                                 "and start again, or run.resume=auto to continue from its latest checkpoint")
        if (path / LOCK_FILE).is_file() and path.resolve() not in _held_locks:
            lock_run_dir(path)  # refused while another process holds it; held from here on otherwise
        return holds_run


def lock_run_dir(path: str | os.PathLike) -> None:
    """Take the exclusive lock of run folder `path` (which must exist) for the rest of this process's life; raise
    `RunLockedError`, naming the holder, when another process has it. Taking it again in the same process is a no-op."""
    key = Path(path).resolve()
    if key in _held_locks:
        return
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLockedError(f"run folder {path} is in use by {holder}; wait for it to finish or stop it "
                             "(a second writer would corrupt its checkpoints and metrics)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    _held_locks[key] = fd


def release_run_dir(path: str | os.PathLike) -> None:
    """Give up this process's lock of run folder `path` (a finished recipe; the lock also ends with the process)."""
    fd = _held_locks.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor of the lock file releases the flock


class MetricsLogger:
    """Appends one JSON line per `log` call to `run_dir/metrics.jsonl`; does nothing off the main process."""

    def __init__(self, run_dir: str | os.PathLike, is_main_process: bool):
        self.path = Path(run_dir) / METRICS_FILE
        self.is_main_process = is_main_process

    def log(self, step: int, split: str, metrics: dict[str, float | Tensor]) -> None:
        """Record `metrics` (numbers or one-element tensors) for `split` ("train" or "eval") at `step`."""
        if split not in SPLITS:
            raise ValueError(f"MetricsLogger.log: split must be one of {SPLITS}, got {split!r}")
        record = {"step": int(step), "split": split}
        for key, value in metrics.items():
            if key in record:
                raise ValueError(f"MetricsLogger.log: metric name {key!r} is reserved")
            if isinstance(value, Tensor):
                value = value.item()
            if not isinstance(value, (int, float)):
                raise ValueError(f"MetricsLogger.log: metric {key!r} is a {type(value).__name__}, expected a number")
            record[key] = value
        if self.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def count(self) -> int:
        """The number of complete records in the file (saved with each checkpoint, see `truncate`)."""
        return self.path.read_bytes().count(b"\n") if self.path.is_file() else 0

    def truncate(self, *, keep: int | None, after_step: int) -> list[str]:
        """Drop the records logged after a checkpoint, which a resumed run logs again: all but the first `keep`
        records (the checkpoint's `count()`), or when that is unknown every record past `after_step`. A line cut
        short by a kill goes too. The file is replaced atomically, so a kill here leaves the old or the new one, and
        a retry does the same again. Returns the dropped lines."""
        if not self.is_main_process or not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        if keep is None:
            wanted = [_step_of(line) <= after_step for line in lines]
        else:
            wanted = [index < keep for index in range(len(lines))]
        wanted = [want and line.endswith("\n") for want, line in zip(wanted, lines)]
        if all(wanted):
            return []
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp")
        with open(tmp, "w") as f:
            f.writelines(line for line, want in zip(lines, wanted) if want)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return [line for line, want in zip(lines, wanted) if not want]


def _step_of(line: str) -> float:
    """The step of a metrics line; infinity for a line that is not a record (so it never counts as logged in time)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def check_run(run: RunConfig) -> None:
    """Refuse now, before expensive work, a run that `prepare_run` would refuse: an unknown or missing tracker, a
    previous run without run.resume / run.overwrite, a folder that is not a run, a folder another process is writing.
    Changes nothing (an existing run's lock is taken and kept)."""
    _trackers(run)
    _on_main_process(lambda: RunDir.check(run.output_dir, overwrite=run.overwrite, resume=run.resume != "no"), run)


def prepare_run(run: RunConfig):
    """The run folder (never overwriting a previous run unless asked, locked for this process) and an Accelerator.

    The Accelerator is created with `cpu=True` on machines without CUDA: without it, each rank of a multi-process
    CPU launch silently trains alone."""
    from accelerate import Accelerator

    trackers = _trackers(run)
    run_dir = Path(run.output_dir)
    _on_main_process(lambda: RunDir.create(run_dir, overwrite=run.overwrite, resume=run.resume != "no"), run)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None, project_dir=str(run_dir))
    return accelerator, run_dir


def _trackers(run: RunConfig) -> list[str]:
    for name in run.trackers:
        if name == "tensorboard":
            _require("tensorboard", "tensorboard", "pip install tensorboard, or set run.trackers=[]")
        elif name == "wandb":
            _require("wandb", "wandb", "pip install wandb, or remove wandb from run.trackers")
        else:
            raise UserError(f"run.trackers: unknown tracker {name!r}; use tensorboard and/or wandb")
    return list(run.trackers)


def _on_main_process(check: Callable[[], object], run: RunConfig) -> None:
    """Run a run-folder `check` on the main process; its RunDirError is raised as a UserError on every rank."""
    from accelerate import PartialState

    if run.resume not in ("no", "auto") and run.overwrite:
        raise UserError("run.overwrite=true and run.resume=<checkpoint> exclude each other")
    state = PartialState(cpu=not torch.cuda.is_available())
    error = None
    if state.is_main_process:
        try:
            check()
        except RunDirError as err:
            error = str(err)
    errors = [error]
    if state.num_processes > 1:
        errors = [None] * state.num_processes
        torch.distributed.all_gather_object(errors, error)
    if any(errors):
        raise UserError(next(e for e in errors if e))


def _require(module: str, package: str, hint: str):
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"tracker {package!r} was asked for but is not installed: {hint}")


def resolve_resume(run: RunConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: None for run.resume=no, the newest one that verifies for auto (damaged newer
    ones skipped with a warning; `Trainer.fit` moves them aside), or the named one, which must verify. Decided on the
    main process and shared with the other ranks."""
    if run.resume == "no":
        return None
    choice = [None, None]  # (checkpoint path, error)
    if rank() == 0:
        try:
            if run.resume == "auto":
                found = newest_intact_checkpoint(run_dir)
                choice[0] = None if found is None else str(found)
            elif not Path(run.resume).is_dir():
                choice[1] = f"run.resume={run.resume}: no such checkpoint folder"
            else:
                verify_checkpoint(run.resume)
                choice[0] = run.resume
        except DamagedCheckpointError as err:
            choice[1] = f"run.resume={run.resume}: {err}"
    if torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1:
        torch.distributed.broadcast_object_list(choice, src=0)
    if choice[1] is not None:
        raise UserError(choice[1])
    return None if choice[0] is None else Path(choice[0])


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file, in file order."""
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from err
            if not isinstance(record, dict) or "step" not in record or record.get("split") not in SPLITS:
                raise ValueError(f"{path}:{line_no}: expected an object with 'step' and 'split' in {SPLITS}")
            records.append(record)
    return records


def plot_curves(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike, keys: Sequence[str] | None = None) -> Path:
    """One panel per metric key (default: every metric in the file), train and eval curves against step; a PNG."""
    # The Agg canvas directly, not pyplot: no global backend switch and no figure registry in a training process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_jsonl)
    available = sorted({k for r in records for k in r} - {"step", "split"})
    keys = available if keys is None else list(keys)
    unknown = [k for k in keys if k not in available]
    if not keys or unknown:
        raise ValueError(f"plot_curves: {metrics_jsonl} has metrics {available}; cannot plot {unknown or 'nothing'}")

    fig = Figure(figsize=(5, 3 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(len(keys), 1, squeeze=False)[:, 0], keys):
        for split in SPLITS:
            points = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if split == "eval" else None, label=split)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    out_png = Path(out_png)
    fig.savefig(out_png, format="png")
    return out_png


def summary_table(metrics: list[dict], split: str = "eval") -> str:
    """A plain-text table of each metric's final and best value over `split` records, with the best's step.

    Best is the minimum for metrics whose name contains "loss" and the maximum otherwise; NaN values never win.
    """
    records = [r for r in metrics if r.get("split") == split]
    if not records:
        raise ValueError(f"summary_table: no {split!r} records among {len(metrics)} metrics records")
    keys = sorted({k for r in records for k in r} - {"step", "split"})
    rows = [("metric", "final", "best", "best step")]
    for key in keys:
        series = [(r["step"], r[key]) for r in records if key in r]
        finite = [(s, v) for s, v in series if not math.isnan(v)]
        lower_is_better = "loss" in key
        best_step, best = (min if lower_is_better else max)(finite, key=lambda sv: sv[1]) if finite else ("-", math.nan)
        rows.append((key, f"{series[-1][1]:.6g}", f"{best:.6g}", str(best_step)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
