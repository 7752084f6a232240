"""Text tasks: seeded generators, label alignment on four tokenizers, user files, bad-input errors, collation."""

import json

import pytest
import torch
from test_backbones import ARCHITECTURES, tiny_backbones  # noqa: F401  (session fixture)

from hybrid.data.text_tasks import (
    IGNORE_LABEL_ID,
    LabelMap,
    TextCollator,
    load_user_dataset,
    make_chain_reasoning,
    make_text_sudoku,
    tokenize_dataset,
)
from hybrid.data.sudoku import BitmaskSolver
from hybrid.models.backbones import load_backbone


def _grid(text: str) -> list[list[int]]:
    rows = text.split(" | ")
    return [[0 if cell == "_" else int(cell) for cell in row.split()] for row in rows]


def test_text_sudoku_is_seeded_unique_and_consistent():
    data = make_text_sudoku(5, n=4, num_blanks=8, seed=3)
    assert list(data["text"]) == list(make_text_sudoku(5, n=4, num_blanks=8, seed=3)["text"])
    assert list(data["text"]) != list(make_text_sudoku(5, n=4, num_blanks=8, seed=4)["text"])
    for example in data:
        grid = _grid(example["text"])
        assert sum(cell == 0 for row in grid for cell in row) == 8
        solver = BitmaskSolver(2, 2)
        solver.load([cell for row in grid for cell in row])
        assert solver.count(limit=2) == 1
        solution = [label + 1 for label in example["labels"] if label != IGNORE_LABEL_ID]
        givens = [cell for row in grid for cell in row]
        assert all(g in (0, s) for g, s in zip(givens, solution))
        rows = [solution[i : i + 4] for i in range(0, 16, 4)]
        assert all(sorted(r) == [1, 2, 3, 4] for r in rows)
        assert all(sorted(c) == [1, 2, 3, 4] for c in zip(*rows))


def _chain_answer(text: str) -> tuple[int | None, bool]:
    """(links from the question's first person down to the second, or None; is the second person above the first?)"""
    question, facts = text.removeprefix("Question: is ").split("? Facts: ")
    first, second = question.split(" taller than ")
    taller = dict(f.removesuffix(".").split(" is taller than ") for f in facts.split(". "))
    def links(start, goal):
        hops, person = 0, start
        while person in taller and person != goal:
            person, hops = taller[person], hops + 1
        return hops if person == goal else None
    return links(first, second), links(second, first) is not None


def test_chain_reasoning_answer_follows_the_chain():
    for example in make_chain_reasoning(50, hops=3, seed=1):
        down, up = _chain_answer(example["text"])
        assert (down == 3) == bool(example["label"]) and up != bool(example["label"])
    mixed = make_chain_reasoning(300, hops=[1, 2], extra_links=2, distractor_length=3, seed=2)
    for example in mixed:
        down, up = _chain_answer(example["text"])
        assert (down is not None) == bool(example["label"]) and up != bool(example["label"])
    assert {_chain_answer(e["text"])[0] for e in mixed if e["label"]} == {1, 2}
    # Sizes vary per example: 1..4 chain facts (hops + extra links) plus 0..2 distractor facts.
    assert {e["text"].count(" is taller than ") for e in mixed} == set(range(1, 7))
    with pytest.raises(ValueError, match="more than the 40 names"):
        make_chain_reasoning(1, hops=30, distractor_length=10)
    with pytest.raises(ValueError, match="need hops >= 1"):
        make_chain_reasoning(1, hops=[])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_sudoku_cell_is_one_token(tiny_backbones, arch):
    _, tokenizer = load_backbone(str(tiny_backbones[arch]))
    data = make_text_sudoku(3, n=4, num_blanks=6)
    tokens = tokenize_dataset(data, tokenizer, level="token", max_length=128, single_token_words=True)
    for example, encoded in zip(data, tokens):
        labelled = [label for label in encoded["labels"] if label != IGNORE_LABEL_ID]
        assert labelled == [label for label in example["labels"] if label != IGNORE_LABEL_ID]
        pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        cells = [p for p, label in zip(pieces, encoded["labels"]) if label != IGNORE_LABEL_ID]
        assert [p.lstrip("▁Ġ") for p in cells] == [c for c in example["text"].split() if c != "|"]


def test_alignment_errors_name_the_example(tiny_backbones):
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    bad_count = make_text_sudoku(2, n=4, num_blanks=6).map(lambda e, i: {"labels": e["labels"][: -1 if i else None]}, with_indices=True)
    with pytest.raises(ValueError, match="example 1: 18 labels for 19 whitespace-separated words"):
        tokenize_dataset(bad_count, tokenizer, level="token", max_length=128)
    from datasets import Dataset

    split = Dataset.from_dict({"text": ["ok", "unbelievably"], "labels": [[1], [2]]})
    with pytest.raises(ValueError, match=r"example 1: word 0 \('unbelievably'\) is split into"):
        tokenize_dataset(split, tokenizer, level="token", max_length=128, single_token_words=True)
    long = make_chain_reasoning(2, hops=2)
    with pytest.raises(ValueError, match="example 0: .* tokens, more than the backbone's maximum of 10"):
        tokenize_dataset(long, tokenizer, level="sequence", max_length=10)


def test_user_files(tmp_path):
    rows = [{"sentence": "a b c", "tags": [0, 1, 0], "cls": "pos"}, {"sentence": "d e", "tags": [1, 1], "cls": "neg"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    tokens = load_user_dataset(tmp_path / "d.jsonl", "sentence", "tags", "token")
    assert tokens[1] == {"text": "d e", "labels": [1, 1]}
    sequences = load_user_dataset(tmp_path / "d.jsonl", "sentence", "cls", "sequence")
    assert list(sequences["label"]) == ["pos", "neg"]  # names stay names until one LabelMap (from training) encodes them
    labels = LabelMap.fit(sequences, "sequence")
    assert labels.id2label == ("neg", "pos") and list(labels.encode(sequences, "sequence", source="d")["label"]) == [1, 0]
    (tmp_path / "d.csv").write_text("sentence,tags\na b,0 1\n")
    assert load_user_dataset(tmp_path / "d.csv", "sentence", "tags", "token")[0]["labels"] == [0, 1]
    with pytest.raises(ValueError, match=r"d.csv: no column 'text'; the file has \['sentence', 'tags'\]"):
        load_user_dataset(tmp_path / "d.csv", "text", "tags", "token")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_user_dataset(tmp_path / "d.txt", "sentence", "tags", "token")


def test_user_files_with_the_default_column_names(tmp_path):
    # Regression: columns already called text / label (the config defaults) made datasets refuse a self-rename.
    (tmp_path / "seq.csv").write_text('text,label\n"a b",1\n"c",0\n')
    assert load_user_dataset(tmp_path / "seq.csv", "text", "label", "sequence")[:] == {"text": ["a b", "c"], "label": [1, 0]}
    (tmp_path / "tok.jsonl").write_text(json.dumps({"text": "a b", "labels": [0, 1]}))
    assert load_user_dataset(tmp_path / "tok.jsonl", "text", "labels", "token")[0] == {"text": "a b", "labels": [0, 1]}
    (tmp_path / "swapped.csv").write_text('label,text\n"a b",1\n')
    assert load_user_dataset(tmp_path / "swapped.csv", "label", "text", "sequence")[0] == {"text": "a b", "label": 1}
    with pytest.raises(ValueError, match="text, label and group columns must differ"):
        load_user_dataset(tmp_path / "seq.csv", "text", "text", "sequence")


def test_collator_pads_and_checks_length():
    examples = [
        {"input_ids": [5, 6, 7], "labels": [1, 2, 3], "features": torch.ones(3, 2)},
        {"input_ids": [8], "labels": [4], "features": torch.ones(1, 2)},
    ]
    batch = TextCollator(pad_token_id=0, pad_to=4)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3, -100], [4, -100, -100, -100]]
    assert batch["features"].sum().item() == 8
    sequence = TextCollator(pad_token_id=0)([{"input_ids": [1], "label": 1}, {"input_ids": [2, 3], "label": 0}])
    assert sequence["labels"].tolist() == [1, 0] and sequence["input_ids"].shape == (2, 2)
    with pytest.raises(ValueError, match="more than pad_to=2"):
        TextCollator(pad_token_id=0, pad_to=2)(examples)
