"""The official TRM/HRM on-disk grid dataset format (official dataset/common.py, `PuzzleDatasetMetadata`),
read and written.

    <root>/identifiers.json                     list of puzzle-id names, index 0 = "<blank>"
    <root>/<split>/dataset.json                 DatasetMetadata
    <root>/<split>/<set>__inputs.npy            [examples, seq_len] uint8 tokens
    <root>/<split>/<set>__labels.npy            [examples, seq_len] uint8 tokens
    <root>/<split>/<set>__puzzle_identifiers.npy [puzzles] int32
    <root>/<split>/<set>__puzzle_indices.npy    [puzzles + 1] int32, CSR offsets of examples per puzzle
    <root>/<split>/<set>__group_indices.npy     [groups + 1] int32, CSR offsets of puzzles per group

A group is an original task, its puzzles are augmentation variants, a puzzle holds one or more examples.
Folders written here load unchanged in the official `puzzle_dataset.py` (same file names, dtypes and JSON fields).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np

ARRAY_NAMES = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
# Token arrays are uint8 like the official builders (every official vocab is < 256); the official loader casts to int32.
TOKEN_DTYPE = np.uint8
INDEX_DTYPE = np.int32
BLANK_IDENTIFIER = "<blank>"


class DatasetFormatError(ValueError):
    """A dataset folder or array set that does not follow the official format."""


@dataclass(kw_only=True)
class DatasetMetadata:
    """dataset.json, with the official field names (written in the official key order)."""

    seq_len: int
    vocab_size: int
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    # Required by TRM's loader (official puzzle_dataset.py); HRM-built folders lack it and are rejected with a message.
    total_puzzles: int
    sets: list[str]

    @classmethod
    def from_json(cls, path: Path) -> "DatasetMetadata":
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(raw, dict):
            raise DatasetFormatError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in raw]
        if missing:
            hint = " (HRM-built folders lack total_puzzles; add it = number of groups)" if missing == ["total_puzzles"] else ""
            raise DatasetFormatError(f"{path}: missing key(s) {missing}{hint}")
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise DatasetFormatError(f"{path}: unknown key(s) {unknown}; expected exactly {names}")
        return cls(**raw)

    def to_json(self, path: Path) -> None:
        raw = asdict(self)
        raw["mean_puzzle_examples"] = float(raw["mean_puzzle_examples"])
        Path(path).write_text(json.dumps(raw))


@dataclass
class GridDataset:
    """One set of one split: the five arrays (tokens memory-mapped when read with mmap=True) and the metadata."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    metadata: DatasetMetadata
    set_name: str = "all"

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_puzzles(self) -> int:
        return int(self.puzzle_identifiers.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_indices.shape[0] - 1)


def _check_offsets(name: str, offsets: np.ndarray, end: int, where: str) -> None:
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise DatasetFormatError(f"{where}: {name} must be a non-empty 1-D array, got shape {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != end:
        raise DatasetFormatError(f"{where}: {name} must run from 0 to {end}, got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) <= 0):
        raise DatasetFormatError(f"{where}: {name} must be strictly increasing (no empty puzzle or group)")


def validate(ds: GridDataset, where: str, *, check_tokens: bool) -> None:
    """Raise DatasetFormatError naming `where` when the arrays disagree with each other or with the metadata.

    check_tokens scans every token against vocab_size (a pass over the whole memory map, about a second per GB).
    """
    meta = ds.metadata
    for name in ARRAY_NAMES:
        arr = getattr(ds, name)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DatasetFormatError(f"{where}: {name} must be an integer array, got dtype {arr.dtype}")
    if ds.inputs.ndim != 2 or ds.inputs.shape[1] != meta.seq_len:
        raise DatasetFormatError(f"{where}: inputs must have shape [examples, {meta.seq_len}], got {ds.inputs.shape}")
    if ds.labels.shape != ds.inputs.shape:
        raise DatasetFormatError(f"{where}: labels shape {ds.labels.shape} differs from inputs shape {ds.inputs.shape}")
    if ds.puzzle_identifiers.ndim != 1:
        raise DatasetFormatError(f"{where}: puzzle_identifiers must be 1-D, got shape {ds.puzzle_identifiers.shape}")
    _check_offsets("puzzle_indices", ds.puzzle_indices, ds.num_examples, where)
    if ds.puzzle_indices.shape[0] != ds.num_puzzles + 1:
        raise DatasetFormatError(
            f"{where}: puzzle_indices has {ds.puzzle_indices.shape[0]} entries, expected puzzles + 1 = {ds.num_puzzles + 1}"
        )
    _check_offsets("group_indices", ds.group_indices, ds.num_puzzles, where)
    ids = ds.puzzle_identifiers
    if ids.size and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        raise DatasetFormatError(
            f"{where}: puzzle_identifiers span {ids.min()}..{ids.max()}, beyond 0..num_puzzle_identifiers-1 "
            f"= 0..{meta.num_puzzle_identifiers - 1}"
        )
    if ds.set_name not in meta.sets:
        raise DatasetFormatError(f"{where}: set {ds.set_name!r} is not listed in metadata sets {meta.sets}")
    if len(meta.sets) == 1 and meta.total_groups != ds.num_groups:
        raise DatasetFormatError(f"{where}: total_groups = {meta.total_groups} but group_indices holds {ds.num_groups} groups")
    if check_tokens:
        for name in ("inputs", "labels"):
            arr = getattr(ds, name)
            if arr.size and (arr.min() < 0 or arr.max() >= meta.vocab_size):
                row = int(np.flatnonzero(((arr < 0) | (arr >= meta.vocab_size)).any(axis=1))[0])
                raise DatasetFormatError(
                    f"{where}: {name} row {row} holds a token outside 0..vocab_size-1 = 0..{meta.vocab_size - 1} "
                    f"(tokens span {arr.min()}..{arr.max()})"
                )


def write_split(
    root: Path,
    split: str,
    *,
    inputs,
    labels,
    puzzle_identifiers,
    puzzle_indices,
    group_indices,
    metadata: DatasetMetadata,
    set_name: str = "all",
) -> None:
    """Write one set of `<root>/<split>/` and its dataset.json, after validating everything (tokens included)."""
    if metadata.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DatasetFormatError(f"vocab_size {metadata.vocab_size} does not fit the official uint8 token arrays")
    ds = GridDataset(
        inputs=np.asarray(inputs),
        labels=np.asarray(labels),
        puzzle_identifiers=np.asarray(puzzle_identifiers),
        puzzle_indices=np.asarray(puzzle_indices),
        group_indices=np.asarray(group_indices),
        metadata=metadata,
        set_name=set_name,
    )
    out = Path(root) / split
    validate(ds, str(out), check_tokens=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_NAMES:
        dtype = TOKEN_DTYPE if name in ("inputs", "labels") else INDEX_DTYPE
        np.save(out / f"{set_name}__{name}.npy", getattr(ds, name).astype(dtype, copy=False))
    metadata.to_json(out / "dataset.json")


def write_identifiers(root: Path, names: list[str]) -> None:
    """identifiers.json: names[i] is the name of puzzle id i; id 0 is always the blank."""
    if not names or names[0] != BLANK_IDENTIFIER:
        raise DatasetFormatError(f"identifiers must start with {BLANK_IDENTIFIER!r}, got {names[:1]}")
    Path(root, "identifiers.json").write_text(json.dumps(list(names)))


def read_identifiers(root: Path) -> list[str]:
    path = Path(root) / "identifiers.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing identifiers.json (expected a JSON list, index 0 = {BLANK_IDENTIFIER!r})")
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not names or names[0] != BLANK_IDENTIFIER:
        raise DatasetFormatError(f"{path}: expected a JSON list starting with {BLANK_IDENTIFIER!r}")
    return names


def read_split(
    root: Path, split: str, *, mmap: bool = True, set_name: str = "all", check_tokens: bool = True
) -> GridDataset:
    """Load `<root>/<split>/`; inputs and labels are memory-mapped read-only when mmap (the index arrays are small).
    Every token is checked against vocab_size now (check_tokens), so a bad row fails at load, not when sampled."""
    folder = Path(root) / split
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing dataset.json (is {folder} a dataset split folder?)")
    metadata = DatasetMetadata.from_json(meta_path)
    arrays = {}
    for name in ARRAY_NAMES:
        path = folder / f"{set_name}__{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing array file of set {set_name!r}")
        big = name in ("inputs", "labels")
        arrays[name] = np.load(path, mmap_mode="r" if (mmap and big) else None, allow_pickle=False)
    ds = GridDataset(**arrays, metadata=metadata, set_name=set_name)
    validate(ds, str(folder), check_tokens=check_tokens)
    return ds


@contextmanager
def atomic_output_dir(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `path`; on any exception delete it (no half-written
    output). Refuse (FileExistsError with a clear message) if `path` exists and not overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output folder already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary shared folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # Move the old folder aside first, so a crash between the two renames never leaves neither version.
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


HUB_CSV_HEADER = ["source", "question", "answer", "rating"]


def resolve_hub_csv(name: str, repo: str) -> Path:
    """A local file as is; otherwise a file of the Hub dataset `repo` (downloaded once into the Hub cache). A path
    whose folder exists here is taken as a mistyped local file, never sent to the Hub."""
    path = Path(name)
    if path.is_file():
        return path
    if path.parent != Path(".") and path.parent.is_dir():
        raise FileNotFoundError(f"{path}: no such file")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=name, repo_type="dataset"))
    except Exception as err:  # offline, unknown repo or file: each means "this file is not available"
        first_line = (str(err).splitlines() or [""])[0]
        raise FileNotFoundError(f"{name}: not a local file, and fetching it from the Hub dataset {repo} failed "
                                f"({type(err).__name__}: {first_line})") from err


def iter_hub_csv(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, row) for every row of a Hub puzzle CSV (`source,question,answer,rating`: Sudoku-Extreme, Maze-Hard),
    after checking the header and the field count; `where` is `file:line` for error messages."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HUB_CSV_HEADER:
            raise ValueError(f"{path}:1: header {header}, expected {HUB_CSV_HEADER}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 4:
                raise ValueError(f"{where}: {len(row)} fields, expected 4 ({','.join(HUB_CSV_HEADER)})")
            yield where, row
