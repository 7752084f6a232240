"""bench/hybrid_heads.py's results table: every run's step budget shown, token columns only where they add a number."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("hybrid_heads", Path(__file__).resolve().parents[1] / "bench" / "hybrid_heads.py")
hybrid_heads = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hybrid_heads)


def _row(head, steps, results):
    return {"head": head, "trainable_parameters": 1234, "steps": steps, "wall_seconds": 9.6, "results": results}


def test_table_shows_steps_and_drops_token_columns_that_repeat_exact():
    sequence = {"hops1": {"exact_accuracy": 0.9, "accuracy": 0.9}, "hops3": {"exact_accuracy": 0.5, "accuracy": 0.5}}
    lines = hybrid_heads.table([_row("recursive", 4000, sequence), _row("lora+linear", 2000, sequence)]).splitlines()
    assert lines[0] == "| head | trainable params | steps | hops1 exact | hops3 exact | wall s |"
    assert lines[3] == "| lora+linear | 1,234 | 2000 | 90.0 | 50.0 | 10 |"
    token = {"test": {"exact_accuracy": 0.25, "accuracy": 0.75}}
    assert hybrid_heads.table([_row("mlp", 10, token)]).splitlines()[2] == "| mlp | 1,234 | 10 | 25.0 | 75.0 | 10 |"
