"""The tasks of hybrid mode, chosen by `task.name`: generated text Sudoku and chain reasoning, CLUTRR, and a user's own
files. `make_task` returns every set untokenized, with one label mapping (from the training set) applied to all of
them; every check on the data runs here, before any backbone or training work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from datasets import Dataset

from hybrid.data.clutrr import default_data_dir, load_clutrr
from hybrid.data.text_tasks import LabelMap, load_user_dataset, make_chain_reasoning, make_text_sudoku, split_by_group
from hybrid.utils import UserError

GENERATED_NUM_TRAIN = 2000  # training examples of the generated tasks when task.num_train is not set


@dataclass
class HybridTaskConfig:
    name: Literal["text_sudoku", "chain", "clutrr", "user"] = "text_sudoku"
    # Training examples: the generated tasks make this many (default 2000); clutrr takes a seeded random subset of
    # this many stories (default: all of them); user files are used whole.
    num_train: int | None = None
    num_test: int = 500
    seed: int = 0
    # text_sudoku: an n x n board (boxes 2x2 for n=4, 2x3 for n=6) with `num_blanks` empty cells
    size: int = 4
    num_blanks: int = 6
    # chain: training questions need one of `hops` links; a held-out set per hop count in hops + test_hops (longer
    # chains: depth extrapolation); each text has up to `extra_links` more links and `distractor_length` distractors
    hops: list[int] = field(default_factory=lambda: [1, 2])
    test_hops: list[int] = field(default_factory=list)
    extra_links: int = 1
    distractor_length: int = 2
    # clutrr: a folder with train.csv, test.csv (held-out sets k=2..k=10) and test_noise.csv (noise_none, ...), or a
    # Hub dataset id owner/name[:config]; default $HYBRID_DATA_DIR/clutrr. `question` puts "Question: how is [B]
    # related to [A]?" first (before the story), last, or nowhere (none: needs mark_query); `mark_query` writes every
    # mention of the two queried people as <A> and {B} instead of [A] and [B]; `max_train_k` keeps training stories
    # with k <= it; `split_run_ons` ends a sentence where a stitched story lacks a full stop (the person-graph heads).
    data_dir: str | None = None
    question: Literal["first", "last", "none"] = "first"
    mark_query: bool = False
    max_train_k: int | None = None
    split_run_ons: bool = False
    # user: your own CSV / JSON / Parquet files
    train_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    level: Literal["token", "sequence"] = "sequence"
    num_labels: int | None = None  # user data: the number of classes (default: inferred from the training labels)
    # user: also report one held-out set per value of this test-file column, named <column>=<value> (e.g. k=2)
    group_column: str | None = None


@dataclass
class TaskData:
    """A task before tokenisation. tests: held-out sets in report order (the first is evaluated during training).
    id2label: class names in id order for the model config, or None when the data holds int ids."""

    train: Dataset
    tests: dict[str, Dataset]
    level: Literal["token", "sequence"]
    num_labels: int
    id2label: list[str] | None = None
    single_token_words: bool = False


def unseen(test: Dataset, train: Dataset) -> Dataset:
    """The test examples whose text is not a training text: held out means never seen in training (small generated
    tasks repeat texts, e.g. one-fact chain questions)."""
    seen = set(train["text"])
    return test.filter(lambda example: example["text"] not in seen)


def make_task(t: HybridTaskConfig) -> TaskData:
    """Build `t`'s sets; bad data (a missing file or column, a held-out label the training set lacks) is a
    `UserError` naming the file."""
    try:
        return _make(t)
    except ValueError as err:
        raise UserError(f"task {t.name}: {err}") from None


def _make(t: HybridTaskConfig) -> TaskData:
    num_train = GENERATED_NUM_TRAIN if t.num_train is None else t.num_train
    if t.name == "text_sudoku":
        train = make_text_sudoku(num_train, n=t.size, num_blanks=t.num_blanks, seed=t.seed)
        test = make_text_sudoku(t.num_test, n=t.size, num_blanks=t.num_blanks, seed=t.seed + 1)
        return TaskData(train, {"test": unseen(test, train)}, "token", t.size, single_token_words=True)
    if t.name == "chain":
        common = dict(extra_links=t.extra_links, distractor_length=t.distractor_length)
        train = make_chain_reasoning(num_train, hops=t.hops, seed=t.seed, **common)
        tests = {
            f"hops{h}": unseen(make_chain_reasoning(t.num_test, hops=h, seed=t.seed + 1000 + h, **common), train)
            for h in dict.fromkeys([*t.hops, *t.test_hops])
        }
        return TaskData(train, tests, "sequence", 2, id2label=["no", "yes"])
    if t.name == "clutrr":
        train, tests = load_clutrr(t.data_dir, question=t.question, mark_query=t.mark_query,
                                   num_train=t.num_train, max_train_k=t.max_train_k, seed=t.seed,
                                   split_run_ons=t.split_run_ons)
        return _encoded(train, tests, "sequence", num_labels=None, source=str(t.data_dir or default_data_dir()))
    if t.train_file is None or t.test_file is None:
        raise ValueError("task.name=user needs task.train_file and task.test_file")
    columns = (t.text_column, t.label_column, t.level)
    train = load_user_dataset(t.train_file, *columns)
    test = load_user_dataset(t.test_file, *columns, group_column=t.group_column)
    tests = {"test": test.remove_columns("group") if t.group_column else test}
    if t.group_column is not None:
        tests |= split_by_group(test, t.group_column)
    return _encoded(train, tests, t.level, num_labels=t.num_labels, source=t.train_file, test_source=t.test_file)


def _encoded(train, tests, level, *, num_labels, source, test_source=None) -> TaskData:
    """Every set with the class ids of one mapping fitted on `train`; held-out sets are checked before encoding."""
    labels = LabelMap.fit(train, level, num_labels=num_labels, source=source)
    encoded = {name: labels.encode(test, level, source=f"{test_source or source} ({name} set)")
               for name, test in tests.items()}
    train = labels.encode(train, level, source=source)
    id2label = list(labels.id2label) if labels.id2label is not None else None
    return TaskData(train, encoded, level, labels.num_labels, id2label=id2label)


__all__ = ["HybridTaskConfig", "TaskData", "make_task", "unseen"]
