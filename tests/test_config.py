"""The config system: YAML -> typed dataclasses, base files, overrides, and errors that name key and file."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from hybrid.config import ConfigError, load_config, parse_override, split_cli

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])


@dataclasses.dataclass
class Run:
    name: str
    steps: int = 10
    mode: Literal["trm", "hrm"] = "trm"
    note: str | None = None
    optim: Optim = dataclasses.field(default_factory=Optim)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_base_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nsteps: 5\noptim:\n  lr: 0.5\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nsteps: 7\n")
    cfg = load_config(Run, child, ["optim.lr=3e-4", "mode=hrm"])
    assert cfg.name == "base" and cfg.steps == 7 and cfg.mode == "hrm"
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.betas == [0.9, 0.95]
    assert isinstance(cfg.optim, Optim)


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    path = write(tmp_path, "a.yaml", "name: x\noptim:\n  lr: 1\n")
    assert load_config(Run, path).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"key 'steps' must be an integer, got 1.5"):
        load_config(Run, path, ["steps=1.5"])


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = write(tmp_path, "a.yaml", "name: x\noptim:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    msg = str(err.value)
    assert "optim.lrr" in msg and str(path) in msg and "betas, lr" in msg


def test_unknown_key_from_base_names_the_base_file(tmp_path):
    base = write(tmp_path, "base.yaml", "name: x\nstepz: 3\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=f"{base}.*unknown key 'stepz'"):
        load_config(Run, child)


def test_wrong_type_names_the_key_and_the_command_line(tmp_path):
    path = write(tmp_path, "a.yaml", "name: x\n")
    with pytest.raises(ConfigError, match=r"command line: key 'mode' must be one of 'trm', 'hrm', got 'xyz'"):
        load_config(Run, path, ["mode=xyz"])
    with pytest.raises(ConfigError, match=r"key 'optim' must be a mapping"):
        load_config(Run, path, ["optim=3"])


def test_missing_required_value(tmp_path):
    path = write(tmp_path, "a.yaml", "steps: 3\n")
    with pytest.raises(ConfigError, match=r"required key 'name' is missing"):
        load_config(Run, path)


@pytest.mark.parametrize("text", ["lr", "=3", "a..b=1", "a b=1"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError, match="bad override"):
        parse_override(text)


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Run, tmp_path / "nope.yaml")
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Run, tmp_path / "a.yaml")


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, write(tmp_path, "a.yaml", "name: [x\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Run, write(tmp_path, "b.yaml", "- 1\n- 2\n"))


def test_split_cli():
    assert split_cli(["--config", "x.yaml", "a.b=1"]) == ("x.yaml", ["a.b=1"])
    with pytest.raises(ConfigError, match="unexpected argument '--lr'"):
        split_cli(["--lr", "3"])


def test_every_config_file_loads_and_names_its_launch_command():
    """Every YAML under configs/ loads into the dataclass of the recipe its header launches."""
    from hybrid.scaling.grid import StudyConfig
    from hybrid.train.config import HybridTrainConfig, PureTrainConfig

    recipe_configs = {"train_pure": PureTrainConfig, "train_hybrid": HybridTrainConfig, "scaling_study": StudyConfig}
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "recipes/" in first and str(path.relative_to(REPO)) in first, (
            f"{path}: the first line must be a comment with the exact launch command naming this file"
        )
        recipes = [cls for name, cls in recipe_configs.items() if f"recipes/{name}.py" in first]
        assert len(recipes) == 1, f"{path}: no known recipe in {first!r}; known: {sorted(recipe_configs)}"
        load_config(recipes[0], path)


def test_exponent_without_dot_is_a_number(tmp_path):
    path = write(tmp_path, "a.yaml", "name: x\noptim:\n  lr: 5e-4\n")
    assert load_config(Run, path).optim.lr == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match=r"key 'optim.lr' must be a number, got 'fast'"):
        load_config(Run, path, ["optim.lr=fast"])
