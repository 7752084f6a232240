"""CLUTRR (Sinha et al., EMNLP 2019, arXiv 1908.06177): kinship reasoning over short stories, as a hybrid-mode task.

Each row holds a story whose people are in [brackets], a query (A, B) and the answer `target_text`: B is A's
<target_text>, one of 18 relations. `task_name` = `task_<noise>.<k>` says how many kinship facts must be chained (k)
and which noise facts the story carries. The standard protocol trains on k = 2, 3 and reports accuracy for each
k = 2..10 (systematic generalisation to longer chains) and for each noise type (robustness).

The model input is built from `story` and `query` alone. The files also hold the generator's ground truth
(`clean_story`, `proof_state`, `f_comb`, `story_edges`, `edge_types`, `genders`, ...), which a model must never see:
they are not even read (`READ_COLUMNS`), and `task_name` only decides which held-out set a row is reported in.
"""

from __future__ import annotations

import ast
import os
import random
import re
from pathlib import Path

import pandas as pd
from datasets import Dataset

from hybrid.data.people import split_run_on_sentences, words_before_names

INPUT_COLUMNS = ("story", "query")
LABEL_COLUMN = "target_text"
SET_COLUMN = "task_name"  # task_<noise>.<k>: which held-out set a row belongs to, never part of the input
READ_COLUMNS = (*INPUT_COLUMNS, LABEL_COLUMN, SET_COLUMN)
FILES = {"train": "train.csv", "test": "test.csv", "test_noise": "test_noise.csv"}  # test_noise is optional
NOISE = {1: "none", 2: "supporting", 3: "irrelevant", 4: "disconnected"}
_TASK_NAME = re.compile(r"task_(\d+)\.(\d+)")
_REPO = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """`$HYBRID_DATA_DIR/clutrr`, the data folder defaulting to `../shared/data` beside the repository."""
    return Path(os.environ.get("HYBRID_DATA_DIR", _REPO.parent / "shared" / "data")) / "clutrr"


# mark_query: the two queried people's mentions are bracketed apart from everyone else's.
QUERY_MARKS = (("<", ">"), ("{", "}"))  # (first person A, second person B); the others keep [ ]


QUESTION_PLACES = ("first", "last", "none")


def clutrr_text(story: str, query: str, *, question: str = "first", mark_query: bool = False) -> str:
    """"Question: how is [B] related to [A]? Story: ..." (brackets kept: they mark the entities). The question comes
    first by default so that it sits at fixed positions next to the head's register, which the sequence classifier
    reads, whatever the story's length; question="last" puts it after the story.

    mark_query: every mention of A is written <A> and every mention of B {B}, in the question and the story, so that
    the two ends of the kinship chain differ in the backbone's very tokens (an entity-aware input: the head need not
    match names against the question to find where the chain starts and ends). With the marks the question itself is
    redundant: question="none" leaves it out ("Story: ..."), which the entity-graph head needs, since a question
    naming A and B would join the chain's two ends in one hop (`HybridRecursiveConfig.entity_graph`)."""
    if question not in QUESTION_PLACES:
        raise ValueError(f"question must be one of {QUESTION_PLACES}, got {question!r}")
    if question == "none" and not mark_query:
        raise ValueError("question='none' needs mark_query=True: without the question only the marks say who A and B are")
    pair = ast.literal_eval(query) if isinstance(query, str) else query
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
        raise ValueError(f"query must be a pair of names like \"('Ann', 'Bob')\", got {query!r}")
    first, second = pair
    asked = f"Question: how is [{second}] related to [{first}]?"
    text = {"first": f"{asked} Story: {story}", "last": f"Story: {story} {asked}", "none": f"Story: {story}"}[question]
    if mark_query:
        for name, (left, right) in zip(pair, QUERY_MARKS):
            text = text.replace(f"[{name}]", f"{left}{name}{right}")
    return text


def parse_task_name(name: str) -> tuple[int, int]:
    """(noise type, k) from `task_<noise>.<k>`."""
    match = _TASK_NAME.fullmatch(str(name))
    if match is None or int(match[1]) not in NOISE:
        raise ValueError(f"task_name must look like task_<noise 1-4>.<k>, got {name!r}")
    return int(match[1]), int(match[2])


def build_examples(
    rows: dict[str, list], *, question: str = "first", mark_query: bool = False, source: str = "CLUTRR"
) -> Dataset:
    """`text`, `label` (the relation's name), `k` and `noise` from the columns of `READ_COLUMNS` only."""
    missing = [c for c in READ_COLUMNS if c not in rows]
    if missing:
        raise ValueError(f"{source}: no column {missing[0]!r}; CLUTRR files need {list(READ_COLUMNS)}")
    texts, noise, depth = [], [], []
    for index, (story, query, task_name) in enumerate(zip(rows["story"], rows["query"], rows[SET_COLUMN])):
        try:
            texts.append(clutrr_text(story, query, question=question, mark_query=mark_query))
            kind, k = parse_task_name(task_name)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{source}: row {index}: {err}") from None
        noise.append(NOISE[kind])
        depth.append(k)
    return Dataset.from_dict({"text": texts, "label": [str(v) for v in rows[LABEL_COLUMN]], "k": depth, "noise": noise})


def _read_local(folder: Path) -> dict[str, dict[str, list]]:
    for split in ("train", "test"):
        if not (folder / FILES[split]).is_file():
            raise ValueError(f"{folder}: no {FILES[split]}; a CLUTRR folder holds {sorted(FILES.values())}")
    splits = {}
    for split, name in FILES.items():
        path = folder / name
        if path.is_file():
            try:
                frame = pd.read_csv(path, usecols=list(READ_COLUMNS), dtype=str, keep_default_na=False)
            except ValueError as err:  # pandas names the missing columns
                raise ValueError(f"{path}: {err}") from None
            splits[split] = frame.to_dict(orient="list")
    return splits


def _read_hub(dataset_id: str) -> dict[str, dict[str, list]]:
    """`owner/name` or `owner/name:config` through `datasets.load_dataset`; splits train, test and (if present)
    test_noise."""
    from datasets import load_dataset

    repo, _, config = dataset_id.partition(":")
    loaded = load_dataset(repo, config or None)
    for split in ("train", "test"):
        if split not in loaded:
            raise ValueError(f"Hub dataset {dataset_id}: no {split!r} split; it has {sorted(loaded)}")
    return {split: loaded[split].select_columns(list(READ_COLUMNS)).to_dict() for split in FILES if split in loaded}


def load_clutrr(
    source: str | Path | None = None,
    *,
    question: str = "first",
    mark_query: bool = False,
    num_train: int | None = None,
    max_train_k: int | None = None,
    seed: int = 0,
    split_run_ons: bool = False,
) -> tuple[Dataset, dict[str, Dataset]]:
    """(train, held-out sets) with relation names as labels: `k=2` .. `k=10` from test.csv (one set per k present)
    and `noise_none`, `noise_supporting`, ... from test_noise.csv.

    source: a folder holding train.csv, test.csv and optionally test_noise.csv (default `default_data_dir()`), or a
    Hugging Face Hub dataset id (`owner/name[:config]`) with the same columns. num_train: a seeded random subset of
    that many training stories (None: all). max_train_k: train only on stories with k <= this. question,
    mark_query: see `clutrr_text`. split_run_ons: end a sentence where a stitched story lacks a full stop
    (`hybrid.data.people.split_run_on_sentences`, with word counts from the training stories used).
    """
    source = default_data_dir() if source is None else source
    folder = Path(source).expanduser()
    if folder.is_dir():
        splits = _read_local(folder)
    elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source):
        splits = _read_hub(source)
    else:
        raise ValueError(f"CLUTRR data {source}: no such folder (nor a Hub dataset id like owner/name[:config])")
    built = {split: build_examples(rows, question=question, mark_query=mark_query,
                                   source=f"{source} {split}") for split, rows in splits.items()}
    train = built["train"]
    if max_train_k is not None:
        train = train.filter(lambda e: e["k"] <= max_train_k)
        if len(train) == 0:
            raise ValueError(f"{source}: no training story has k <= max_train_k={max_train_k}")
    if num_train is not None and num_train < len(train):
        train = train.select(sorted(random.Random(seed).sample(range(len(train)), num_train)))
    if split_run_ons:
        seen = words_before_names(train["text"])
        train, *held_out = (s.map(lambda row: {"text": split_run_on_sentences(row["text"], seen)})
                            for s in (train, built["test"], built.get("test_noise")) if s is not None)
        built |= dict(zip(("test", "test_noise"), held_out))
    tests = {f"k={k}": subset for k, subset in _by(built["test"], "k", sorted(set(built["test"]["k"])))}
    if "test_noise" in built:
        present = set(built["test_noise"]["noise"])
        tests |= {f"noise_{n}": s for n, s in _by(built["test_noise"], "noise", [n for n in NOISE.values() if n in present])}
    return train, tests


def _by(dataset: Dataset, column: str, values: list) -> list[tuple]:
    column_values = dataset[column]
    return [(v, dataset.select([i for i, x in enumerate(column_values) if x == v])) for v in values]


__all__ = ["READ_COLUMNS", "build_examples", "clutrr_text", "default_data_dir", "load_clutrr", "parse_task_name"]
