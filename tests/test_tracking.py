"""Run folder creation rules, metrics logging, curves and the summary table."""

import json
import math
import os

import pytest
import torch

from hybrid.train import tracking
from hybrid.train.tracking import MetricsLogger, RunDir, RunDirError, RunExistsError, plot_curves, read_metrics, summary_table


def test_rundir_new_then_refuses_existing_run(tmp_path):
    run = RunDir.create(tmp_path / "run")
    assert run.path.is_dir() and not run.resumed and os.fspath(run) == str(tmp_path / "run")
    with pytest.raises(RunExistsError, match=r"run.*overwrite=true.*resume=auto"):
        RunDir.create(tmp_path / "run")


def test_rundir_resume_keeps_files_and_overwrite_clears_them(tmp_path):
    run = RunDir.create(tmp_path / "run")
    MetricsLogger(run, is_main_process=True).log(1, "train", {"loss": 1.0})
    resumed = RunDir.create(tmp_path / "run", resume=True)
    assert resumed.resumed and resumed.metrics_path.is_file()
    fresh = RunDir.create(tmp_path / "run", overwrite=True)
    assert not fresh.resumed and not fresh.metrics_path.exists()
    assert RunDir.create(tmp_path / "new", resume=True).resumed is False  # resume=auto on nothing starts afresh


def test_rundir_never_reuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no previous run"):
        RunDir.create(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rundir_reports_unwritable_folder(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tracking.tempfile, "TemporaryFile", read_only)
    with pytest.raises(RunDirError, match=r"run.*is not writable.*Permission denied"):
        RunDir.create(tmp_path / "run")


def test_metrics_logger_writes_json_lines_on_main_process_only(tmp_path):
    MetricsLogger(tmp_path, is_main_process=False).log(1, "train", {"loss": 2.0})
    assert not (tmp_path / "metrics.jsonl").exists()
    logger = MetricsLogger(tmp_path, is_main_process=True)
    logger.log(1, "train", {"loss": torch.tensor(2.5), "lr": 1e-4})
    logger.log(2, "eval", {"exact_accuracy": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "split": "train", "loss": 2.5, "lr": 1e-4}
    assert read_metrics(tmp_path / "metrics.jsonl")[1] == {"step": 2, "split": "eval", "exact_accuracy": 0.25}
    with pytest.raises(ValueError, match="split must be one of"):
        logger.log(3, "test", {"loss": 1.0})
    with pytest.raises(ValueError, match="'name' is a str"):
        logger.log(3, "train", {"name": "x"})


def test_read_metrics_names_file_and_line_of_bad_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1}\n{"step": 2, "spl\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(path)


def write_run(tmp_path):
    logger = MetricsLogger(tmp_path, is_main_process=True)
    for step in range(1, 7):
        logger.log(step, "train", {"loss": 3.0 / step})
    logger.log(3, "eval", {"loss": 1.5, "exact_accuracy": 0.125})
    logger.log(6, "eval", {"loss": 1.75, "exact_accuracy": 0.375})
    return tmp_path / "metrics.jsonl"


def test_plot_curves_writes_a_png(tmp_path):
    out = plot_curves(write_run(tmp_path), tmp_path / "curves.png", keys=["loss", "exact_accuracy"])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match=r"cannot plot \['accuracy'\]"):
        plot_curves(tmp_path / "metrics.jsonl", tmp_path / "x.png", keys=["accuracy"])


def test_summary_table_final_and_best_eval(tmp_path):
    table = summary_table(read_metrics(write_run(tmp_path)))
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows["loss"] == ["1.75", "1.5", "3"]  # final, best (lowest), its step
    assert rows["exact_accuracy"] == ["0.375", "0.375", "6"]
    assert table.splitlines()[0].split() == ["metric", "final", "best", "best", "step"]
    with pytest.raises(ValueError, match="no 'eval' records"):
        summary_table([{"step": 1, "split": "train", "loss": 1.0}])


def test_summary_table_ignores_nan_for_best():
    table = summary_table([{"step": 1, "split": "eval", "loss": 2.0}, {"step": 2, "split": "eval", "loss": math.nan}])
    assert table.splitlines()[2].split() == ["loss", "nan", "2", "1"]
