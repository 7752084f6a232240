"""bench/clutrr_entity_recurrence.py: pronoun sentences joined to the sentence before; edges between neighbouring
names only; the entity recurrence carries A's state down the chain one person per step, never reads people off the
A-B paths, and its untied variant stops at its depth; the graph comparator reaches as far as its layers."""

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "clutrr_entity_recurrence", Path(__file__).resolve().parents[1] / "bench" / "clutrr_entity_recurrence.py")
screen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screen)


def test_a_sentence_naming_one_person_joins_the_sentence_before():
    # [CLS] "[Tim] likes his sister ." "Her name is [Ann] ." "[Bo] met [Cy] ." "Bye ." [SEP]
    segments = [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, -1]
    entities = [0, 1, 0, 0, 0, 0, 0, 2, 0, 3, 0, 4, 0, 0, 0, 0]
    joined = screen.join_one_person_sentences(segments, entities)
    assert joined == [-1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, -1]
    # The first sentence has nothing before it: it stays alone even with one person.
    assert screen.join_one_person_sentences([0, 1, 1], [1, 2, 3]) == [0, 1, 1]


def test_edges_link_neighbouring_names_of_one_sentence_only():
    # "[Kim] took her sister [Flo] and [Flo]'s son [Al] ." "[Bo] met [Cy] ." with token spans in brackets
    segments = torch.tensor([[-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    entities = torch.tensor([[0, 1, 1, 0, 0, 2, 0, 2, 0, 3, 0, 4, 0, 5, 0]])
    assert screen.mention_pairs(segments, entities) == [(0, 1, 2, 1, 3, 5, 6), (0, 2, 3, 7, 8, 9, 10),
                                                        (0, 4, 5, 11, 12, 13, 14)]
    model = screen.EntityRecurrence(4, 8, 3, tied=True, untied_depth=3)
    _, adjacency = model.relations(torch.randn(1, 15, 4), segments, entities)
    linked = {(u, v) for u, v in adjacency[0].nonzero().tolist()}
    assert linked == {(1, 2), (2, 1), (2, 3), (3, 2), (4, 5), (5, 4)}  # Kim-Al only through Flo; Cy-Al never


def _chain_batch(width: int = 12):
    """Sentences u-v: (1, 2), (2, 3), (3, 4), (4, 5), and (6, 7) apart; three tokens each (name, word, name)."""
    pairs = [(1, 2), (2, 3), (3, 4), (4, 5), (6, 7)]
    segments = torch.tensor([[s for s in range(len(pairs)) for _ in range(3)]])
    entities = torch.tensor([[e for u, v in pairs for e in (u, 0, v)]])
    torch.manual_seed(0)
    return torch.randn(1, segments.shape[1], width), segments, entities


def _changed(model, features, segments, entities, b: int, sentence: int) -> bool:
    a = torch.tensor([1])
    before = model(features, segments, entities, a, torch.tensor([b]))
    moved = features.clone()
    moved[0, 3 * sentence: 3 * sentence + 3] += 1.0
    return not torch.allclose(before, model(moved, segments, entities, a, torch.tensor([b])))


@pytest.mark.parametrize("edges", ["adjacent", "sentence"])
def test_the_recursive_head_reads_the_whole_chain_and_nothing_off_it(edges):
    features, segments, entities = _chain_batch()
    model = screen.EntityRecurrence(features.shape[-1], 16, 5, tied=True, untied_depth=3,
                                    edges=edges).eval()
    with torch.no_grad():
        assert _changed(model, features, segments, entities, b=5, sentence=0)  # A's own fact, four steps away
        assert _changed(model, features, segments, entities, b=5, sentence=3)
        assert not _changed(model, features, segments, entities, b=5, sentence=4)  # a fact off every A-B path
        assert not _changed(model, features, segments, entities, b=3, sentence=3)  # beyond B: never read


def test_the_untied_head_stops_at_its_depth():
    features, segments, entities = _chain_batch()
    model = screen.EntityRecurrence(features.shape[-1], 16, 5, tied=False, untied_depth=3).eval()
    with torch.no_grad():
        assert _changed(model, features, segments, entities, b=4, sentence=0)  # three steps: reached
        assert not _changed(model, features, segments, entities, b=5, sentence=0)  # four steps: never reached
        assert not _changed(model, features, segments, entities, b=5, sentence=3)


def test_the_graph_comparator_reads_people_within_its_layers_only():
    features, segments, entities = _chain_batch()
    model = screen.GraphLayers(features.shape[-1], 16, 5, layers=2).eval()
    with torch.no_grad():
        assert _changed(model, features, segments, entities, b=3, sentence=0)  # A's fact, two layers away
        assert not _changed(model, features, segments, entities, b=5, sentence=0)  # four away: out of reach
