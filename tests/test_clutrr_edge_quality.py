"""bench/clutrr_edge_quality.py: the person pairs it scores are the person-graph heads', per edge mode, and the
generator's facts are read as unordered pairs of names, and A-B connectivity follows the pairs."""

import importlib.util
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from hybrid.models.backbones import DEFAULT_BACKBONE, resolve_backbone_path

_spec = importlib.util.spec_from_file_location(
    "clutrr_edge_quality", Path(__file__).resolve().parents[1] / "bench" / "clutrr_edge_quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_backbone_path(DEFAULT_BACKBONE))


def test_story_pairs_follow_each_edge_mode(tokenizer):
    text = "Story: [Frank] took his son [Charles] and daughter <Beverly>. She likes {Di}."
    seen = Counter({"son": 5, "daughter": 5, "likes": 5})  # an unseen word before a name would end a sentence
    words = quality.link_words(tokenizer)
    pairs = {mode: {tuple(sorted(p)) for p in quality.story_pairs(text, tokenizer, mode, seen, words)}
             for mode in ("subject", "adjacent", "sentence")}
    assert pairs["subject"] == {("Charles", "Frank"), ("Beverly", "Frank"), ("Di", "Frank")}
    assert pairs["adjacent"] == {("Charles", "Frank"), ("Beverly", "Charles"), ("Beverly", "Di")}
    assert pairs["sentence"] == {tuple(sorted((u, v))) for u in ("Frank", "Charles", "Beverly", "Di")
                                 for v in ("Frank", "Charles", "Beverly", "Di") if u < v}


def test_facts_are_the_generator_edges_between_named_people():
    row = pd.Series({"genders": "Ann:female,Bo:male,Cy:male", "story_edges": "[(0, 1), (1, 2)]"})
    assert quality.facts(row) == {frozenset(("Ann", "Bo")), frozenset(("Bo", "Cy"))}
    assert quality.connected(quality.facts(row), "Ann", "Cy")
    assert not quality.connected({frozenset(("Ann", "Bo")), frozenset(("Cy", "Di"))}, "Ann", "Di")
