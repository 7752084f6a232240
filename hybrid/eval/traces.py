"""Reasoning traces: what a model predicts after every supervision step, and how far its latents move.

`record_trace` rolls a batch forward for a number of supervision steps (beyond the trained depth if asked) and keeps,
per step and example, the argmax prediction, q_halt, whether the whole example is right, and the relative change of
each carried latent, ||z_s - z_{s-1}|| / ||z_{s-1}|| over all positions and features (z_{0} is the initial state).
Pictures: grid tasks as a strip / GIF through `hybrid.eval.pictures.render_steps`; text tasks as an HTML table (token,
label, prediction per step, wrong cells red); and a line plot of the latent changes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from hybrid.core.act import Batch
from hybrid.core.losses import IGNORE_LABEL_ID, ACTLoss, as_token_labels, correctness
from hybrid.core.rollout import rollout
from hybrid.eval.pictures import render_steps


def latent_names(num_latents: int) -> tuple[str, ...]:
    """Carry order of docs/design.md: (z_H, z_L), or (z,) for the single-latent core."""
    if num_latents == 2:
        return ("z_H", "z_L")
    return ("z",) if num_latents == 1 else tuple(f"z_{i}" for i in range(num_latents))


@dataclass
class Trace:
    batch: Batch  # the examples, on the CPU
    preds: Tensor  # [steps, B, S] argmax predictions (S = 1 for sequence labels)
    labels: Tensor  # [B, S] token labels (-100 = ignored)
    q_halt: Tensor  # [steps, B] halting logits
    correct: Tensor  # [steps, B] bool, every labelled token right
    changes: dict[str, Tensor]  # latent name -> [steps, B] relative L2 change of that step

    @property
    def num_steps(self) -> int:
        return self.preds.shape[0]

    def to_dict(self, row: int) -> dict:
        """One example's trace as plain lists (for JSON)."""
        return {
            "q_halt": self.q_halt[:, row].tolist(),
            "correct": self.correct[:, row].tolist(),
            "changes": {name: change[:, row].tolist() for name, change in self.changes.items()},
            "wrong_tokens": ((self.preds[:, row] != self.labels[row]) & (self.labels[row] != IGNORE_LABEL_ID))
            .sum(-1)
            .tolist(),
        }


def _relative_change(new: Tensor, old: Tensor) -> Tensor:
    new, old = new.float().flatten(1), old.float().flatten(1)
    return (new - old).norm(dim=1) / old.norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def record_trace(act_loss: ACTLoss, batch: Batch, *, steps: int, **step_kwargs) -> Trace:
    """Run `batch` for `steps` supervision steps from a fresh carry (eval mode); step_kwargs: H_cycles / L_cycles."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if "labels" not in batch:
        raise ValueError(f"a trace needs the batch's 'labels'; it has {sorted(batch)}")
    was_training = act_loss.training
    act_loss.eval()
    try:
        initial = act_loss.initial_carry(batch)
        previous = act_loss.act.reasoner.reset_carry(initial.halted, initial.inner)
        names = latent_names(len(previous))
        preds, q_halt, correct, changes = [], [], [], {name: [] for name in names}
        for step in rollout(act_loss, batch, max_steps=steps, **step_kwargs):
            carry, outputs = step.result.carry, step.result.outputs
            preds.append(outputs["preds"].cpu())
            q_halt.append(outputs["q_halt_logits"].cpu())
            correct.append(correctness(outputs["logits"], carry.current_data["labels"])[1].cpu())
            for name, new, old in zip(names, carry.inner, previous):
                changes[name].append(_relative_change(new, old).cpu())
            previous = carry.inner
    finally:
        act_loss.train(was_training)
    labels = as_token_labels(outputs["logits"], batch["labels"]).cpu()
    return Trace(
        batch={k: v.cpu() for k, v in batch.items()},
        preds=torch.stack(preds),
        labels=labels,
        q_halt=torch.stack(q_halt),
        correct=torch.stack(correct),
        changes={name: torch.stack(values) for name, values in changes.items()},
    )


def render_grid_trace(trace: Trace, row: int, kind: str, path, *, frame_ms: int = 600) -> Path:
    """Example `row` of a pure grid batch as a PNG strip or GIF (by the path's suffix): the prediction after every
    step beside the target, wrong cells marked. Ignored labels are drawn as token 0 (PAD)."""
    if "inputs" not in trace.batch:
        raise ValueError(f"grid traces need a pure-mode batch with 'inputs'; it has {sorted(trace.batch)}")
    _check_row(trace, row)
    target = torch.where(trace.labels[row] == IGNORE_LABEL_ID, 0, trace.labels[row])
    frames = [trace.preds[s, row] for s in range(trace.num_steps)]
    return render_steps(frames, target, kind, path, input=trace.batch["inputs"][row], frame_ms=frame_ms)


def render_token_table(trace: Trace, row: int, tokens: list[str], path) -> Path:
    """Example `row` of a text batch as an HTML table: one line per token (per text for sequence labels) with its
    label and the prediction after every step; wrong predictions red, ignored tokens grey."""
    _check_row(trace, row)
    path = Path(path)
    if path.suffix.lower() != ".html":
        raise ValueError(f"{path}: a token table is written as .html")
    labels, preds = trace.labels[row], trace.preds[:, row]
    if labels.shape[0] == 1 and len(tokens) != 1:
        tokens = ["[text]"]  # one sequence label: a single line for the whole text
    if len(tokens) != labels.shape[0]:
        raise ValueError(f"{len(tokens)} tokens given for an example of {labels.shape[0]} positions")
    head = "".join(f"<th>step {s + 1}</th>" for s in range(trace.num_steps))
    style = "td,th{padding:2px 6px;font-family:monospace}.wrong{background:#ffb0b0}.ignored{color:#aaa}"
    lines = [
        f"<!doctype html><meta charset='utf-8'><style>{style}</style>",
        f"<table><tr><th>token</th><th>label</th>{head}</tr>",
    ]
    for position, token in enumerate(tokens):
        label = int(labels[position])
        ignored = label == IGNORE_LABEL_ID
        cells = "".join(
            f"<td class='{'ignored' if ignored else 'wrong' if int(p) != label else ''}'>{int(p)}</td>"
            for p in preds[:, position]
        )
        shown = "" if ignored else label
        lines.append(
            f"<tr class='{'ignored' if ignored else ''}'><td>{html.escape(token)}</td><td>{shown}</td>{cells}</tr>"
        )
    correct = "".join(f"<td>{'yes' if c else 'no'}</td>" for c in trace.correct[:, row].tolist())
    lines.append(f"<tr><th>all right</th><td></td>{correct}</tr></table>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def plot_changes(changes: dict[str, Tensor], path) -> Path:
    """PNG: relative change of every latent per step (`Trace.changes`, [steps, B] each; one thin line per example,
    the mean bold), log scale."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the change plot is written as .png")
    if not changes:
        raise ValueError("plot_changes needs at least one latent's changes")
    fig = Figure(figsize=(4 * len(changes), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(changes)))
    for ax, (name, change) in zip(axes, changes.items()):
        values = change.numpy()
        x = np.arange(1, values.shape[0] + 1)
        ax.plot(x, values, color="#7090c0", linewidth=0.7, alpha=0.6)
        ax.plot(x, values.mean(axis=1), color="#003080", linewidth=2, label="mean")
        ax.set_yscale("log")
        ax.set_xlabel("supervision step")
        ax.set_ylabel(f"||Δ{name}|| / ||{name}||")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


@torch.no_grad()
def walk_trace(hf_model, batch: Batch) -> list[dict[str, list[int]]]:
    """A person-graph chain head's walk out from A for a one-row batch, one entry per step: the people (entity ids)
    first reached then and the relation class the output layer reads from each one's state. Every person's state
    answers "how is this person related to A?" as B's does (the core treats them alike), so the walk shows the
    answer forming along the chain, not only at B."""
    reasoner = hf_model.reasoner
    graph, _ = reasoner.encoder(batch)
    steps = []
    for h, new in reasoner.core.walk(graph):
        people = new[0].nonzero().flatten()
        logits = reasoner.heads.output(reasoner.core.readout(h[0, people]))
        steps.append({"people": people.tolist(), "relations": logits.argmax(-1).tolist()})
    return steps


def _check_row(trace: Trace, row: int) -> None:
    if not 0 <= row < trace.preds.shape[1]:
        raise ValueError(f"row {row} is outside the traced batch of {trace.preds.shape[1]} examples")


__all__ = ["Trace", "latent_names", "plot_changes", "record_trace", "render_grid_trace", "render_token_table",
           "walk_trace"]
