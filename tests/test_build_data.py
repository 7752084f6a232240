"""recipes/build_data.py: its flags are the builders' keyword arguments, and a build through it is the builder's."""

import argparse
import importlib.util
import inspect
from pathlib import Path

import pytest

from hybrid.data.maze import generate_maze_dataset
from hybrid.data.sudoku import generate_sudoku_dataset
from hybrid.utils import run_main
from test_data_format import _hash_tree

_spec = importlib.util.spec_from_file_location("build_data", Path(__file__).resolve().parents[1] / "recipes" / "build_data.py")
build_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_data)


@pytest.mark.parametrize("command", list(build_data.COMMANDS))
def test_every_sub_command_answers_help_and_matches_its_builder(command, capfd):
    with pytest.raises(SystemExit) as exit_info:
        run_main(build_data.main, [command, "--help"])
    out = capfd.readouterr().out
    assert exit_info.value.code == 0 and f" {command} [-h]" in out

    add_flags, build = build_data.COMMANDS[command]
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    params = {name: p for name, p in inspect.signature(build).parameters.items() if name != "progress"}
    assert set(flags) == set(params), command
    for name, param in params.items():
        assert f"--{name.replace('_', '-')}" in out
        default = flags[name].default
        if param.default is not inspect.Parameter.empty:  # the CLI and a direct call build the same thing
            assert (list(default) if isinstance(default, list) else default) == (
                list(param.default) if isinstance(param.default, tuple) else param.default), (command, name)


@pytest.mark.parametrize("argv, build, kwargs", [
    (["sudoku-gen", "--size", "4", "--givens", "6", "--train-size", "30", "--test-size", "10", "--seed", "3"],
     generate_sudoku_dataset, dict(size=4, givens=6, train_size=30, test_size=10, seed=3)),
    (["maze-gen", "--size", "8", "--min-path-len", "8", "--train-size", "5", "--test-size", "2", "--aug"],
     generate_maze_dataset, dict(size=8, min_path_len=8, train_size=5, test_size=2, aug=True)),
])
def test_a_build_through_the_recipe_equals_the_builder(tmp_path, capsys, argv, build, kwargs):
    build_data.main(argv + ["--output-dir", str(tmp_path / "cli")])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'cli'}"
    build(tmp_path / "direct", **kwargs)
    assert sorted(p.name for p in (tmp_path / "cli").rglob("*")) == sorted(p.name for p in (tmp_path / "direct").rglob("*"))
    assert _hash_tree(tmp_path / "cli") == _hash_tree(tmp_path / "direct")


def test_builders_reject_what_the_cli_cannot_express(tmp_path):
    """argparse keeps these flags apart; a direct call gets the same answer as a ValueError, before any output."""
    from hybrid.data.maze import build_maze
    from hybrid.data.sudoku_extreme import build_sudoku_extreme

    with pytest.raises(ValueError, match="not both"):
        build_maze(tmp_path / "out", input_dir=tmp_path, input_file_prefix="x/")
    with pytest.raises(ValueError, match="not both"):
        build_sudoku_extreme(tmp_path / "out", test_file="a.csv", test_tdoku=["b.csv"])
    with pytest.raises(ValueError, match=r"--size 5 must be one of \[4, 6, 9\]"):
        generate_sudoku_dataset(tmp_path / "out", size=5, givens=8, train_size=4)
    assert not (tmp_path / "out").exists()
