"""Pictures: PNG comparisons for the three kinds, wrong-cell marks, step strips and animated GIFs, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from hybrid.data.arc import grid_to_tokens
from hybrid.eval.pictures import as_grid, grid_sizes_expected, render_comparison, render_steps, wrong_cells


def examples(kind):
    rng = np.random.default_rng(0)
    if kind == "sudoku":
        target = rng.integers(2, 11, size=81)
        return np.where(rng.random(81) < 0.4, target, 1), target
    if kind == "maze":
        x = rng.choice([1, 2], size=900, p=[0.3, 0.7])
        x[0], x[-1] = 3, 4
        y = x.copy()
        y[1:29] = 5
        return x, y
    grid = rng.integers(0, 10, size=(4, 6)).astype(np.uint8)
    return grid_to_tokens(grid), grid_to_tokens((grid + 1) % 10)


def pure_red_pixels(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((rgb == (255, 0, 0)).all(axis=-1).sum())


@pytest.mark.parametrize("kind", ["sudoku", "maze", "arc"])
def test_comparison_png_marks_wrong_cells(kind, tmp_path):
    x, y = examples(kind)
    right = render_comparison(x, y, y, kind, tmp_path / "right.png")
    wrong_pred = y.copy()
    wrong_pred[3] = 2 if y[3] != 2 else 3
    wrong = render_comparison(torch.tensor(x), torch.tensor(wrong_pred), y, kind=kind, path=tmp_path / "wrong.png")
    with Image.open(right) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # three panels side by side
    assert pure_red_pixels(right) == 0
    assert pure_red_pixels(wrong) > 20


def test_wrong_cells_ignore_arc_padding():
    y = grid_to_tokens(np.zeros((2, 2), np.uint8)).reshape(30, 30).astype(np.int64)
    p = y.copy()
    p[10, 10] = 5  # beyond the target's EOS border: PAD is not supervised
    p[0, 0] = 3
    assert wrong_cells(p, y, "arc").sum() == 1 and wrong_cells(p, y, "maze").sum() == 2


def test_steps_png_strip_and_gif(tmp_path):
    x, y = examples("sudoku")
    frames = [x, np.where(x == 1, 2, x), y]
    strip = render_steps(frames, y, "sudoku", tmp_path / "steps.png", input=x)
    with Image.open(strip) as im:
        assert im.format == "PNG" and im.size[0] > 3 * im.size[1]  # 3 frames + target
    gif = render_steps(frames, y, "sudoku", tmp_path / "steps.gif", input=x)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
        im.seek(2)
        last = np.asarray(im.convert("RGB"))
        im.seek(0)
        first = np.asarray(im.convert("RGB"))
    assert not np.array_equal(first, last)


def test_bad_input(tmp_path):
    x, y = examples("arc")
    with pytest.raises(ValueError, match="kind must be one of"):
        as_grid(x, "chess")
    with pytest.raises(ValueError, match=r"maze tokens must lie in 0..5, got 0..11"):
        as_grid(np.arange(12).repeat(75), "maze")
    with pytest.raises(ValueError, match="square length"):
        as_grid(np.ones(80, dtype=np.int64), "sudoku")
    with pytest.raises(ValueError, match="must be integers"):
        as_grid(np.ones(81), "sudoku")
    with pytest.raises(ValueError, match="must end in one of"):
        render_comparison(x, y, y, "arc", tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="prediction shape"):
        render_comparison(x, y[:81], y, "arc", tmp_path / "a.png")
    with pytest.raises(ValueError, match="at least one frame"):
        render_steps([], y, "arc", tmp_path / "s.gif")


# (seq_len, vocab_size) of Sudoku-Extreme, a 6x6 sudoku-gen board, Maze-Hard, a 9x9 maze-gen maze and ARC
SIZES = {"sudoku": [(81, 11), (36, 8)], "maze": [(900, 6), (81, 6)], "arc": [(900, 12)]}


def test_each_kind_accepts_its_own_data_sizes_only():
    for kind in SIZES:
        for other, sizes in SIZES.items():
            for seq_len, vocab in sizes:
                expected = grid_sizes_expected(kind, seq_len, vocab)
                assert (expected is None) == (other == kind), (kind, seq_len, vocab)
    assert grid_sizes_expected("maze", 80, 6) == "a square seq_len, vocab_size=6"
    assert grid_sizes_expected("arc", 81, 11) == "seq_len=900, vocab_size=12"
    with pytest.raises(ValueError, match="kind must be one of"):
        grid_sizes_expected("chess", 81, 11)
