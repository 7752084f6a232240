"""CLUTRR analysis: how well the person graph of the person-graph heads (`hybrid.models.people`) matches the
generator's facts.

    python bench/clutrr_edge_quality.py [--data DIR] [--edges subject adjacent sentence]

For each `--edges` mode, builds the same text, sentences and person pairs as configs/hybrid/clutrr_people.yaml
("subject": run-on sentences split, one-person sentences joined, a name after "and", after the subject's own his/her
or in a joined sentence linked to the subject), or simpler alternatives ("adjacent": neighbouring names of a sentence
only, no splitting; "sentence": every pair of a sentence), with no backbone pass (the tokenizer alone), and compares the pairs, as unordered pairs of people, with the generator's `story_edges`. It prints
precision and recall per file, noise type and k, the share of stories whose pairs equal the facts exactly, and the
share where A and B are connected at all.

This script reads the ground-truth columns `story_edges` and `genders` (which name each edge's ends), which no model
ever reads: it is an analysis, not an input. The generator lists one chain of facts per story, while the
crowd-written text often states more ("her parents, [Dale] and [Morgan]" also says that Morgan is Danielle's mother),
so a stated but unlisted fact counts as a false positive: precision is a lower bound.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer

from hybrid.data.clutrr import clutrr_text, default_data_dir
from hybrid.data.people import join_one_person_sentences, split_run_on_sentences, words_before_names
from hybrid.data.text_tasks import ENTITY, entity_graph_ids
from hybrid.models.backbones import resolve_backbone_path
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE, SUBJECT_CONJUNCTIONS, SUBJECT_POSSESSIVES
from hybrid.models.people import mention_pairs
from hybrid.utils import UserError, run_main


def link_words(tokenizer) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Token ids of the default subject conjunctions and possessives (`HybridRecursiveConfig.person_graph`)."""
    conjunctions = tuple(tuple(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))) for w in SUBJECT_CONJUNCTIONS)
    return conjunctions, tuple(tokenizer.convert_tokens_to_ids(SUBJECT_POSSESSIVES))


def story_pairs(text: str, tokenizer, edges: str, seen, words) -> set[frozenset[str]]:
    """The unordered pairs of names linked in one story, for one `edges` mode."""
    subject = edges == "subject"
    if subject:
        text = split_run_on_sentences(text, seen)
    encoding = tokenizer(text, return_offsets_mapping=True)
    sentences, entities = entity_graph_ids(text, encoding["offset_mapping"])
    segments = join_one_person_sentences(sentences, entities)
    names = list(dict.fromkeys(next(g for g in m.groups() if g is not None).strip() for m in ENTITY.finditer(text)))
    if edges == "sentence":
        people = [{e for s, e in zip(segments, entities) if s == sentence and e > 0} for sentence in set(segments)]
        pairs = {frozenset((u, v)) for group in people for u in group for v in group if u != v}
    else:
        # Without the subject rules, the (joined) sentences stand for the sentences as written and no word links.
        row = [torch.tensor([ids]) for ids in (segments, entities, sentences if subject else segments,
                                                 encoding["input_ids"])]
        pairs = {frozenset(p[1:3]) for p in mention_pairs(*row, *(words if subject else ()))}
    return {frozenset(names[e - 1] for e in pair) for pair in pairs}


def connected(pairs: set[frozenset[str]], a: str, b: str) -> bool:
    reached, frontier = {a}, {a}
    while frontier:
        frontier = {v for pair in pairs if pair & frontier for v in pair} - reached
        reached |= frontier
    return b in reached


def facts(row) -> set[frozenset[str]]:
    names = [person.split(":")[0] for person in row["genders"].split(",")]
    return {frozenset((names[u], names[v])) for u, v in ast.literal_eval(row["story_edges"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="CLUTRR folder (default $HYBRID_DATA_DIR/clutrr)")
    parser.add_argument("--edges", nargs="+", default=["subject", "adjacent", "sentence"],
                        choices=["subject", "adjacent", "sentence"])
    args = parser.parse_args(argv)
    folder = args.data or default_data_dir()
    files = [folder / name for name in ("train.csv", "test.csv", "test_noise.csv") if (folder / name).exists()]
    if not files or files[0].name != "train.csv":
        raise UserError(f"{folder}: no train.csv (this analysis needs the local CSV files with story_edges)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(DEFAULT_BACKBONE))
    frames = {}
    for path in files:
        frame = pd.read_csv(path)
        missing = {"story", "query", "task_name", "story_edges", "genders"} - set(frame.columns)
        if missing:
            raise UserError(f"{path}: no column(s) {sorted(missing)}")
        frame["text"] = [clutrr_text(story, query, question="none", mark_query=True)
                         for story, query in zip(frame["story"], frame["query"])]
        frame["group"] = [tuple(int(x) for x in name.replace("task_", "").split(".")) for name in frame.task_name]
        frames[path.name] = frame
    seen = words_before_names(list(frames["train.csv"].text))
    words = link_words(tokenizer)
    print("| edges | file | noise | k | stories | precision | recall | stories with exactly the facts | A-B connected |")
    print("|---|---|---|---|---|---|---|---|---|")
    for edges in args.edges:
        for name, frame in frames.items():
            for group, rows in frame.groupby("group"):
                found = [story_pairs(text, tokenizer, edges, seen, words) for text in rows.text]
                true = [facts(row) for _, row in rows.iterrows()]
                hits = sum(len(f & t) for f, t in zip(found, true))
                precision = hits / max(1, sum(len(f) for f in found))
                recall = hits / max(1, sum(len(t) for t in true))
                exact = sum(f == t for f, t in zip(found, true)) / len(rows)
                linked = sum(connected(f, *ast.literal_eval(q)) for f, q in zip(found, rows["query"])) / len(rows)
                print(f"| {edges} | {name} | {group[0]} | {group[1]} | {len(rows)} | {precision:.3f} | {recall:.3f} "
                      f"| {100 * exact:.0f} % | {100 * linked:.1f} % |")


if __name__ == "__main__":
    run_main(main)
