"""bench/clutrr_entity_recurrence.py: run-on sentences split; pronoun sentences joined to the sentence before; edges
between neighbouring names only, or to the sentence's subject after a conjunction or across a pronoun sentence; the
entity recurrence carries A's state down the chain one person per step, never reads people off the
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


def test_run_on_sentences_are_split_before_a_name_after_a_rare_word_or_a_name():
    seen = screen.words_before_names(["[Ann] took her son [Bo] home.", "[Cy] and her son [Di] ran.",
                                      "[Ed]'s son [Fay] and [Gus] sang.", "[Al] met her son [Ida]."])
    assert seen["son"] == 4 and seen["and"] == 1
    text = "Story: [Kim] took her son [Al] to her party [Bo] met [Cy] [Di] ran."
    assert screen.split_run_on_sentences(text, seen) == ("Story: [Kim] took her son [Al] to her party. [Bo] met. [Cy]. "
                                                        "[Di] ran.")
    assert screen.split_run_on_sentences(text, seen, rare=0) == text.replace("[Cy] [Di]", "[Cy]. [Di]")

def test_edges_link_neighbouring_names_of_one_sentence_only():
    # "[Kim] took her sister [Flo] and [Flo]'s son [Al] ." "[Bo] met [Cy] ." with token spans in brackets
    segments = torch.tensor([[-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    entities = torch.tensor([[0, 1, 1, 0, 0, 2, 0, 2, 0, 3, 0, 4, 0, 5, 0]])
    assert screen.mention_pairs(segments, entities) == [(0, 1, 2, 1, 3, 5, 6, 3), (0, 2, 3, 7, 8, 9, 10, 8),
                                                        (0, 4, 5, 11, 12, 13, 14, 12)]
    model = screen.EntityRecurrence(4, 8, 3, tied=True, untied_depth=3)
    _, adjacency = model.relations(torch.randn(1, 15, 4), segments, entities)
    linked = {(u, v) for u, v in adjacency[0].nonzero().tolist()}
    assert linked == {(1, 2), (2, 1), (2, 3), (3, 2), (4, 5), (5, 4)}  # Kim-Al only through Flo; Cy-Al never


AND, COMMA, HIS, HER = 50, 51, 52, 53
WORDS = dict(conjunctions=((AND,), (COMMA, AND)), possessives=(HIS, HER))


def test_subject_edges_link_a_name_to_the_sentence_subject_after_a_conjunction_its_possessive_or_a_full_stop():
    # Row 0: "[Frank] took son [Charles] and daughter [Beverly] ." + "She likes [Di] ." joined to it (one person).
    # Row 1: "[Kim] met [Al] , and [Bo] ."
    # Row 2: "[Dot] stayed with her mother [Nic] before her son [Cal] ."  (the subject's "her" again)
    # Row 3: "[Ann] asked her son [Bo] to fetch his daughter [Cy] ."  ("his" is not the subject's "her")
    one_sentence = [-1] + [0] * 10 + [-1, -1, -1]
    sentences = torch.tensor([[-1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1],
                              [-1, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1], one_sentence, one_sentence])
    segments = sentences.clone()
    segments[0, 9:13] = 0
    entities = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 0, 4, 0, 0], [0, 1, 0, 2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
                             [0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0], [0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0]])
    input_ids = torch.tensor([[1, 10, 11, 12, 13, AND, 14, 15, 16, 17, 18, 19, 16, 2],
                              [1, 10, 11, 12, COMMA, AND, 13, 16, 2, 0, 0, 0, 0, 0],
                              [1, 10, 11, HER, 12, 13, 14, HER, 15, 16, 17, 2, 0, 0],
                              [1, 10, 11, HER, 12, 13, 14, HIS, 15, 16, 17, 2, 0, 0]])
    # (row, u, v, u span, v span, first word r_uv reads)
    assert screen.mention_pairs(segments, entities, sentences, input_ids, **WORDS) == [
        (0, 1, 2, 1, 2, 4, 5, 2),  # Frank-Charles, as neighbours
        (0, 1, 3, 1, 2, 7, 8, 5),  # Frank-Beverly after "and", reading "and daughter"
        (0, 1, 4, 1, 2, 11, 12, 2),  # Frank-Di across the full stop, reading all after Frank
        (1, 1, 2, 1, 2, 3, 4, 2), (1, 1, 3, 1, 2, 6, 7, 4),  # Kim-Al, and Kim-Bo after ", and"
        (2, 1, 2, 1, 2, 5, 6, 2), (2, 1, 3, 1, 2, 9, 10, 6),  # Dot-Nic, and Dot-Cal after Dot's own "her"
        (3, 1, 2, 1, 2, 5, 6, 2), (3, 2, 3, 5, 6, 9, 10, 6)]  # Ann-Bo, and Bo-Cy: "his" is Bo's
    # Neighbouring names only: Charles-Beverly, Beverly-Di, Al-Bo, Nic-Cal.
    assert [p[1:3] for p in screen.mention_pairs(segments, entities)] == [(1, 2), (2, 3), (3, 4), (1, 2), (2, 3),
                                                                          (1, 2), (2, 3), (1, 2), (2, 3)]
    model = screen.EntityRecurrence(4, 8, 3, tied=True, untied_depth=3, edges="subject", **WORDS)
    _, adjacency = model.relations(torch.randn(4, 14, 4), segments, entities, sentences, input_ids)
    assert {(u, v) for u, v in adjacency[0].nonzero().tolist() if u < v} == {(1, 2), (1, 3), (1, 4)}
    with pytest.raises(ValueError, match="sentence_ids"):
        model.relations(torch.randn(4, 14, 4), segments, entities)
    with pytest.raises(ValueError, match="possessives"):
        screen.EntityRecurrence(4, 8, 3, tied=True, untied_depth=3, edges="subject", conjunctions=((AND,),))


def _chain_batch(width: int = 12):
    """Sentences u-v: (1, 2), (2, 3), (3, 4), (4, 5), and (6, 7) apart; three tokens each (name, word, name)."""
    pairs = [(1, 2), (2, 3), (3, 4), (4, 5), (6, 7)]
    segments = torch.tensor([[s for s in range(len(pairs)) for _ in range(3)]])
    entities = torch.tensor([[e for u, v in pairs for e in (u, 0, v)]])
    torch.manual_seed(0)
    return torch.randn(1, segments.shape[1], width), segments, entities


def _changed(model, features, segments, entities, b: int, sentence: int) -> bool:
    a = torch.tensor([1])
    words = torch.arange(segments.shape[1])[None] + 100  # no conjunctions
    before = model(features, segments, entities, a, torch.tensor([b]), segments, words)
    moved = features.clone()
    moved[0, 3 * sentence: 3 * sentence + 3] += 1.0
    return not torch.allclose(before, model(moved, segments, entities, a, torch.tensor([b]), segments, words))


@pytest.mark.parametrize("edges", ["subject", "adjacent", "sentence"])
def test_the_recursive_head_reads_the_whole_chain_and_nothing_off_it(edges):
    features, segments, entities = _chain_batch()
    model = screen.EntityRecurrence(features.shape[-1], 16, 5, tied=True, untied_depth=3,
                                    edges=edges, **WORDS).eval()
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
