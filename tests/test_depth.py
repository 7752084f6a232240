"""Depth sweeps and adaptive halting: agreement with `evaluate`, calibration and compute counts, early exit rules,
and the loaders for pure runs and saved hybrid models."""

import math

import pytest
import torch
from torch import nn

from hybrid.core.act import ACT, ReasonerOutput
from hybrid.core.layers import CastedLinear
from hybrid.core.losses import ACTLoss
from hybrid.eval.compute import cycle_counts
from hybrid.eval.depth import CALIBRATION_BINS, adaptive_evaluate, depth_sweep
from hybrid.eval.plots import plot_adaptive, plot_sweep
from hybrid.eval.research import load_research_model, research_batches
from hybrid.eval.loop import evaluate
from hybrid.models.pure import PureConfig, build_pure_model

VOCAB = 5
EVALUATE_KEYS = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss")


class ScriptedReasoner(nn.Module):
    """A reasoner whose behaviour per example is set by the batch: it predicts wrong and different tokens every step
    before step `settle`, the labels from then on, and q_halt = +5 from step `halt_at` (-5 before). Records the batch
    size of every call, so tests can see the batch shrink."""

    def __init__(self):
        super().__init__()
        self.batch_sizes: list[int] = []

    def empty_carry(self, batch):
        return (torch.zeros(batch["labels"].shape[0], 1, 1),)

    def reset_carry(self, reset, carry):
        return (torch.where(reset.view(-1, 1, 1), 0.0, carry[0]),)

    def forward(self, carry, batch, **cycles):
        self.batch_sizes.append(batch["labels"].shape[0])
        z = carry[0] + 1
        step = z[:, 0, 0].long()
        labels = batch["labels"].clamp(min=0)  # ignored positions (-100) predict token 0 once settled
        # Offsets 1..VOCAB-1 cycle, so the wrong prediction never equals the label and changes every step.
        wrong = (labels + 1 + step[:, None] % (VOCAB - 1)) % VOCAB
        preds = torch.where((step >= batch["settle"])[:, None], labels, wrong)
        q_halt = torch.where(step >= batch["halt_at"], 5.0, -5.0)
        logits = nn.functional.one_hot(preds, VOCAB).float()
        return ReasonerOutput(
            carry=(z,), logits=logits, q_halt_logits=q_halt, q_continue_logits=torch.zeros_like(q_halt), z=(z,)
        )


def scripted_head(max_steps: int) -> tuple[ScriptedReasoner, ACTLoss]:
    reasoner = ScriptedReasoner()
    act = ACT(reasoner, halt_max_steps=max_steps, halt_exploration_prob=0.0)
    return reasoner, ACTLoss(act, loss_type="softmax_cross_entropy").eval()


def scripted_batch(settle: list[int], halt_at: list[int], seq_len: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = len(settle)
    batch = {
        "labels": torch.randint(0, VOCAB, (n, seq_len), generator=g),
        "settle": torch.tensor(settle),
        "halt_at": torch.tensor(halt_at),
    }
    return batch, torch.ones(n, dtype=torch.bool)


def tiny_pure(halt_max_steps: int = 3, **overrides) -> ACTLoss:
    torch.manual_seed(0)
    cfg = PureConfig(
        seq_len=16, vocab_size=6, num_puzzle_identifiers=2, hidden_size=32, num_heads=2, expansion=2,
        puzzle_emb_ndim=32, puzzle_emb_len=1, forward_dtype="float32", H_cycles=2, L_cycles=2, L_layers=1,
        halt_max_steps=halt_max_steps, **overrides,
    )  # fmt: skip
    _, act = build_pure_model(cfg)
    return ACTLoss(act, loss_type=cfg.loss_type).eval()


def grid_batches(num_batches: int = 2, size: int = 4, pad_rows: int = 0):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(num_batches):
        batch = {
            "inputs": torch.randint(1, 6, (size, 16), generator=g),
            "labels": torch.randint(2, 6, (size, 16), generator=g),
            "puzzle_identifiers": torch.randint(0, 2, (size,), generator=g),
        }
        mask = torch.ones(size, dtype=torch.bool)
        if pad_rows:
            batch["labels"][-pad_rows:] = -100  # eval_batches' padding: no labels
            mask[-pad_rows:] = False
        out.append((batch, mask))
    return out


def assert_same_metrics(ours: dict, reference: dict, keys=EVALUATE_KEYS):
    for key in keys:
        assert ours[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-12), key


# --- the sweep ----------------------------------------------------------------------------------------------------


def test_sweep_reads_every_step_of_one_rollout_like_evaluate():
    head = tiny_pure(halt_max_steps=3)
    batches = grid_batches(pad_rows=1)
    rows = depth_sweep(head, batches, steps=[1, 2, 3, 5], cycles=[(None, None), (1, 3)])
    assert [(r["H_cycles"], r["L_cycles"], r["steps"]) for r in rows] == [
        (2, 2, 1), (2, 2, 2), (2, 2, 3), (2, 2, 5), (1, 3, 1), (1, 3, 2), (1, 3, 3), (1, 3, 5)
    ]  # fmt: skip
    for row in rows:
        cycles = {"H_cycles": row["H_cycles"], "L_cycles": row["L_cycles"]}
        # The trained depth (3) and beyond it (5), each from scratch, with and without overridden (T, n).
        reference = evaluate(head, batches, halt_max_steps=row["steps"], **cycles)
        assert_same_metrics(row, reference)
        assert row["count"] == 6  # padding rows are never counted
        assert row["net_calls"] == row["steps"] * row["H_cycles"] * (row["L_cycles"] + 1)


def test_sweep_respects_max_examples():
    head = tiny_pure()
    rows = depth_sweep(head, grid_batches(num_batches=3), steps=[2], max_examples=5)
    assert rows[0]["count"] == 8  # whole batches, stopping once 5 examples were seen (as evaluate does)
    assert_same_metrics(rows[0], evaluate(head, grid_batches(num_batches=3), halt_max_steps=2, max_examples=5))


def test_calibration_matches_a_hand_computation():
    settle, halt_at = [1, 2, 3, 4, 9, 9], [1, 3, 2, 9, 9, 1]
    _, head = scripted_head(max_steps=4)
    rows = depth_sweep(head, [scripted_batch(settle, halt_at)], steps=[1, 2, 3, 4])
    for row in rows:
        s = row["steps"]
        correct = [float(s >= c) for c in settle]
        confidence = [1 / (1 + math.exp(-5.0 if s >= h else 5.0)) for h in halt_at]
        assert row["exact_accuracy"] == pytest.approx(sum(correct) / 6)
        assert row["brier"] == pytest.approx(sum((p - y) ** 2 for p, y in zip(confidence, correct)) / 6)
        ece = 0.0
        for b in range(CALIBRATION_BINS):
            members = [i for i, p in enumerate(confidence) if min(int(p * CALIBRATION_BINS), CALIBRATION_BINS - 1) == b]
            ece += abs(sum(confidence[i] - correct[i] for i in members))
        assert row["ece"] == pytest.approx(ece / 6)
        assert row["q_halt_accuracy"] == pytest.approx(
            sum((p > 0.5) == (y == 1) for p, y in zip(confidence, correct)) / 6
        )


def _core_matmul_flops_per_call(head: ACTLoss, seq_len: int) -> int:
    """2 * in * out per position for every linear map of the network, plus QK^T and AV of attention."""
    core = head.act.reasoner.core
    linear = sum(
        2 * seq_len * m.weight.shape[0] * m.weight.shape[1] for m in core.modules() if isinstance(m, CastedLinear)
    )
    attention = sum(4 * seq_len * seq_len * layer.attn.qkv.weight.shape[1] for layer in core.net.layers)
    return linear + attention


def test_compute_counts_network_calls_and_their_matmul_flops():
    head = tiny_pure()
    rows = depth_sweep(head, grid_batches(), steps=[1, 4], cycles=[(2, 2), (1, 1), (3, 1)])
    per_call = _core_matmul_flops_per_call(head, seq_len=17)  # 16 cells + 1 puzzle prefix position
    for row in rows:
        calls = row["steps"] * row["H_cycles"] * (row["L_cycles"] + 1)
        assert row["net_calls"] == calls
        assert row["flops"] == calls * per_call


def test_cycle_counts_and_bad_steps():
    head = tiny_pure()
    assert cycle_counts(head) == (2, 2)
    assert cycle_counts(head, 4, None) == (4, 2)
    with pytest.raises(ValueError, match="T=0"):
        cycle_counts(head, 0, 1)
    with pytest.raises(ValueError, match="positive supervision step counts"):
        depth_sweep(head, grid_batches(), steps=[0, 2])


def test_plots_are_written(tmp_path):
    head = tiny_pure()
    rows = depth_sweep(head, grid_batches(num_batches=1), steps=[1, 2], cycles=[(None, None), (1, 1)])
    adaptive = [
        {"rule": "threshold=0", **adaptive_evaluate(head, grid_batches(num_batches=1), max_steps=2, threshold=0.0)}
    ]
    for path in (
        plot_sweep(rows, tmp_path / "s.png", trained_steps=3),
        plot_adaptive(rows[:2], adaptive, tmp_path / "a.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="written as .png"):
        plot_sweep(rows, tmp_path / "s.jpg")


# --- adaptive halting --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 1e9])
def test_no_early_exit_equals_fixed_depth(threshold):
    head = tiny_pure(halt_max_steps=3)
    batches = grid_batches(pad_rows=1)
    result = adaptive_evaluate(head, batches, max_steps=4, threshold=threshold)
    assert_same_metrics(result, evaluate(head, batches, halt_max_steps=4), keys=EVALUATE_KEYS[:5])
    assert result["halted_early"] == 0
    assert result["net_calls"] == 4 * 2 * 3


def test_halting_head_exit_shrinks_the_batch():
    settle, halt_at = [1, 1, 3, 5, 2, 9], [1, 2, 3, 3, 1, 9]
    reasoner, head = scripted_head(max_steps=6)
    result = adaptive_evaluate(head, [scripted_batch(settle, halt_at)], max_steps=6, threshold=0.0)
    stops = [min(h, 6) for h in halt_at]
    assert reasoner.batch_sizes == [sum(s >= step for s in stops) for step in range(1, 7)]  # 6, 4, 3, 1, 1, 1
    assert result["steps"] == pytest.approx(sum(stops) / 6)
    assert result["exact_accuracy"] == pytest.approx(sum(s >= c for s, c in zip(stops, settle)) / 6)
    assert result["halted_early"] == pytest.approx(5 / 6)


def test_no_change_rule_halts_stable_predictions():
    settle, halt_at = [1, 2, 4, 9], [9, 9, 9, 9]
    reasoner, head = scripted_head(max_steps=6)
    result = adaptive_evaluate(head, [scripted_batch(settle, halt_at)], max_steps=6, patience=2)
    # Stable from step `settle`: unchanged at settle + 1 and settle + 2, so it stops there (or at the limit).
    stops = [min(c + 2, 6) for c in settle]
    assert result["steps"] == pytest.approx(sum(stops) / 4)
    assert reasoner.batch_sizes == [sum(s >= step for s in stops) for step in range(1, 7)]
    assert result["exact_accuracy"] == pytest.approx(3 / 4)  # the one still changing at the limit is wrong


def test_forced_halting_on_a_real_model():
    head = tiny_pure(halt_max_steps=4)
    with torch.no_grad():
        head.act.reasoner.heads.q_head.bias[0] = 10.0  # q_halt ~ +10 everywhere
    result = adaptive_evaluate(head, grid_batches(), max_steps=4, threshold=0.0)
    assert result["steps"] == 1 and result["halted_early"] == 1
    assert_same_metrics(result, evaluate(head, grid_batches(), halt_max_steps=1), keys=("accuracy", "exact_accuracy"))
    assert result["net_calls"] == 6


def test_no_change_rule_on_a_constant_model():
    head = tiny_pure(halt_max_steps=8)
    with torch.no_grad():
        head.act.reasoner.heads.output.weight.zero_()  # every prediction is token 0 at every step
    result = adaptive_evaluate(head, grid_batches(), max_steps=8, patience=3)
    assert result["steps"] == 4


def test_adaptive_rejects_bad_arguments():
    head = tiny_pure()
    with pytest.raises(ValueError, match="patience must be >= 1"):
        adaptive_evaluate(head, grid_batches(), max_steps=3, patience=0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        adaptive_evaluate(head, grid_batches(), max_steps=0)


# --- loading ---------------------------------------------------------------------------------------------------------


def test_hybrid_model_folder_and_tokenized_dataset(tmp_path):
    from test_backbones import make_tiny_backbone

    from hybrid.data.text_tasks import make_text_sudoku, tokenize_dataset
    from hybrid.models.backbones import load_backbone
    from hybrid.models.configuration_hybrid import HybridRecursiveConfig
    from hybrid.models.modeling_hybrid import HybridRecursiveForTokenClassification

    backbone = make_tiny_backbone("bert", tmp_path / "bert")
    config = HybridRecursiveConfig(
        backbone_name_or_path=str(backbone), num_labels=4, hidden_size=32, num_heads=2, H_cycles=2, L_cycles=1,
        L_layers=1, halt_max_steps=2,
    )  # fmt: skip
    HybridRecursiveForTokenClassification(config).save_pretrained(tmp_path / "model")
    _, tokenizer = load_backbone(str(backbone))
    tokenizer.save_pretrained(tmp_path / "model")  # as train_hybrid.py does: traces decode with it, offline
    data = tokenize_dataset(make_text_sudoku(5, n=4, num_blanks=6), tokenizer, level="token", max_length=128)
    data.save_to_disk(str(tmp_path / "data"))

    model = load_research_model(tmp_path / "model")
    assert model.kind == "hybrid" and model.trained_steps == 2
    assert model.hf_model.config.backbone_name_or_path == str(backbone)
    batches = list(research_batches(model, tmp_path / "data", global_batch_size=2))
    assert [int(m.sum()) for _, m in batches] == [2, 2, 1]
    # A frozen backbone runs once per batch, not at every supervision step; the results are those of live features.
    assert all(b["features"].shape[:2] == b["input_ids"].shape for b, _ in batches)
    rows = depth_sweep(model.act_loss, batches, steps=[2])
    live = [({k: v for k, v in b.items() if k != "features"}, m) for b, m in batches]
    assert_same_metrics(depth_sweep(model.act_loss, live, steps=[2])[0], rows[0])
    assert_same_metrics(rows[0], evaluate(model.act_loss, batches, halt_max_steps=2))
    assert rows[0]["count"] == 5 and rows[0]["net_calls"] == 2 * 2 * 2
    fixed = adaptive_evaluate(model.act_loss, batches, max_steps=2)
    assert_same_metrics(fixed, rows[0], keys=("accuracy", "exact_accuracy", "count"))

    _recipe("trace").main([
        "--checkpoint", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--examples", "4", "--steps", "3",
        "--out", str(tmp_path / "trace"),
    ])  # fmt: skip
    page = (tmp_path / "trace" / "example_4.html").read_text()
    assert "[CLS]" in page and page.count("<th>step ") == 3

    data.remove_columns("input_ids").save_to_disk(str(tmp_path / "untokenized"))
    with pytest.raises(ValueError, match=r"missing columns \['input_ids'\]"):
        list(research_batches(model, tmp_path / "untokenized", global_batch_size=2))


def test_loader_rejects_a_foreign_model_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert' is not 'hybrid_recursive'"):
        load_research_model(tmp_path)


# --- the recipes end to end on a tiny pure run ------------------------------------------------------------------------


def _recipe(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_RUN = """\
run: {{output_dir: {out}, seed: 0, log_every: 1, trackers: [], progress_bar: false}}
data: {{path: {data}}}
arch: {{family: trm, H_cycles: 2, L_cycles: 1, L_layers: 1, hidden_size: 32, num_heads: 2, expansion: 2,
        puzzle_emb_ndim: 32, puzzle_emb_len: 1, forward_dtype: float32, halt_max_steps: 3}}
training: {{global_batch_size: 16, total_steps: 2, lr: 3.0e-3, lr_warmup_steps: 1, puzzle_emb_lr: 1.0e-2}}
eval: {{interval: 0, max_examples: 16}}
"""


def test_recipes_on_a_pure_run(tmp_path):
    import json

    from hybrid.data.sudoku import generate_sudoku_dataset

    data = tmp_path / "data"
    generate_sudoku_dataset(data, size=4, givens=6, train_size=32, test_size=8, seed=0)
    (tmp_path / "run.yaml").write_text(TINY_RUN.format(out=tmp_path / "run", data=data))
    _recipe("train_pure").main(["--config", str(tmp_path / "run.yaml")])

    sweep_dir = tmp_path / "sweep"
    _recipe("depth_sweep").main([
        "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--steps", "1", "3", "--L-cycles", "1", "2",
        "--thresholds", "0", "--patience", "1", "--out", str(sweep_dir),
    ])  # fmt: skip
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["kind"] == "pure" and summary["trained_steps"] == 3
    model = load_research_model(tmp_path / "run")
    batches = list(research_batches(model, data, global_batch_size=256))
    trained = [r for r in summary["rows"] if (r["L_cycles"], r["steps"]) == (1, 3)]
    assert_same_metrics(trained[0], evaluate(model.act_loss, batches, halt_max_steps=3))
    adaptive = json.loads((sweep_dir / "adaptive.json").read_text())
    assert [r["rule"] for r in adaptive] == ["threshold=0", "patience=1"]
    assert all((sweep_dir / name).is_file() for name in ("sweep.png", "adaptive.png"))

    trace_dir = tmp_path / "trace"
    _recipe("trace").main([
        "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--kind", "sudoku", "--examples", "0", "5",
        "--steps", "4", "--format", "gif", "--out", str(trace_dir),
    ])  # fmt: skip
    traces = json.loads((trace_dir / "trace.json").read_text())
    assert sorted(traces["examples"]) == ["0", "5"] and len(traces["examples"]["5"]["q_halt"]) == 4
    assert all((trace_dir / name).is_file() for name in ("example_0.gif", "example_5.gif", "changes.png"))
