"""Crash-safe checkpoint folders, the RNG state that makes a resume reproducible, and loading weights into a model. Below both
training and evaluation: it imports nothing from them.

Layout: `run_dir/checkpoints/step_{step:08d}/` holding
    model.safetensors   the model's tensors
    train_state.pt      everything else (optimiser states, EMA, RNG states, carry, sampler position)
    COMPLETE            written last; a folder without it is not a checkpoint. JSON: the step and the size and
                        sha256 of both files, checked before a checkpoint is read (older checkpoints hold the step only)

A checkpoint is assembled in a temporary sibling folder and renamed into place with `os.replace`, so a crash at any
point leaves either the whole new checkpoint or none of it. Damage after the write (a truncated copy, a flipped byte)
is caught by the checksums: `newest_intact_checkpoint` skips such a checkpoint and says why, and `set_aside` moves
checkpoints that a resumed run will not continue from into `checkpoints/abandoned_<time>/` (never deleted).

`train_state.pt` is read back with `torch.load(weights_only=True)`, so it may hold only tensors, bool / int / float /
str / None, and lists, tuples and dicts of those (dict keys str or int). `save_checkpoint` checks this before writing;
`rng_state()` already returns numpy's state in that form.
"""

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hybrid.utils import UserError, get_logger

MODEL_FILE, TRAIN_STATE_FILE, COMPLETE_MARKER = "model.safetensors", "train_state.pt", "COMPLETE"
_STEP_DIR = re.compile(r"step_(\d{8,})")
_TEMPORARY = re.compile(r"\.tmp_step_\d{8,}_\d+")

log = get_logger("hybrid.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read as asked."""


class DamagedCheckpointError(CheckpointError, UserError):
    """A checkpoint folder whose files are missing, unfinished or differ from what was written."""


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model_state: dict[str, Tensor], train_state: dict,
                    keep_last: int) -> Path:
    """Write the checkpoint for `step` atomically, then delete complete checkpoints older than the newest `keep_last`.

    `model_state` maps names to tensors (tied / aliased tensors are stored as separate copies); `train_state` obeys the
    rules in the module docstring. Returns the checkpoint folder. Call it on the main process only.
    """
    if keep_last < 1:
        raise CheckpointError(f"save_checkpoint: keep_last must be >= 1, got {keep_last}")
    if step < 0:
        raise CheckpointError(f"save_checkpoint: step must be >= 0, got {step}")
    final = checkpoint_dir(run_dir, step)
    if final.exists():
        raise CheckpointError(f"save_checkpoint: {final} already exists; refusing to overwrite a checkpoint")
    tensors = _safetensors_ready(model_state)
    _check_weights_only(train_state, "train_state")

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp_{final.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(tensors, tmp / MODEL_FILE)
        torch.save(train_state, tmp / TRAIN_STATE_FILE)
        files = {name: _file_record(tmp / name) for name in (MODEL_FILE, TRAIN_STATE_FILE)}
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": files}) + "\n")
        _file_record(tmp / COMPLETE_MARKER)  # flushes it to disk before the rename publishes the checkpoint
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders of `run_dir`, oldest step first; temporary and unfinished folders are skipped."""
    return [path for path in _step_folders(run_dir) if (path / COMPLETE_MARKER).is_file()]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None when the run has none."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint folder back as `(model_state, train_state)`, all tensors on CPU, after `verify_checkpoint`."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return load_file(path / MODEL_FILE), torch.load(path / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # reached only by checkpoints written before checksums were recorded
        raise DamagedCheckpointError(f"checkpoint {path} cannot be read: {type(err).__name__}: {err}") from err


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise `DamagedCheckpointError` saying what is wrong unless `path` is a finished checkpoint whose files have the
    sizes and sha256 sums recorded in its COMPLETE file."""
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        raise DamagedCheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} file: its write never "
                                     "finished)")
    try:
        record = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DamagedCheckpointError(f"checkpoint {path}: {COMPLETE_MARKER} is not readable") from None
    if isinstance(record, int):  # written before checksums were recorded: nothing to compare with
        return
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise DamagedCheckpointError(f"checkpoint {path}: {COMPLETE_MARKER} holds no file records")
    for name, expected in record["files"].items():
        file = path / name
        if not file.is_file():
            raise DamagedCheckpointError(f"checkpoint {path}: {name} is missing")
        if file.stat().st_size != expected["bytes"]:
            raise DamagedCheckpointError(f"checkpoint {path}: {name} has {file.stat().st_size} bytes, "
                                         f"{expected['bytes']} were written (truncated or replaced)")
        if _file_record(file, sync=False)["sha256"] != expected["sha256"]:
            raise DamagedCheckpointError(f"checkpoint {path}: {name} differs from what was written (sha256 mismatch)")


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder of `run_dir` that passes `verify_checkpoint`; each newer one is logged as skipped
    with the reason. None when no checkpoint passes."""
    for path in reversed(_step_folders(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except DamagedCheckpointError as err:
            log.warning(f"skipping {path.name}: {err}")
    return None


def set_aside(run_dir: str | os.PathLike, after_step: int) -> Path | None:
    """Move every step folder past `after_step` (finished or not) into `checkpoints/abandoned_<time>/`, oldest first,
    and delete temporary folders of interrupted writes. For a run that continues from `after_step`: its later
    checkpoints belong to another history and must neither be overwritten nor picked by `run.resume=auto`. Returns
    the folder they went to, or None when there were none. Call it on the main process, holding the run-folder lock."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for path in root.iterdir():
        if _TEMPORARY.fullmatch(path.name):
            shutil.rmtree(path)
    later = [path for path in _step_folders(run_dir) if int(path.name[5:]) > after_step]
    if not later:
        return None
    aside = Path(tempfile.mkdtemp(prefix=f"abandoned_{time.strftime('%Y%m%d-%H%M%S')}_", dir=root))
    aside.chmod(0o755)  # mkdtemp makes it private; it is an ordinary part of the run folder
    for path in later:
        os.replace(path, aside / path.name)
    log.info(f"moved {len(later)} checkpoint folder(s) past step {after_step} to {aside}")
    return aside


def _step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """Every `step_*` folder of `run_dir/checkpoints`, finished or not, oldest step first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()),
                  key=lambda p: int(p.name[5:]))


def rng_state() -> dict:
    """The state of Python's `random`, numpy's global RNG, torch's CPU RNG and (when present) every CUDA RNG."""
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": key.tolist(), "pos": pos, "has_gauss": has_gauss,
                  "cached_gaussian": cached_gaussian},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNGs from `rng_state()`; a saved CUDA state needs the same number of visible GPUs."""
    missing = {"python", "numpy", "torch"} - state.keys()
    if missing:
        raise ValueError(f"set_rng_state: state lacks keys {sorted(missing)}; expected the dict from rng_state()")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], np.array(numpy_state["key"], dtype=np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(state["cuda"]) != visible:
            raise ValueError(f"set_rng_state: the state holds {len(state['cuda'])} CUDA RNG states but {visible} "
                             "GPUs are visible; resume with the same number of GPUs per process")
        torch.cuda.set_rng_state_all(state["cuda"])


def _safetensors_ready(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors, with every tensor that shares storage with an earlier one cloned (safetensors refuses
    aliases, e.g. tied embeddings)."""
    out, seen_storages = {}, set()
    for name, tensor in model_state.items():
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"save_checkpoint: model_state[{name!r}] is a {type(tensor).__name__}, expected a "
                                  "tensor; put non-tensor state in train_state")
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if storage in seen_storages else tensor.contiguous()
        seen_storages.add(storage)
    return out


def _check_weights_only(value, where: str) -> None:
    """Raise unless `torch.load(weights_only=True)` can read `value` back."""
    if isinstance(value, (Tensor, bool, int, float, str, type(None))):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_weights_only(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"save_checkpoint: {where} has key {key!r} of type {type(key).__name__}; "
                                      "expected str or int keys")
            _check_weights_only(item, f"{where}[{key!r}]")
        return
    raise CheckpointError(f"save_checkpoint: {where} is a {type(value).__name__}, which torch.load(weights_only=True) "
                          "cannot read; convert it to tensors, numbers, strings, lists or dicts (numpy arrays: .tolist()"
                          " or torch.from_numpy)")


def _file_record(path: Path, *, sync: bool = True) -> dict:
    """{"bytes", "sha256"} of a file; with `sync` it is also flushed to disk (one read serves both)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if sync:
            os.fsync(f.fileno())
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": digest}


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) from either a run folder (its newest intact checkpoint, damaged newer ones
    skipped with a warning) or a checkpoint folder (which must be intact)."""
    path = Path(path)
    if (path / COMPLETE_MARKER).exists() or _STEP_DIR.fullmatch(path.name):
        verify_checkpoint(path)
        return path.parent.parent, path
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    latest = newest_intact_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} holds no complete checkpoint that verifies (expected a run folder or a checkpoint "
                        "folder)")
    return path, latest


def load_model_state(
    model: nn.Module, state: dict[str, Tensor], *, source, keys: Callable[[str], bool] | None = None
) -> None:
    """Load weights, turning a mismatch (another architecture's checkpoint) into a message that lists it. `keys`
    selects the state-dict entries a checkpoint is expected to hold (the rest keep their current values)."""
    own = {k: v for k, v in model.state_dict().items() if keys is None or keys(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:8]))
        raise UserError(f"{source} does not match this model's architecture: " + ", ".join(parts))
    model.load_state_dict(state, strict=keys is None)
