import numpy as np
import pytest

from hybrid.data.format import read_split
from hybrid.data.maze import (
    GOAL,
    PATH,
    START,
    WALL,
    augment_dihedral,
    build_maze,
    decode,
    dihedral,
    generate_maze,
    generate_maze_dataset,
    maze_hard_path,
    read_maze_csv,
    shortest_path,
)
from test_data_format import _hash_tree


def _assert_label_is_shortest_path(inp: np.ndarray, label: np.ndarray):
    side = int(round(inp.size**0.5))
    grid, lab = inp.reshape(side, side), label.reshape(side, side)
    path = shortest_path(grid)
    drawn = lab == PATH
    assert np.array_equal(lab[~drawn], grid[~drawn]) and np.all(grid[drawn] == 2)
    assert drawn.sum() + 2 == len(path)
    # the drawn cells form a connected S..G chain: every path cell has exactly two path/S/G neighbours
    on = drawn | (grid == START) | (grid == GOAL)
    padded = np.pad(on, 1)
    neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert np.all(neighbours[drawn] == 2)
    return len(path)


def test_dihedral_convention():
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(dihedral(x, 1), np.rot90(x))
    np.testing.assert_array_equal(dihedral(x, 6), x.T)
    np.testing.assert_array_equal(dihedral(x, 7), np.fliplr(np.rot90(x)))
    inverse = [0, 3, 2, 1, 4, 5, 6, 7]
    for t in range(8):
        np.testing.assert_array_equal(dihedral(dihedral(x, t), inverse[t]), x)


def test_csv_and_npy_agree_and_augmentation_keeps_path_length(data_dir):
    root = data_dir / "maze-30x30-hard-1k"
    inputs, labels = read_maze_csv(root / "train.csv")
    ds = read_split(root, "train")
    np.testing.assert_array_equal(inputs, ds.inputs)
    np.testing.assert_array_equal(labels, ds.labels)
    aug_in, aug_lab = augment_dihedral(inputs[:4], labels[:4])
    assert aug_in.shape == (4, 8, 900)
    for m in range(4):
        length = _assert_label_is_shortest_path(inputs[m], labels[m])
        assert length >= 110
        assert len({v.tobytes() for v in aug_in[m]}) == 8
        for t in range(8):
            assert _assert_label_is_shortest_path(aug_in[m, t], aug_lab[m, t]) == length


def test_build_from_official_folder_with_aug(data_dir, tmp_path):
    build_maze(tmp_path / "out", input_dir=data_dir / "maze-30x30-hard-1k", aug=True, subsample_size=5)
    train, test = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "test")
    assert (train.num_groups, train.num_puzzles, test.num_puzzles) == (5, 40, 1000)
    assert train.metadata.vocab_size == 6 and train.metadata.total_puzzles == 5
    with pytest.raises(FileExistsError):
        build_maze(tmp_path / "out", input_dir=data_dir / "maze-30x30-hard-1k")


@pytest.mark.parametrize("row, message", [(",#S G ,#SoG ,", r"5 cells, expected a square"),
                                          (",#SxG,#SoG,", r"characters \['x'\]"), (",#S G", r"2 fields")])
def test_malformed_csv_rows(tmp_path, row, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,question,answer,rating\n,#S G,#SGo,\n" + row + "\n")
    with pytest.raises(ValueError, match=rf"bad\.csv:3: .*{message}"):
        read_maze_csv(bad)


def test_generator_is_seeded_and_respects_min_path(tmp_path):
    hashes = []
    for name in ("a", "b"):
        generate_maze_dataset(tmp_path / name, size=12, min_path_len=20, train_size=6, test_size=2, aug=True, seed=3)
        hashes.append(_hash_tree(tmp_path / name))
    assert hashes[0] == hashes[1]
    ds = read_split(tmp_path / "a", "train")
    assert ds.num_puzzles == 48 and ds.metadata.seq_len == 144
    for inp, lab in zip(np.asarray(ds.inputs), np.asarray(ds.labels)):
        grid = inp.reshape(12, 12)
        assert (grid == START).sum() == 1 and (grid == GOAL).sum() == 1 and (grid == WALL).any()
        assert _assert_label_is_shortest_path(grid, lab) >= 20
    assert "S" in decode(ds.inputs[0])


def _draw(grid: np.ndarray, path: list) -> np.ndarray:
    label = grid.copy()
    for cell in path[1:-1]:
        label[cell] = PATH
    return label


def test_maze_hard_path_rule_reproduces_every_official_label(data_dir):
    root = data_dir / "maze-30x30-hard-1k"
    if not root.is_dir():
        pytest.skip(f"the Maze-Hard data folder {root} does not exist (set HYBRID_DATA_DIR to the shared data)")
    bfs_matches = 0
    for split in ("train", "test"):
        ds = read_split(root, split)
        for inp, lab in zip(np.asarray(ds.inputs), np.asarray(ds.labels)):
            grid = inp.reshape(30, 30)
            np.testing.assert_array_equal(_draw(grid, maze_hard_path(grid)).ravel(), lab)
            bfs_matches += np.array_equal(_draw(grid, shortest_path(grid)).ravel(), lab)
    assert bfs_matches < 20  # the rule matters: BFS parent pointers draw another of the many shortest paths


def test_generator_path_rules(tmp_path):
    rng_args = dict(size=10, wall_density=0.3, min_path_len=12)
    differ = 0
    for index in range(20):
        grid, label = generate_maze(np.random.default_rng([0, index]), **rng_args)
        old_grid, old_label = generate_maze(np.random.default_rng([0, index]), **rng_args, path_rule="bfs")
        np.testing.assert_array_equal(grid, old_grid)  # the rule changes only which shortest path is drawn
        np.testing.assert_array_equal(label, _draw(grid, maze_hard_path(grid)))
        np.testing.assert_array_equal(old_label, _draw(grid, shortest_path(grid)))
        differ += not np.array_equal(label, old_label)
    assert differ > 0
    with pytest.raises(ValueError, match="path_rule 'dfs'"):
        generate_maze(np.random.default_rng(0), 6, wall_density=0.3, min_path_len=4, path_rule="dfs")


def test_cpu_maze_configs_build_their_model_for_the_data_their_header_builds():
    import shlex
    from pathlib import Path

    import torch

    from hybrid.config import load_config
    from hybrid.models.pure import build_pure_model
    from hybrid.train.config import PureTrainConfig

    dense_params = {"maze6": 157_570, "maze10": 131_970}  # as train_pure.py logs them
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "cpu").glob("maze*.yaml"))
    assert {p.stem for p in configs} == set(dense_params)
    for path in configs:
        build = shlex.split(path.read_text().splitlines()[0].split("&&")[0].lstrip("# "))
        assert build[:3] == ["python", "recipes/build_data.py", "maze-gen"], path
        flags = dict(zip(build[3::2], build[4::2]))
        cfg = load_config(PureTrainConfig, path)
        assert flags["--output-dir"] == cfg.data.path, path
        side = int(flags["--size"])
        arch = cfg.arch_config({"seq_len": side * side, "vocab_size": 6, "num_puzzle_identifiers": 1})
        with torch.device("meta"):
            reasoner, _ = build_pure_model(arch)
        assert sum(p.numel() for p in reasoner.parameters() if p.requires_grad) == dense_params[path.stem], path
