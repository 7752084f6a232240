"""make_task: one label mapping from the training file for every held-out set, per-group held-out sets, the moved
generated tasks."""

import json

import pytest

from hybrid.data.tasks import HybridTaskConfig, make_task
from hybrid.utils import UserError


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


def _user(tmp_path, train_rows, test_rows, **extra):
    return HybridTaskConfig(
        name="user", train_file=_csv(tmp_path / "train.csv", train_rows), test_file=_csv(tmp_path / "test.csv", test_rows),
        **extra,
    )


def test_held_out_ids_follow_the_training_mapping(tmp_path):
    # Regression: train and test were class-encoded separately, so a test file lacking class "a" mapped b -> 0, c -> 1
    # while training used b -> 1, c -> 2, and accuracy was silently wrong.
    task = make_task(_user(tmp_path, [("x1", "a"), ("x2", "b"), ("x3", "c")], [("y1", "c"), ("y2", "b"), ("y3", "c")]))
    assert task.id2label == ["a", "b", "c"] and task.num_labels == 3
    assert list(task.train["label"]) == [0, 1, 2]
    assert list(task.tests["test"]["label"]) == [2, 1, 2]


def test_a_held_out_label_unseen_in_training_is_an_error_naming_file_label_and_known_labels(tmp_path):
    with pytest.raises(UserError, match=r"test.csv \(test set\): label 'd' does not occur in the training file; "
                                        r"known labels: \['a', 'b'\]"):
        make_task(_user(tmp_path, [("x1", "a"), ("x2", "b")], [("y1", "a"), ("y2", "d")]))
    with pytest.raises(UserError, match=r"label 7 does not occur in the training file; known labels: \[0, 1\]"):
        make_task(_user(tmp_path, [("x1", 0), ("x2", 1)], [("y1", 7)]))


def test_int_labels_are_kept_and_checked(tmp_path):
    task = make_task(_user(tmp_path, [("x1", 2), ("x2", 0)], [("y1", 1)], num_labels=3))
    assert task.id2label is None and task.num_labels == 3 and list(task.tests["test"]["label"]) == [1]
    with pytest.raises(UserError, match="label 2 does not fit task.num_labels=2"):
        make_task(_user(tmp_path, [("x1", 2)], [("y1", 1)], num_labels=2))


def test_token_level_class_names_share_one_mapping(tmp_path):
    train = [{"text": "Ann met Bob", "tags": ["PER", "O", "PER"]}, {"text": "in Rome", "tags": ["O", "LOC"]}]
    test = [{"text": "Rome Ann", "tags": ["LOC", "PER"]}]
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = HybridTaskConfig(name="user", train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"),
                           label_column="tags", level="token")
    task = make_task(cfg)
    assert task.id2label == ["LOC", "O", "PER"] and task.level == "token"
    assert task.train[0]["labels"] == [2, 1, 2] and task.tests["test"][0]["labels"] == [0, 2]
    # CSV: space-separated names in one cell
    (tmp_path / "train.csv").write_text('text,tags\n"a b","X Y"\n')
    (tmp_path / "test.csv").write_text('text,tags\n"c","Y"\n')
    cfg = HybridTaskConfig(name="user", train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"),
                           label_column="tags", level="token")
    assert make_task(cfg).tests["test"][0]["labels"] == [1]


def test_group_column_splits_the_test_file_in_natural_order(tmp_path):
    rows = [("t1", "a", 10), ("t2", "b", 2), ("t3", "a", 2), ("t4", "b", 3), ("t5", "a", 10)]
    cfg = HybridTaskConfig(
        name="user", train_file=_csv(tmp_path / "train.csv", [("x", "a", 1), ("y", "b", 1)], "text,label,k"),
        test_file=_csv(tmp_path / "test.csv", rows, "text,label,k"), group_column="k",
    )
    task = make_task(cfg)
    assert list(task.tests) == ["test", "k=2", "k=3", "k=10"]  # 2 < 3 < 10, not "10" < "2"
    assert list(task.tests["k=2"]["text"]) == ["t2", "t3"] and list(task.tests["k=2"]["label"]) == [1, 0]
    assert list(task.tests["k=10"]["text"]) == ["t1", "t5"]
    assert len(task.tests["test"]) == 5 and "group" not in task.tests["test"].column_names
    with pytest.raises(UserError, match=r"test.csv: no column 'depth'"):
        make_task(HybridTaskConfig(**{**cfg.__dict__, "group_column": "depth"}))


def test_generated_tasks_keep_their_sizes():
    chain = make_task(HybridTaskConfig(name="chain", num_test=20, hops=[1], test_hops=[3]))
    assert len(chain.train) == 2000 and list(chain.tests) == ["hops1", "hops3"] and chain.id2label == ["no", "yes"]
    sudoku = make_task(HybridTaskConfig(num_train=30, num_test=10))
    assert len(sudoku.train) == 30 and sudoku.single_token_words and sudoku.num_labels == 4
