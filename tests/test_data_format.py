import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from hybrid.data.format import (
    DatasetFormatError,
    DatasetMetadata,
    atomic_output_dir,
    read_identifiers,
    read_split,
    write_identifiers,
    write_split,
)


def _meta(**over):
    base = dict(seq_len=4, vocab_size=5, pad_id=0, ignore_label_id=0, blank_identifier_id=0, num_puzzle_identifiers=3,
                total_groups=2, mean_puzzle_examples=1.5, total_puzzles=2, sets=["all"])
    return DatasetMetadata(**{**base, **over})


def _arrays():
    return dict(inputs=np.array([[1, 2, 3, 4], [2, 2, 2, 2], [4, 3, 2, 1]]), labels=np.ones((3, 4), int),
                puzzle_identifiers=np.array([1, 2]), puzzle_indices=np.array([0, 2, 3]), group_indices=np.array([0, 1, 2]))


def _hash_tree(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("folder", ["sudoku-extreme/real-train-1k", "maze-30x30-hard-1k"])
def test_official_folder_round_trips_byte_for_byte(data_dir, tmp_path, folder):
    src = data_dir / folder
    splits = [p.name for p in src.iterdir() if (p / "dataset.json").is_file()]
    with atomic_output_dir(tmp_path / "out") as out:
        for split in splits:
            ds = read_split(src, split)
            assert isinstance(ds.inputs, np.memmap)
            write_split(out, split, inputs=ds.inputs, labels=ds.labels, puzzle_identifiers=ds.puzzle_identifiers,
                        puzzle_indices=ds.puzzle_indices, group_indices=ds.group_indices, metadata=ds.metadata)
        write_identifiers(out, read_identifiers(src))
    for split in splits:
        a, b = read_split(src, split), read_split(tmp_path / "out", split)
        assert a.metadata == b.metadata
        for name in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
            assert getattr(a, name).dtype == getattr(b, name).dtype
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert _hash_tree(src / split) == _hash_tree(tmp_path / "out" / split)


def test_written_dtypes_and_json_fields_match_official(tmp_path):
    write_split(tmp_path, "train", **_arrays(), metadata=_meta())
    assert np.load(tmp_path / "train/all__inputs.npy").dtype == np.uint8
    assert np.load(tmp_path / "train/all__puzzle_indices.npy").dtype == np.int32
    raw = json.loads((tmp_path / "train/dataset.json").read_text())
    assert list(raw) == ["seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id",
                         "num_puzzle_identifiers", "total_groups", "mean_puzzle_examples", "total_puzzles", "sets"]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(puzzle_identifiers=np.array([1, 3])), "beyond"),
        (dict(labels=np.ones((2, 4), int)), "labels shape"),
        (dict(puzzle_indices=np.array([0, 2, 4])), "puzzle_indices must run from 0 to 3"),
        (dict(group_indices=np.array([0, 2])), "total_groups"),
        (dict(inputs=np.full((3, 4), 7)), "outside 0..vocab_size-1"),
    ],
)
def test_inconsistent_arrays_are_rejected(tmp_path, change, message):
    with pytest.raises(DatasetFormatError, match=message):
        write_split(tmp_path, "train", **{**_arrays(), **change}, metadata=_meta())


def test_missing_file_and_missing_key_are_named(tmp_path):
    write_split(tmp_path, "train", **_arrays(), metadata=_meta())
    (tmp_path / "train/all__labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="all__labels.npy"):
        read_split(tmp_path, "train")
    raw = json.loads((tmp_path / "train/dataset.json").read_text())
    del raw["total_puzzles"]
    (tmp_path / "train/dataset.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetFormatError, match="total_puzzles"):
        read_split(tmp_path, "train")


def test_atomic_output_dir_refuses_existing_and_cleans_up(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_output_dir(target):
            pass
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in target.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
