"""The one rollout and the one halting rule: early exit agrees with a fixed-depth rollout read row by row, and both
modes decide halting the same way."""

import pytest
import torch
from test_depth import grid_batches, scripted_batch, scripted_head, tiny_pure

from hybrid.core.act import halting_rule
from hybrid.core.rollout import FIXED_DEPTH, ExitRules, rollout
from hybrid.eval.loop import evaluate


def test_halting_rule_follows_the_core_for_both_modes():
    assert halting_rule("trm") == ("q_halt", False)
    assert halting_rule("trm_singlez") == ("q_halt", False)
    assert halting_rule("hrm") == ("q_halt_vs_continue", True)
    # A rule that reads q_continue always trains it (the hybrid TRM + q_halt_vs_continue bug: an untrained logit).
    assert halting_rule("trm", "q_halt_vs_continue") == ("q_halt_vs_continue", True)
    assert halting_rule("hrm", "q_halt") == ("q_halt", False)
    assert halting_rule("hrm", learns_halting=False) == ("q_halt", False)
    with pytest.raises(ValueError, match="halt rule must be one of"):
        halting_rule("trm", "sometimes")


def test_pure_and_hybrid_models_take_their_rule_from_halting_rule():
    from hybrid.models.pure import PureConfig, build_pure_model

    base = dict(seq_len=4, vocab_size=5, num_puzzle_identifiers=2, hidden_size=16, num_heads=2, puzzle_emb_ndim=0)
    _, trm = build_pure_model(PureConfig(family="trm", **base))
    _, hrm = build_pure_model(PureConfig(family="hrm", H_layers=1, **base))
    _, trm_continue = build_pure_model(PureConfig(family="trm", no_ACT_continue=False, **base))
    assert (trm.halt_rule, trm.compute_target_q) == ("q_halt", False)
    assert (hrm.halt_rule, hrm.compute_target_q) == ("q_halt_vs_continue", True)
    assert (trm_continue.halt_rule, trm_continue.compute_target_q) == ("q_halt_vs_continue", True)


def _first_stop(fixed_steps, rules: ExitRules, max_steps: int) -> torch.Tensor:
    """Per row, the step at which `rules` would stop it, read off a fixed-depth rollout (no shrinking)."""
    rows = fixed_steps[0].rows.shape[0]
    stop_at = torch.full((rows,), max_steps)
    unchanged, last = torch.zeros(rows, dtype=torch.long), None
    for s in fixed_steps:
        out = s.result.outputs
        fire = torch.zeros(rows, dtype=torch.bool)
        if rules.q_halt_threshold is not None:
            fire |= out["q_halt_logits"] > rules.q_halt_threshold
        if rules.q_halt_vs_continue:
            fire |= out["q_halt_logits"] > out["q_continue_logits"]
        if rules.patience is not None:
            preds = out["preds"]
            same = torch.zeros(rows, dtype=torch.bool) if last is None else (preds == last).flatten(1).all(-1)
            unchanged = torch.where(same, unchanged + 1, 0)
            fire |= unchanged >= rules.patience
            last = preds
        stop_at = torch.where(fire & (stop_at == max_steps), torch.minimum(stop_at, torch.tensor(s.step)), stop_at)
    return stop_at


RULES = [
    ExitRules(q_halt_threshold=0.0),
    ExitRules(patience=1),
    ExitRules(patience=2),
    ExitRules(q_halt_vs_continue=True),
    ExitRules(q_halt_threshold=0.0, patience=2),
]


@pytest.mark.parametrize("rules", RULES, ids=[r.name for r in RULES])
def test_early_exit_equals_a_fixed_rollout_read_at_each_rows_stop(rules):
    _, head = scripted_head(6)
    batch, _ = scripted_batch([1, 2, 4, 6, 3], [1, 5, 2, 9, 3], seed=3)
    fixed = list(rollout(head, batch, max_steps=6))
    stop_at = _first_stop(fixed, rules, 6)

    seen = torch.zeros(5, dtype=torch.long)
    for s in rollout(head, batch, max_steps=6, exit=rules):
        rows = s.rows[s.stop]
        assert torch.equal(stop_at[rows], torch.full_like(rows, s.step)), s.step
        reference = fixed[s.step - 1].result.outputs
        assert torch.equal(s.result.outputs["preds"][s.stop], reference["preds"][rows])
        seen[rows] += 1
    assert torch.equal(seen, torch.ones(5, dtype=torch.long))  # every row stops exactly once

    # evaluate with the rules reports the metrics of each row at its own stop step.
    got = evaluate(head, [(batch, torch.ones(5, dtype=torch.bool))], halt_max_steps=6, exit=rules)
    assert got["steps"] == pytest.approx(stop_at.double().mean().item())
    exact = torch.stack([fixed[int(k) - 1].result.outputs["preds"][i] for i, k in enumerate(stop_at)])
    assert got["exact_accuracy"] == pytest.approx((exact == batch["labels"]).all(-1).double().mean().item())
    assert got["halted_early"] == pytest.approx((stop_at < 6).double().mean().item())


def test_fixed_depth_rollout_is_what_evaluate_reads_on_a_real_model():
    head = tiny_pure(halt_max_steps=3)
    batches = grid_batches(2, pad_rows=1)
    got = evaluate(head, batches, halt_max_steps=3)
    assert got["halted_early"] == 0 and got["steps"] == 3 and got["count"] == 6
    sums = {}
    for batch, mask in batches:
        real = {k: v[mask] for k, v in batch.items()}
        last = list(rollout(head.eval(), real, max_steps=3, exit=FIXED_DEPTH))[-1]
        for k, v in last.metric_sums().items():
            sums[k] = sums.get(k, 0) + float(v)
    assert got["exact_accuracy"] == pytest.approx(sums["exact_accuracy"] / sums["count"])
    assert got["accuracy"] == pytest.approx(sums["accuracy"] / sums["count"])


def test_rollout_rejects_bad_arguments():
    _, head = scripted_head(3)
    batch, _ = scripted_batch([1], [1])
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        next(rollout(head, batch, max_steps=0))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ExitRules(patience=0)
