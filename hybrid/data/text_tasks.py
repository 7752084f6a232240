"""Text tasks for hybrid mode, as `datasets.Dataset`s: text Sudoku, multi-hop chain reasoning, and a user's own file.

Every task yields a `text` column plus either `labels` (one label per whitespace-separated word: token level) or
`label` (one per text: sequence level). `tokenize_dataset` turns words into tokens through the tokenizer's character
offsets, so the label of a word sits on its first token and the other tokens are ignored (-100); `TextCollator` pads
tokenized examples into the batch dicts of docs/design.md.

Sudoku puzzles come from the grid generator in `hybrid.data.sudoku` (unique solutions, seeded), so text and grid
experiments draw from the same distribution.
"""

import bisect
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hybrid.core.layers import PERSON_KEYS
from hybrid.data.people import join_one_person_sentences
from hybrid.core.losses import IGNORE_LABEL_ID
from hybrid.data.sudoku import BOXES, generate_puzzles

LEVELS = ("token", "sequence")


# --- text Sudoku -------------------------------------------------------------------------------------------------


ROW_SEPARATOR = "|"


def sudoku_text(puzzle: list[list[int]]) -> str:
    """Cells separated by spaces, `_` for a blank, rows by ` | ` (not newlines, which some SentencePiece tokenizers
    drop from their offsets): every cell is its own word (and token)."""
    return f" {ROW_SEPARATOR} ".join(" ".join(str(d) if d else "_" for d in row) for row in puzzle)


def make_text_sudoku(num_examples: int, *, n: int = 4, num_blanks: int = 6, seed: int = 0) -> Dataset:
    """Token classification with one label per word: solution digit - 1 for every cell (givens and blanks alike, as
    in the official Sudoku data), -100 for the row separators. num_labels = n."""
    if n not in BOXES:
        raise ValueError(f"text Sudoku supports n in {sorted(BOXES)} (boxes {BOXES}), got n={n}")
    if not 0 < num_blanks < n * n:
        raise ValueError(f"num_blanks must be in 1..{n * n - 1} for a {n}x{n} Sudoku, got {num_blanks}")
    box_rows, box_cols = BOXES[n]
    puzzles, solutions = generate_puzzles(
        num_examples, box_rows=box_rows, box_cols=box_cols, givens=n * n - num_blanks, seed=seed, desc=None
    )
    texts, labels = [], []
    for puzzle, solution in zip(puzzles.reshape(-1, n, n).tolist(), solutions.reshape(-1, n, n).tolist()):
        texts.append(sudoku_text(puzzle))
        word_labels = []
        for r, row in enumerate(solution):
            word_labels += ([IGNORE_LABEL_ID] if r else []) + [d - 1 for d in row]
        labels.append(word_labels)
    return Dataset.from_dict({"text": texts, "labels": labels})


# --- chain reasoning ---------------------------------------------------------------------------------------------

NAMES = (
    "Mia", "Tom", "Anna", "John", "Paul", "Mark", "Sara", "Lucy", "Emma", "Jack", "Kate", "Ben", "Sam", "Max", "Leo",
    "Eva", "Tim", "Dan", "Ian", "Amy", "Zoe", "Joe", "Ray", "Ted", "Bob", "Kim", "Roy", "Sue", "Jim", "Ann", "Ryan",
    "Adam", "Alex", "Nina", "Rose", "Luke", "Owen", "Noah", "Ella", "Lily",
)  # fmt: skip


def make_chain_reasoning(
    num_examples: int, *, hops: int | list[int], extra_links: int = 1, distractor_length: int = 2, seed: int = 0
) -> Dataset:
    """Sequence classification (label 1 = yes, 0 = no) needing `hops` facts chained together.

    Each text asks whether one person is taller than another, then states a chain of "A is taller than B." facts
    plus a disconnected distractor chain, shuffled. The asked pair is exactly `hops` links apart, down the chain (yes)
    or up it (no), and sits at a random place inside the chain, so neither end of the chain gives the answer away.
    `hops` may be a list: each example draws its hop count from it (train on several short depths, test on longer
    ones to measure depth extrapolation).

    Why each example draws its size (0..`extra_links` links beyond the asked ones, 0..`distractor_length` distractor
    people): with fixed sizes of 3 extra links and 4 distractors no head, recursive or not, left chance level on
    MiniLM features (docs/results.md), while one-fact texts are learned in a few hundred steps; a mix of sizes gives
    the gradient easy cases to start from. The question comes first so that it sits at fixed positions next to
    the head's register, which the sequence classifier reads.
    """
    choices = [hops] if isinstance(hops, int) else list(hops)
    if not choices or min(choices) < 1 or extra_links < 0 or distractor_length < 0:
        raise ValueError(
            f"need hops >= 1 (or a non-empty list of them), extra_links >= 0, distractor_length >= 0; "
            f"got {hops}, {extra_links}, {distractor_length}"
        )
    longest_chain = max(choices) + extra_links + 1
    if longest_chain + distractor_length > len(NAMES):
        raise ValueError(
            f"a chain of {longest_chain} people plus a distractor chain of {distractor_length} needs "
            f"more than the {len(NAMES)} names available; lower hops, extra_links or distractor_length"
        )
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(num_examples):
        k = rng.choice(choices)
        chain_length = k + rng.randint(0, extra_links) + 1
        people = rng.sample(NAMES, chain_length + rng.randint(0, distractor_length))
        chain, distractors = people[:chain_length], people[chain_length:]
        facts = [f"{a} is taller than {b}." for a, b in zip(chain, chain[1:])]
        facts += [f"{a} is taller than {b}." for a, b in zip(distractors, distractors[1:])]
        rng.shuffle(facts)
        start = rng.randrange(chain_length - k)
        taller, shorter = chain[start], chain[start + k]
        answer = rng.random() < 0.5
        first, second = (taller, shorter) if answer else (shorter, taller)
        texts.append(f"Question: is {first} taller than {second}? Facts: " + " ".join(facts))
        labels.append(int(answer))
    return Dataset.from_dict({"text": texts, "label": labels})


# --- a user's own data -------------------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
GROUP = "group"  # the column a held-out file's group values travel in (see `split_by_group`)


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def load_user_dataset(
    path: str | Path, text_column: str, label_column: str, level: str, *, group_column: str | None = None
) -> Dataset:
    """A CSV / JSON(L) / Parquet file as a task: `text` plus the labels as the file holds them, `label` (sequence
    level: an int or a class name) or `labels` (token level: a list with one int or class name per
    whitespace-separated word; in CSV a string of them separated by spaces). Class names become ids only through
    `LabelMap`, built once from the training file. `group_column` keeps that column too, as `group`."""
    path = Path(path)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if path.suffix not in _FORMATS:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(_FORMATS)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected a header and one row per example")
    if path.suffix == ".csv" and sum(1 for line in path.open() if line.strip()) < 2:
        raise ValueError(f"{path}: holds no examples (only a header?)")
    try:
        dataset = load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as err:  # datasets wraps every parser error in its own types
        reason = str(err.__cause__ or err).splitlines()[0]
        raise ValueError(f"{path}: cannot be read as {_FORMATS[path.suffix]} ({reason})") from None
    if len(dataset) == 0:
        raise ValueError(f"{path}: holds no examples (only a header?)")
    columns = [text_column, label_column] + ([group_column] if group_column is not None else [])
    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(f"{path}: no column {column!r}; the file has {dataset.column_names}")
    if len(set(columns)) < len(columns):
        raise ValueError(f"{path}: the text, label and group columns must differ, got {columns}")
    label_name = "label" if level == "sequence" else "labels"
    dataset = dataset.select_columns(columns)
    # One simultaneous rename (identity pairs dropped: datasets refuses renaming a column onto itself), so files whose
    # columns are already called text / label, or even swapped, load too.
    targets = ("text", label_name, GROUP)
    renames = {old: new for old, new in zip(columns, targets) if old != new}
    dataset = dataset.rename_columns(renames)
    for name, column in zip(targets, columns):
        missing = [i for i, value in enumerate(dataset[name]) if value is None or value == ""]
        if missing:
            raise ValueError(f"{path}: column {column!r} is empty in {len(missing)} rows (first: data row {missing[0] + 1})")
    if level == "token" and _is_string(dataset.features["labels"]):
        # A CSV cell of space-separated word labels: ints when every label in the file is an int, else class names.
        all_ints = all(re.fullmatch(r"-?\d+", w) for row in dataset["labels"] for w in row.split())
        dataset = dataset.map(lambda e: {"labels": [int(w) if all_ints else w for w in e["labels"].split()]})
    return dataset


def _natural_key(value) -> tuple:
    """Numbers by value, before names in alphabetical order: k=2 < k=10 < k=a."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def split_by_group(dataset: Dataset, column: str) -> dict[str, Dataset]:
    """Held-out sets `<column>=<value>`, one per value of the `group` column, in natural order of the values."""
    rows: dict = {}
    for index, value in enumerate(dataset[GROUP]):
        rows.setdefault(value, []).append(index)
    rest = dataset.remove_columns(GROUP)
    return {f"{column}={value}": rest.select(rows[value]) for value in sorted(rows, key=_natural_key)}


@dataclass(frozen=True)
class LabelMap:
    """One mapping from a task's label values to class ids: built from the training file, applied to every held-out
    set, so ids agree across files whatever classes each file happens to hold.

    id2label: class names in id order (names found in the training file, sorted), or None when the files hold int
    ids, which are kept as they are. known: the label values a held-out file may use.
    """

    id2label: tuple[str, ...] | None
    num_labels: int
    known: frozenset

    @classmethod
    def fit(cls, train: Dataset, level: str, *, num_labels: int | None = None, source: str = "training file") -> "LabelMap":
        values = _label_values(train, level)
        if not values:
            raise ValueError(f"{source}: no labels")
        if all(isinstance(v, str) for v in values):
            names = tuple(sorted(values))
            if num_labels is not None and num_labels != len(names):
                raise ValueError(f"{source}: task.num_labels={num_labels}, but the file names {len(names)} classes {list(names)}")
            return cls(id2label=names, num_labels=len(names), known=frozenset(names))
        if not all(isinstance(v, int) for v in values):
            raise ValueError(f"{source}: labels mix ints and class names: {sorted(map(str, values))[:10]}")
        inferred = max(values) + 1
        if num_labels is not None and inferred > num_labels:
            raise ValueError(f"{source}: label {max(values)} does not fit task.num_labels={num_labels} (ids 0..{num_labels - 1})")
        if min(values) < 0:
            raise ValueError(f"{source}: negative label {min(values)}; only {IGNORE_LABEL_ID} (ignored word) is allowed")
        known = frozenset(range(num_labels)) if num_labels is not None else frozenset(values)
        return cls(id2label=None, num_labels=num_labels or inferred, known=known)

    def encode(self, dataset: Dataset, level: str, *, source: str) -> Dataset:
        """`dataset` with class ids; a label the training file does not have is an error naming `source`."""
        values = _label_values(dataset, level)
        if self.id2label is not None:
            values = {str(v) for v in values}  # a held-out CSV whose names all look like ints was read as ints
        unseen = sorted(values - self.known, key=str)
        if unseen:
            raise ValueError(
                f"{source}: label {unseen[0]!r} does not occur in the training file"
                + (f" ({len(unseen)} such labels: {unseen[:10]})" if len(unseen) > 1 else "")
                + f"; known labels: {sorted(self.known, key=_natural_key)}"
            )
        if self.id2label is None:
            return dataset
        ids = {name: i for i, name in enumerate(self.id2label)}
        if level == "sequence":
            return dataset.remove_columns("label").add_column("label", [ids[str(v)] for v in dataset["label"]])
        encoded = [[v if v == IGNORE_LABEL_ID else ids[str(v)] for v in row] for row in dataset["labels"]]
        return dataset.remove_columns("labels").add_column("labels", encoded)


def _label_values(dataset: Dataset, level: str) -> set:
    if level == "sequence":
        return set(dataset["label"])
    return {v for row in dataset["labels"] for v in row if v != IGNORE_LABEL_ID}


# --- tokenisation and label alignment ----------------------------------------------------------------------------


def align_word_labels(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    word_labels: list[int],
    *,
    index: int,
    single_token_words: bool = False,
) -> tuple[list[int], list[int]]:
    """(input_ids, token labels): each word's label on its first token, -100 elsewhere.

    Raises ValueError naming example `index` when the label count differs from the word count, a token straddles two
    words, a word got no token, or (with `single_token_words`) a word is split into several tokens.
    """
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if len(word_labels) != len(words):
        raise ValueError(f"example {index}: {len(word_labels)} labels for {len(words)} whitespace-separated words")
    encoding = tokenizer(text, return_offsets_mapping=True)
    labels = [IGNORE_LABEL_ID] * len(encoding["input_ids"])
    tokens_per_word = [0] * len(words)
    word = 0
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        if end <= start:
            continue  # special tokens
        while word < len(words) and words[word][1] <= start:
            word += 1
        # A token that straddles words overlaps the next one too, so two candidates suffice.
        hit = [w for w in range(word, min(word + 2, len(words))) if words[w][0] < end and start < words[w][1]]
        if len(hit) > 1:
            raise ValueError(f"example {index}: token {position} spans words {hit[0]} and {hit[1]}; separate them")
        if not hit:
            continue  # a token of whitespace only
        if tokens_per_word[hit[0]] == 0:
            labels[position] = word_labels[hit[0]]
        tokens_per_word[hit[0]] += 1
    for w, count in enumerate(tokens_per_word):
        if count == 0:
            raise ValueError(f"example {index}: word {w} ({text[slice(*words[w])]!r}) got no token")
        if single_token_words and count > 1:
            raise ValueError(
                f"example {index}: word {w} ({text[slice(*words[w])]!r}) is split into {count} tokens by "
                f"{type(tokenizer).__name__}; this task needs one token per word"
            )
    return encoding["input_ids"], labels


# Entities are names in brackets: [Name], or <Name> / {Name} for the two people a question asks about (CLUTRR's
# mark_query); sentences end at . ? or !.
ENTITY = re.compile(r"\[([^\[\]<>{}]+)\]|<([^\[\]<>{}]+)>|\{([^\[\]<>{}]+)\}")
SENTENCE_END = re.compile(r"[.?!]+")


def entity_graph_ids(text: str, offsets: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(segment_ids, entity_ids), one per token, for the entity-graph head (`HybridRecursiveConfig.entity_graph`).

    segment: the sentence a token lies in (0, 1, ...; -1 for special tokens, which have no characters);
    entity: 1 + the index of the bracketed name the token belongs to (brackets included; the same name in any
    brackets is one entity), 0 for tokens outside any name. A token's segment is that of its first character."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    names: dict[str, int] = {}
    spans = []
    for match in ENTITY.finditer(text):
        name = next(g for g in match.groups() if g is not None).strip()
        spans.append((*match.span(), names.setdefault(name, len(names) + 1)))
    segment_ids, entity_ids = [], []
    for start, end in offsets:
        if end <= start:
            segment_ids.append(-1)
            entity_ids.append(0)
            continue
        segment_ids.append(bisect.bisect_right(ends, start))
        entity_ids.append(next((entity for a, b, entity in spans if a <= start and end <= b), 0))
    return segment_ids, entity_ids


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    level: str,
    max_length: int | None,
    single_token_words: bool = False,
    entity_graph: bool = False,
    join_sentences: bool = False,
) -> Dataset:
    """Add `input_ids` and `labels` (token level) or `label` (sequence level); with `entity_graph`, also each token's
    `segment_ids` and `entity_ids` (`entity_graph_ids`), and with `join_sentences` (the person graph) its
    `sentence_ids` as written while `segment_ids` join one-person sentences to the one before
    (`hybrid.data.people.join_one_person_sentences`). Checks every example before training: a text longer than
    `max_length` tokens (the backbone's limit; see `backbone_max_length`) is an error, never silently truncated, and
    with `entity_graph` a text without a bracketed name is an error (its tokens would see only their sentence)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if join_sentences and not entity_graph:
        raise ValueError("join_sentences joins the entity graph's sentences: set entity_graph=True too")
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer; label alignment needs character offsets")
    expected = "labels" if level == "token" else "label"
    if expected not in dataset.column_names:
        raise ValueError(f"a {level}-level dataset needs a {expected!r} column; it has {dataset.column_names}")

    def encode(example, index):
        if level == "token":
            input_ids, labels = align_word_labels(
                tokenizer, example["text"], example["labels"], index=index, single_token_words=single_token_words
            )
            out = {"input_ids": input_ids, "labels": labels}
        else:
            encoding = tokenizer(example["text"], return_offsets_mapping=entity_graph)
            out = {"input_ids": encoding["input_ids"]}
        if entity_graph:
            if level == "token":
                encoding = tokenizer(example["text"], return_offsets_mapping=True)
            out["segment_ids"], out["entity_ids"] = entity_graph_ids(example["text"], encoding["offset_mapping"])
            if not any(out["entity_ids"]):
                raise ValueError(f"example {index}: no bracketed name ([Name], <Name> or {{Name}}) for the entity graph")
            if join_sentences:
                out["sentence_ids"] = out["segment_ids"]
                out["segment_ids"] = join_one_person_sentences(out["segment_ids"], out["entity_ids"])
        if max_length is not None and len(out["input_ids"]) > max_length:
            raise ValueError(
                f"example {index}: {len(out['input_ids'])} tokens, more than the backbone's maximum of {max_length}"
            )
        return out

    return dataset.map(encode, with_indices=True)


@dataclass
class TextCollator:
    """Pads examples (`input_ids`, `labels` or `label`, optionally `features` and the entity or person graph's
    `segment_ids`, `entity_ids`, `sentence_ids`) into a batch dict.

    pad_to: None pads to the longest example; an int pads every batch to that length, which the ACT training loop
    needs (a slot keeps its rows across steps, so every batch must have the same shape).
    """

    pad_token_id: int
    pad_to: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        length = max(lengths) if self.pad_to is None else self.pad_to
        if max(lengths) > length:
            raise ValueError(f"an example has {max(lengths)} tokens, more than pad_to={self.pad_to}")
        batch_size = len(examples)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        for row, (example, n) in enumerate(zip(examples, lengths)):
            input_ids[row, :n] = torch.as_tensor(example["input_ids"])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in examples[0]:
            batch["labels"] = torch.full((batch_size, length), IGNORE_LABEL_ID, dtype=torch.long)
            for row, (example, n) in enumerate(zip(examples, lengths)):
                batch["labels"][row, :n] = torch.as_tensor(example["labels"])
        elif "label" in examples[0]:
            batch["labels"] = torch.as_tensor([e["label"] for e in examples], dtype=torch.long)
        for key in PERSON_KEYS:
            if key in examples[0]:
                batch[key] = torch.full((batch_size, length), 0 if key == "entity_ids" else -1, dtype=torch.long)
                for row, (example, n) in enumerate(zip(examples, lengths)):
                    batch[key][row, :n] = torch.as_tensor(example[key])
        if "features" in examples[0]:
            width = examples[0]["features"].shape[-1]
            batch["features"] = torch.zeros(batch_size, length, width, dtype=examples[0]["features"].dtype)
            for row, (example, n) in enumerate(zip(examples, lengths)):
                batch["features"][row, :n] = example["features"]
        return batch


__all__ = [
    "LabelMap",
    "TextCollator",
    "align_word_labels",
    "entity_graph_ids",
    "load_user_dataset",
    "make_chain_reasoning",
    "make_text_sudoku",
    "split_by_group",
    "sudoku_text",
    "tokenize_dataset",
]
