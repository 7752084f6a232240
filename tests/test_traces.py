"""Reasoning traces: per-step predictions and latent changes agree with a hand-driven rollout; pictures and tables."""

import pytest
import torch
from PIL import Image
from test_depth import scripted_batch, scripted_head, tiny_pure

from hybrid.eval.traces import (
    latent_names,
    plot_changes,
    record_trace,
    render_grid_trace,
    render_token_table,
)


def sudoku_batch(size: int = 3):
    g = torch.Generator().manual_seed(2)
    return {
        "inputs": torch.randint(1, 6, (size, 16), generator=g),
        "labels": torch.randint(2, 6, (size, 16), generator=g),
        "puzzle_identifiers": torch.zeros(size, dtype=torch.long),
    }


def test_trace_follows_the_rollout_step_by_step():
    head = tiny_pure(halt_max_steps=2)
    batch = sudoku_batch()
    trace = record_trace(head, batch, steps=4, L_cycles=1)
    assert trace.preds.shape == (4, 3, 16) and set(trace.changes) == {"z_H", "z_L"}

    reasoner = head.act.reasoner
    z = reasoner.reset_carry(torch.ones(3, dtype=torch.bool), reasoner.empty_carry(batch))
    for step in range(4):
        out = reasoner(z, batch, L_cycles=1)
        torch.testing.assert_close(trace.preds[step], out.logits.argmax(-1), rtol=0, atol=0)
        torch.testing.assert_close(trace.q_halt[step], out.q_halt_logits)
        for name, new, old in zip(("z_H", "z_L"), out.carry, z):
            expected = (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1)
            torch.testing.assert_close(trace.changes[name][step], expected)
        z = out.carry
    assert (trace.changes["z_H"] > 0).all()


def test_trace_marks_correct_steps():
    _, head = scripted_head(max_steps=2)
    batch, _ = scripted_batch(settle=[1, 3, 9], halt_at=[1, 1, 1])
    trace = record_trace(head, batch, steps=4)
    assert trace.correct.T.tolist() == [[True] * 4, [False, False, True, True], [False] * 4]
    summary = trace.to_dict(1)
    assert summary["correct"] == [False, False, True, True]
    assert summary["wrong_tokens"] == [3, 3, 0, 0]
    assert list(summary["changes"]) == ["z"]


def test_grid_trace_pictures(tmp_path):
    trace = record_trace(tiny_pure(), sudoku_batch(), steps=3)
    strip = render_grid_trace(trace, 1, "sudoku", tmp_path / "t.png")
    gif = render_grid_trace(trace, 1, "sudoku", tmp_path / "t.gif")
    assert Image.open(strip).format == "PNG"
    with Image.open(gif) as image:
        assert image.n_frames == 3
    changes = plot_changes(trace.changes, tmp_path / "changes.png")
    assert Image.open(changes).format == "PNG"
    with pytest.raises(ValueError, match="row 5 is outside the traced batch of 3"):
        render_grid_trace(trace, 5, "sudoku", tmp_path / "x.png")


def test_token_table_marks_wrong_and_ignored_tokens(tmp_path):
    _, head = scripted_head(max_steps=2)
    batch, _ = scripted_batch(settle=[2], halt_at=[9], seq_len=3)
    batch["labels"][0, 1] = -100
    trace = record_trace(head, batch, steps=2)
    page = render_token_table(trace, 0, ["a", "<b>", "c"], tmp_path / "t.html").read_text()
    assert "&lt;b&gt;" in page  # tokens are escaped
    # Step 1 is wrong on the two labelled tokens, step 2 right; the ignored token is never marked wrong.
    assert page.count("class='wrong'") == 2
    assert page.count("<td>yes</td>") == 1 and page.count("<td>no</td>") == 1
    with pytest.raises(ValueError, match="2 tokens given for an example of 3 positions"):
        render_token_table(trace, 0, ["a", "b"], tmp_path / "t.html")


def test_bad_arguments():
    head = tiny_pure()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        record_trace(head, sudoku_batch(), steps=0)
    with pytest.raises(ValueError, match="needs the batch's 'labels'"):
        record_trace(head, {k: v for k, v in sudoku_batch().items() if k != "labels"}, steps=1)
    assert latent_names(1) == ("z",) and latent_names(2) == ("z_H", "z_L")
