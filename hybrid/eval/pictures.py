"""Pictures of grids in dataset tokens: Sudoku, Maze and ARC, as PNG (and animated GIF for step sequences).

Grids are token arrays as stored by the builders, flat ([81] / [900]) or square:
- sudoku: 1 blank, 2..10 digits 1..9;
- maze: 1 wall, 2 open, 3 start, 4 goal, 5 path;
- arc: 0 PAD, 1 EOS, 2..11 colours 0..9 (the 10 standard ARC colours).
Wrong cells (prediction != target where the target is supervised) are outlined in red.
Uses matplotlib's Agg canvas directly (no pyplot state, safe in headless training jobs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from hybrid.data.arc import SEQ_LEN as ARC_SEQ_LEN

ARC_COLOURS = (
    "#000000",  # 0 black
    "#0074D9",  # 1 blue
    "#FF4136",  # 2 red
    "#2ECC40",  # 3 green
    "#FFDC00",  # 4 yellow
    "#AAAAAA",  # 5 grey
    "#F012BE",  # 6 magenta
    "#FF851B",  # 7 orange
    "#7FDBFF",  # 8 sky
    "#870C25",  # 9 maroon
)
# Colour of each token id, per kind. PAD is drawn light so the predicted size (EOS border) stands out.
PALETTES = {
    "sudoku": ("#f0f0f0",) + ("#ffffff",) * 10,
    "maze": ("#f0f0f0", "#303030", "#ffffff", "#2ECC40", "#FF4136", "#FFDC00"),
    "arc": ("#ffffff", "#c8c8c8") + ARC_COLOURS,
}
KINDS = tuple(PALETTES)
WRONG_MARK = "#ff0000"  # pure red, unlike ARC colour 2 and the maze goal
PANEL_INCHES = 3.0


def grid_sizes_expected(kind: str, seq_len: int, vocab_size: int) -> str | None:
    """None when a dataset of this seq_len and vocab_size holds `kind` grids, else the sizes `kind` needs. Sudoku
    n x n: n*n cells and n + 2 tokens (pad, blank, n digits); maze: a square and its 6 tokens; ARC: the 30x30 canvas.
    A 4x4 Sudoku and a 4x4 maze have the same sizes and pass either check."""
    side = math.isqrt(seq_len)
    square = side * side == seq_len
    if kind == "sudoku":
        fits, expected = square and vocab_size == side + 2, "seq_len=n*n, vocab_size=n+2 (9x9: 81, 11)"
    elif kind == "maze":
        vocab = len(PALETTES["maze"])
        fits, expected = square and vocab_size == vocab, f"a square seq_len, vocab_size={vocab}"
    elif kind == "arc":
        vocab = len(PALETTES["arc"])
        fits, expected = (seq_len, vocab_size) == (ARC_SEQ_LEN, vocab), f"seq_len={ARC_SEQ_LEN}, vocab_size={vocab}"
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return None if fits else expected


def as_grid(tokens, kind: str) -> np.ndarray:
    """Validate `tokens` for `kind` and return them as a square 2-D int array."""
    if kind not in PALETTES:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    grid = np.asarray(tokens.detach().cpu() if hasattr(tokens, "detach") else tokens)
    if not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"{kind} tokens must be integers, got dtype {grid.dtype}")
    if grid.ndim == 1:
        side = int(round(np.sqrt(grid.size)))
        if side * side != grid.size:
            raise ValueError(f"{kind} tokens: a flat grid needs a square length (81, 900), got {grid.size}")
        grid = grid.reshape(side, side)
    if grid.ndim != 2:
        raise ValueError(f"{kind} tokens must be 1-D or 2-D, got shape {grid.shape}")
    vocab = len(PALETTES[kind])
    if grid.size and (grid.min() < 0 or grid.max() >= vocab):
        raise ValueError(f"{kind} tokens must lie in 0..{vocab - 1}, got {grid.min()}..{grid.max()}")
    return grid.astype(np.int64)


def wrong_cells(prediction: np.ndarray, target: np.ndarray, kind: str) -> np.ndarray:
    """Boolean mask of supervised cells where the prediction differs (ARC does not supervise PAD)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    wrong = prediction != target
    return wrong & (target != 0) if kind == "arc" else wrong


def _visible_extent(grids: list[np.ndarray], kind: str) -> tuple[int, int]:
    """ARC grids live in the top-left of a 30x30 PAD canvas: show only the rows/columns any panel uses."""
    if kind != "arc":
        return grids[0].shape
    used = np.any([g != 0 for g in grids], axis=0)
    rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
    return (int(rows[-1]) + 1 if rows.size else 1), (int(cols[-1]) + 1 if cols.size else 1)


def _draw(ax, grid: np.ndarray, kind: str, title: str, extent: tuple[int, int], *, givens=None, wrong=None) -> None:
    h, w = extent
    grid = grid[:h, :w]
    palette = np.array([to_rgb(c) for c in PALETTES[kind]])
    ax.imshow(palette[grid], interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.grid(which="minor", color="#b0b0b0", linewidth=0.3 if max(h, w) > 12 else 0.8)
    ax.tick_params(which="minor", length=0)
    if kind == "sudoku":
        from hybrid.data.sudoku import BOXES

        box_rows, box_cols = BOXES.get(h, (h, w))  # 4x4: 2x2 boxes, 6x6: 2x3, 9x9: 3x3
        for k in range(0, h + 1, box_rows):
            ax.axhline(k - 0.5, color="black", linewidth=2)
        for k in range(0, w + 1, box_cols):
            ax.axvline(k - 0.5, color="black", linewidth=2)
        for (r, c), token in np.ndenumerate(grid):
            if token >= 2:
                given = givens is not None and givens[r, c]
                ax.text(c, r, str(token - 1), ha="center", va="center", fontsize=11,
                        color="black" if given else "#0050c0", fontweight="bold" if given else "normal")
    if wrong is not None:
        for r, c in zip(*np.nonzero(wrong[:h, :w])):
            # Above the cell grid lines, unsmoothed, so the mark keeps its exact colour.
            mark = Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=WRONG_MARK, linewidth=2, antialiased=False)
            mark.set_zorder(3)
            ax.add_patch(mark)


def _figure(num_panels: int) -> Figure:
    fig = Figure(figsize=(PANEL_INCHES * num_panels, PANEL_INCHES + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _check_path(path, suffixes: tuple[str, ...]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: picture path must end in one of {suffixes}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def render_comparison(input, prediction, target, kind: str, path) -> Path:
    """PNG of input / prediction / target side by side, the prediction's wrong cells outlined."""
    path = _check_path(path, (".png",))
    x, p, y = (as_grid(g, kind) for g in (input, prediction, target))
    wrong = wrong_cells(p, y, kind)
    givens = x >= 2 if kind == "sudoku" else None
    extent = _visible_extent([x, p, y], kind)
    fig = _figure(3)
    axes = fig.subplots(1, 3)
    _draw(axes[0], x, kind, "input", extent, givens=givens)
    _draw(axes[1], p, kind, f"prediction ({int(wrong.sum())} wrong)", extent, givens=givens, wrong=wrong)
    _draw(axes[2], y, kind, "target", extent, givens=givens)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _frame_image(frame: np.ndarray, target: np.ndarray, step: int, kind: str, extent, givens) -> Image.Image:
    fig = _figure(2)
    axes = fig.subplots(1, 2)
    wrong = wrong_cells(frame, target, kind)
    _draw(axes[0], frame, kind, f"step {step} ({int(wrong.sum())} wrong)", extent, givens=givens, wrong=wrong)
    _draw(axes[1], target, kind, "target", extent, givens=givens)
    fig.tight_layout()
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def render_steps(frames, target, kind: str, path, *, input=None, frame_ms: int = 600) -> Path:
    """Predictions over steps: a PNG strip (one panel per step, then the target) or, for a .gif path, an animation
    with one frame per step (prediction beside the target). `input` marks Sudoku givens."""
    path = _check_path(path, (".png", ".gif"))
    grids = [as_grid(f, kind) for f in frames]
    if not grids:
        raise ValueError("render_steps needs at least one frame")
    y = as_grid(target, kind)
    givens = as_grid(input, kind) >= 2 if kind == "sudoku" and input is not None else None
    extent = _visible_extent(grids + [y], kind)
    if path.suffix.lower() == ".gif":
        images = [_frame_image(g, y, i + 1, kind, extent, givens) for i, g in enumerate(grids)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        return path
    fig = _figure(len(grids) + 1)
    axes = fig.subplots(1, len(grids) + 1)
    for i, g in enumerate(grids):
        wrong = wrong_cells(g, y, kind)
        _draw(axes[i], g, kind, f"step {i + 1} ({int(wrong.sum())} wrong)", extent, givens=givens, wrong=wrong)
    _draw(axes[-1], y, kind, "target", extent, givens=givens)
    fig.tight_layout()
    fig.savefig(path)
    return path
