"""CLUTRR: model input from story and query only, relation labels mapped from training, held-out sets per k and per
noise type; a tiny fixture for every machine and a check on the real files where they exist."""

import random

import pandas as pd
import pytest

from hybrid.data import clutrr
from hybrid.data.clutrr import READ_COLUMNS, clutrr_text, load_clutrr, parse_task_name
from hybrid.data.tasks import HybridTaskConfig, make_task
from hybrid.utils import UserError

GROUND_TRUTH = ["id", "target", "clean_story", "proof_state", "f_comb", "story_edges", "edge_types", "query_edge",
                "genders", "task_split"]


def _row(story, query, relation, task_name):
    return {"id": "x", "story": story, "query": str(query), "target": 0, "target_text": relation,
            "clean_story": "CLEAN " + story, "proof_state": "[{('A', 'r', 'B'): []}]", "f_comb": "r-s",
            "task_name": task_name, "story_edges": "[(0, 1)]", "edge_types": "['r']", "query_edge": "(0, 1)",
            "genders": "A:female", "task_split": "train"}


ROWS = {
    "train.csv": [
        _row("[Ann] is the mother of [Bob].", ("Ann", "Bob"), "son", "task_1.2"),
        _row("[Cal] and his sister [Dee] ate. [Dee] has a son [Eli].", ("Cal", "Eli"), "nephew", "task_1.3"),
        _row("[Fay] saw her father [Gus].", ("Fay", "Gus"), "father", "task_1.2"),
    ],
    "test.csv": [
        _row("[Hal] is [Ivy]'s son.", ("Ivy", "Hal"), "son", "task_1.2"),
        _row("[Jo] met her father [Kim]. [Kim] has a sister [Lu]. [Lu]'s son is [Mo].", ("Jo", "Mo"), "nephew", "task_1.10"),
        _row("[Ned] is the father of [Oz].", ("Oz", "Ned"), "father", "task_1.4"),
    ],
    "test_noise.csv": [
        _row("[Pia] is [Quin]'s father. [Pia] likes tea.", ("Quin", "Pia"), "father", "task_3.3"),
        _row("[Ron] has a son [Sal].", ("Ron", "Sal"), "son", "task_1.2"),
    ],
}


def _write(folder, rows=ROWS, transform=lambda frame: frame):
    folder.mkdir(exist_ok=True)
    for name, file_rows in rows.items():
        transform(pd.DataFrame(file_rows)).to_csv(folder / name, index=False)
    return folder


def test_texts_labels_and_held_out_sets(tmp_path):
    train, tests = load_clutrr(_write(tmp_path / "c"))
    assert train[0]["text"] == "Question: how is [Bob] related to [Ann]? Story: [Ann] is the mother of [Bob]."
    assert list(train["label"]) == ["son", "nephew", "father"]
    assert list(tests) == ["k=2", "k=4", "k=10", "noise_none", "noise_irrelevant"]  # k by value, noise in file order
    assert list(tests["k=10"]["label"]) == ["nephew"] and list(tests["noise_irrelevant"]["k"]) == [3]
    after, _ = load_clutrr(tmp_path / "c", question="last")
    assert after[0]["text"] == "Story: [Ann] is the mother of [Bob]. Question: how is [Bob] related to [Ann]?"


def test_mark_query_brackets_the_two_queried_people_apart_from_the_others(tmp_path):
    story = "[Jo] met her father [Kim]. [Kim] has a sister [Kimi]. [Kimi]'s son is [Jon]. [Jo] likes [Jon]."
    text = clutrr_text(story, "('Jo', 'Kimi')", mark_query=True)
    assert text == ("Question: how is {Kimi} related to <Jo>? Story: <Jo> met her father [Kim]. [Kim] has a sister "
                    "{Kimi}. {Kimi}'s son is [Jon]. <Jo> likes [Jon].")  # [Kim] and [Jon] are not A or B
    assert clutrr_text(story, "('Jo', 'Kimi')") == text.replace("<Jo>", "[Jo]").replace("{Kimi}", "[Kimi]")
    marked = make_task(HybridTaskConfig(name="clutrr", data_dir=str(_write(tmp_path / "c")), mark_query=True))
    assert marked.train["text"][0] == "Question: how is {Bob} related to <Ann>? Story: <Ann> is the mother of {Bob}."
    assert marked.tests["k=10"]["text"][0].endswith("{Mo}.")  # held-out sets are marked the same way


def test_the_model_input_never_depends_on_ground_truth_columns(tmp_path):
    def scramble(frame):
        rng = random.Random(0)
        for column in GROUND_TRUTH:
            frame[column] = [f"junk{rng.random()}" for _ in range(len(frame))]
        return frame

    reference = load_clutrr(_write(tmp_path / "a"))
    scrambled = load_clutrr(_write(tmp_path / "b", transform=scramble))
    dropped = load_clutrr(_write(tmp_path / "c", transform=lambda f: f[list(READ_COLUMNS)]))
    for other in (scrambled, dropped):
        assert other[0][:] == reference[0][:]
        assert {k: v[:] for k, v in other[1].items()} == {k: v[:] for k, v in reference[1].items()}
    assert not any("CLEAN" in text for text in reference[0]["text"])  # clean_story (noise removed) is never read


def test_only_the_allowed_columns_are_read(tmp_path, monkeypatch):
    asked = []
    real = pd.read_csv
    monkeypatch.setattr(clutrr.pd, "read_csv", lambda *a, **kw: asked.append(kw.get("usecols")) or real(*a, **kw))
    load_clutrr(_write(tmp_path / "c"))
    assert asked and all(sorted(cols) == sorted(READ_COLUMNS) for cols in asked)
    assert set(READ_COLUMNS) == {"story", "query", "target_text", "task_name"}


def test_hub_dataset_id_goes_through_datasets(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict

    hub = DatasetDict({split: Dataset.from_list(ROWS[f"{split}.csv"]) for split in ("train", "test")})
    calls = []
    monkeypatch.setattr("datasets.load_dataset", lambda repo, config: calls.append((repo, config)) or hub)
    train, tests = load_clutrr("CLUTRR/v1:gen_train23_test2to10")
    assert calls == [("CLUTRR/v1", "gen_train23_test2to10")]
    assert list(train["label"]) == ["son", "nephew", "father"] and list(tests) == ["k=2", "k=4", "k=10"]


def test_task_options_and_errors(tmp_path):
    folder = str(_write(tmp_path / "c"))
    task = make_task(HybridTaskConfig(name="clutrr", data_dir=folder))
    assert task.id2label == ["father", "nephew", "son"] and task.num_labels == 3 and task.level == "sequence"
    assert list(task.tests["k=10"]["label"]) == [1] and list(task.train["label"]) == [2, 1, 0]
    subset = load_clutrr(folder, num_train=2, seed=1)[0]
    assert len(subset) == 2 and subset[:] == load_clutrr(folder, num_train=2, seed=1)[0][:]  # seeded
    assert list(load_clutrr(folder, max_train_k=2)[0]["k"]) == [2, 2]
    # A held-out relation the training stories never answer: named with the file and the known relations.
    rows = {**ROWS, "train.csv": ROWS["train.csv"][:1]}
    with pytest.raises(UserError, match=r"k=4 set\): label 'father' does not occur .* known labels: \['son'\]"):
        make_task(HybridTaskConfig(name="clutrr", data_dir=str(_write(tmp_path / "d", rows))))
    with pytest.raises(UserError, match=r"row 0: task_name must look like task_<noise 1-4>.<k>, got 'task_9.2'"):
        make_task(HybridTaskConfig(name="clutrr", data_dir=str(_write(tmp_path / "e", {
            **ROWS, "test.csv": [_row("[A] x [B].", ("A", "B"), "son", "task_9.2")]}))))
    with pytest.raises(UserError, match="no train.csv"):
        make_task(HybridTaskConfig(name="clutrr", data_dir=str(tmp_path)))
    assert parse_task_name("task_4.10") == (4, 10)
    with pytest.raises(ValueError, match="query must be a pair of names"):
        clutrr_text("s", "('A',)")


def test_real_clutrr(data_dir):
    folder = data_dir / "clutrr"
    if not folder.is_dir():
        pytest.skip(f"the CLUTRR data folder {folder} does not exist (set HYBRID_DATA_DIR to the shared data)")
    task = make_task(HybridTaskConfig(name="clutrr", data_dir=str(folder)))
    assert len(task.train) == 6049 and task.num_labels == 18 and set(task.train["k"]) == {2, 3}
    sizes = {name: len(s) for name, s in task.tests.items()}
    assert sizes == {"k=2": 38, "k=3": 105, "k=4": 190, "k=5": 174, "k=6": 107, "k=7": 144, "k=8": 150, "k=9": 119,
                     "k=10": 119, "noise_none": 146, "noise_supporting": 101, "noise_irrelevant": 100,
                     "noise_disconnected": 100}
    assert all(t.startswith("Question: how is [") for t in task.train["text"][:50])
