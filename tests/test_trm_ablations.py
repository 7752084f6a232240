"""configs/study/trm_ablations.yaml: the TRM paper's Table 1 rows as study variants; each row's config differs from
the reference row in what its name says, and the table's command runs end to end on a tiny Sudoku."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hybrid.config import from_dict, load_config
from hybrid.models.pure import build_pure_model
from hybrid.scaling.grid import StudyConfig, expand_grid
from hybrid.train.config import PureTrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "study" / "trm_ablations.yaml"
ROWS = ["trm", "hrm", "act_continue", "separate_fH_fL", "no_ema", "layers4_n3", "attention", "T2_n2", "one_step_grad",
        "no_carry", "single_z"]


def _last_values(overrides: list[str]) -> dict:
    values = {}
    for item in overrides:
        key, value = item.split("=", 1)
        values[key] = value
    return values


def test_variants_expand_to_one_point_per_row_and_seed():
    points = expand_grid(load_config(StudyConfig, CONFIG))
    assert [p.name for p in points[:3]] == ["variant-trm_seed-0", "variant-trm_seed-1", "variant-trm_seed-2"]
    assert len(points) == 3 * len(ROWS)
    rows = {p.values["variant"]: _last_values(p.overrides) for p in points if p.seed == 0}
    assert list(rows) == ROWS
    reference = rows["trm"]
    assert reference["arch.H_cycles"] == "3" and reference["arch.L_cycles"] == "6"
    changed = {name: {k: v for k, v in values.items() if reference.get(k) != v} for name, values in rows.items()}
    assert changed["no_ema"] == {"training.ema": "false"}
    assert changed["T2_n2"] == {"arch.H_cycles": "2", "arch.L_cycles": "2"}
    assert changed["single_z"] == {"arch.family": "trm_singlez"}
    assert changed["act_continue"] == {"arch.no_ACT_continue": "false"}
    assert changed["separate_fH_fL"] == {"arch.separate_networks": "true"}
    assert changed["one_step_grad"] == {"arch.one_step_gradient": "true"}
    assert changed["no_carry"] == {"arch.carry_latents": "false"}
    assert changed["attention"] == {"arch.mlp_t": "false", "arch.pos_encodings": "rope"}
    assert changed["hrm"]["arch.family"] == "hrm"


def test_every_row_builds_its_model():
    study = load_config(StudyConfig, CONFIG)
    dense, kinds, switches = {}, {}, {}
    for p in expand_grid(study):
        if p.seed:
            continue
        cfg = load_config(PureTrainConfig, CONFIG.parent / study.base_config, p.overrides)
        arch = cfg.arch_config({"seq_len": 36, "vocab_size": 8, "num_puzzle_identifiers": 1})
        with torch.device("meta"):
            reasoner, act = build_pure_model(arch)
        dense[p.values["variant"]] = sum(q.numel() for q in reasoner.parameters() if q.requires_grad)
        kinds[p.values["variant"]] = (arch.family, arch.H_cycles, arch.L_cycles, arch.L_layers, arch.mlp_t)
        core = reasoner.core
        switches[p.values["variant"]] = (type(core).__name__, getattr(core, "one_step_gradient", None), act.carry_latents)
    assert kinds["trm"] == ("trm", 3, 6, 2, True) and kinds["T2_n2"] == ("trm", 2, 2, 2, True)
    assert kinds["layers4_n3"] == ("trm", 3, 3, 4, True) and kinds["single_z"][0] == "trm_singlez"
    assert kinds["hrm"] == ("hrm", 2, 2, 4, False) and kinds["attention"][4] is False
    # same network, other schedule: equal sizes; twice the layers: more; HRM's two 4-layer networks: the most
    assert dense["trm"] == dense["T2_n2"] == dense["no_ema"] == dense["single_z"] == dense["one_step_grad"]
    assert dense["trm"] < dense["layers4_n3"] < dense["hrm"]
    assert dense["separate_fH_fL"] - dense["trm"] == dense["layers4_n3"] - dense["trm"]  # a second 2-layer network
    assert switches["trm"] == ("TRMCore", False, True) and switches["hrm"] == ("HRMCore", True, True)
    assert switches["separate_fH_fL"] == ("HRMCore", False, True)
    assert switches["one_step_grad"] == ("TRMCore", True, True) and switches["no_carry"] == ("TRMCore", False, False)


def test_variants_must_be_override_lists():
    with pytest.raises(ValueError, match="variants.bad must be a list of key=value overrides"):
        from_dict(StudyConfig, {"recipe": "train_pure", "base_config": "b.yaml", "output_dir": "o",
                                "variants": {"bad": ["arch.mlp_t"]}})
    with pytest.raises(ValueError, match="or variants one row"):
        from_dict(StudyConfig, {"recipe": "train_pure", "base_config": "b.yaml", "output_dir": "o"})


@pytest.mark.slow
def test_the_table_command_runs_end_to_end_on_a_tiny_sudoku(tmp_path):
    """The real config with its data shrunk (64 puzzles), two steps per row and a small width: every row trains and
    is evaluated, and each row's run really has the row's settings."""
    raw = yaml.safe_load(CONFIG.read_text())
    data = tmp_path / "data"
    build = raw["build_data"]
    for flag, value in (("--train-size", "64"), ("--test-size", "16"), ("--output-dir", str(data))):
        build[build.index(flag) + 1] = value
    raw.update(base_config=str(CONFIG.parent / raw["base_config"]), output_dir=str(tmp_path / "out"), seeds=[0],
               budget={"kind": "steps", "steps": 2}, test_time_factor=1)
    raw["overrides"] = [o for o in raw["overrides"] if not o.startswith("data.path=")] + [
        f"data.path={data}", "arch.hidden_size=16", "arch.puzzle_emb_ndim=16", "arch.halt_max_steps=2",
        "training.lr_warmup_steps=1", "training.global_batch_size=8", "eval.max_examples=16"]
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "scaling_study.py"), "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out" / "study.csv") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(f"variant-{name}_seed-0" for name in ROWS)
    assert all(0 <= float(r["exact_accuracy"]) <= 1 and r["steps"] == "2" for r in rows.values())
    run_config = {name: yaml.safe_load((tmp_path / "out" / "points" / f"variant-{name}_seed-0" / "config.yaml")
                                       .read_text()) for name in ROWS}
    assert run_config["hrm"]["arch"]["family"] == "hrm" and run_config["hrm"]["arch"]["H_layers"] == 4
    assert run_config["trm"]["arch"]["L_cycles"] == 6 and run_config["trm"]["training"]["ema"] is True
    assert run_config["no_ema"]["training"]["ema"] is False
    assert run_config["attention"]["arch"]["mlp_t"] is False
    assert run_config["separate_fH_fL"]["arch"]["separate_networks"] is True
    assert run_config["one_step_grad"]["arch"]["one_step_gradient"] is True
    assert run_config["no_carry"]["arch"]["carry_latents"] is False
    # every step restarts from the initial latents, so the longer evaluation answers the same
    no_carry = rows["variant-no_carry_seed-0"]
    assert no_carry["exact_accuracy"] == no_carry["exact_accuracy_tt"]
    assert no_carry["token_accuracy"] == no_carry["token_accuracy_tt"]
    assert int(rows["variant-separate_fH_fL_seed-0"]["params"]) == 2 * int(rows["variant-trm_seed-0"]["params"])
    assert int(rows["variant-T2_n2_seed-0"]["effective_depth"]) < int(rows["variant-trm_seed-0"]["effective_depth"])
    assert json.loads((tmp_path / "out" / "study.json").read_text())["points"] == len(ROWS)
