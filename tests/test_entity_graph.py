"""The entity-graph head (`HybridRecursiveConfig.entity_graph`): token ids for sentences and bracketed names, the
attention mask they give, and the property the head is built for: a fact passes one hop per attention layer, so only
recursion (or more layers) carries it along a chain of sentences."""

import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from test_backbones import make_tiny_backbone
from test_clutrr import _write
from test_clutrr_run import depth_per_k
from test_train_hybrid import overrides, train_hybrid

from hybrid.core.layers import entity_graph_mask
from hybrid.data.clutrr import clutrr_text
from hybrid.data.text_tasks import TextCollator, entity_graph_ids, tokenize_dataset
from hybrid.models.backbones import load_backbone
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import HybridRecursiveForSequenceClassification
from hybrid.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CHAIN = "Story: <Al> met [Bo]. [Bo] saw [Cy]. [Cy] has {Di}."


def _word_offsets(text):
    """One token per word or punctuation mark, between two special tokens (offsets (0, 0))."""
    return [(0, 0), *(m.span() for m in re.finditer(r"\w+|[^\w\s]", text)), (0, 0)]


def test_ids_follow_sentences_and_names():
    offsets = _word_offsets(CHAIN)
    segments, entities = entity_graph_ids(CHAIN, offsets)
    words = [CHAIN[a:b] if b > a else "*" for a, b in offsets]
    assert list(zip(words, segments, entities)) == [
        ("*", -1, 0), ("Story", 0, 0), (":", 0, 0), ("<", 0, 1), ("Al", 0, 1), (">", 0, 1), ("met", 0, 0),
        ("[", 0, 2), ("Bo", 0, 2), ("]", 0, 2), (".", 0, 0),
        ("[", 1, 2), ("Bo", 1, 2), ("]", 1, 2), ("saw", 1, 0), ("[", 1, 3), ("Cy", 1, 3), ("]", 1, 3), (".", 1, 0),
        ("[", 2, 3), ("Cy", 2, 3), ("]", 2, 3), ("has", 2, 0), ("{", 2, 4), ("Di", 2, 4), ("}", 2, 4), (".", 2, 0),
        ("*", -1, 0),
    ]
    # One name in different brackets is one entity (CLUTRR's query marks)
    _, entities = entity_graph_ids("[Al] x. <Al> y.", _word_offsets("[Al] x. <Al> y."))
    assert entities == [0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]


def test_mask_joins_sentences_and_mentions_and_the_register_only_reads():
    # tokens: s0 = (A, x), s1 = (A, y), s2 = (z, pad)
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    entities = torch.tensor([[1, 0, 1, 0, 0, 0]])
    real = torch.tensor([[1, 1, 1, 1, 1, 0]])
    mask = entity_graph_mask(real, segments, entities)[0].int()
    assert mask.tolist() == [
        # reg A0 x0 A1 y1 z2 pad
        [1, 1, 1, 1, 1, 1, 0],  # the register reads every real token
        [0, 1, 1, 1, 0, 0, 0],  # A in s0: its sentence and its other mention
        [0, 1, 1, 0, 0, 0, 0],  # x: its sentence only
        [0, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # a sentence with no name is an island
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself (never read; no empty row for softmax)
    ]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_backbone("bert", tmp_path_factory.mktemp("bb") / "bert")


def _model(bert, **overrides):
    fields = dict(task="sequence", num_labels=3, hidden_size=32, num_heads=2, L_layers=1, H_layers=1, halt_max_steps=1,
                  entity_graph=True)
    config = HybridRecursiveConfig(backbone_name_or_path=str(bert), **{**fields, **overrides})
    torch.manual_seed(0)
    return HybridRecursiveForSequenceClassification(config).eval()


def _reached(model, batch, perturbed):
    """Which latent positions (register first) change when the backbone features at token positions `perturbed`
    change: how far the core carried the perturbation."""
    reasoner = model.reasoner

    def latent(features):
        data = {**batch, "features": features}
        x, mask = reasoner.encoder(data)
        return reasoner.core(reasoner.empty_carry(data), x, mask)[0][0]

    with torch.no_grad():
        features = model.backbone_features(batch["input_ids"], batch["attention_mask"])
        moved = features.clone()
        moved[0, perturbed] += 10.0
        return ((latent(moved) - latent(features)).abs().amax(-1) > 1e-5).tolist()


def test_a_fact_travels_one_sentence_per_layer_so_recursion_carries_it_down_the_chain(bert):
    _, tokenizer = load_backbone(str(bert))
    data = tokenize_dataset(Dataset.from_dict({"text": [CHAIN], "label": [0]}), tokenizer, level="sequence",
                            max_length=128, entity_graph=True)
    batch = TextCollator(tokenizer.pad_token_id)(list(data))
    segments, entities = batch["segment_ids"][0].tolist(), batch["entity_ids"][0].tolist()
    first = [i for i, s in enumerate(segments) if s == 0 and entities[i] == 0]  # "Story : met ." of sentence 0
    last = [i for i, s in enumerate(segments) if s == 2]  # "[Cy] has {Di} ."

    # One attention layer: the first sentence and the register only; a second carries it to [Bo]'s other mention.
    reached = _reached(_model(bert, head="transformer"), batch, first)
    assert reached == [True] + [s == 0 for s in segments]
    reached = _reached(_model(bert, head="transformer", L_layers=2), batch, first)
    assert reached == [True] + [s == 0 or e == 2 for s, e in zip(segments, entities)]
    assert not any(reached[1 + i] for i in last)
    # Full attention reaches everything in that one layer: the graph, not the layer count, is what stops it.
    flat = _model(bert, head="transformer", entity_graph=False)
    assert all(_reached(flat, batch, first))
    # The same one layer applied recursively (T = 2, n = 2: 6 applications) reaches the chain's far end.
    reached = _reached(_model(bert, head="recursive", core="trm", H_cycles=2, L_cycles=2), batch, first)
    assert all(reached[1 + i] for i in last)


def test_entity_graph_errors(bert):
    with pytest.raises(ValueError, match="the 'mlp' head has none"):
        HybridRecursiveConfig(backbone_name_or_path=str(bert), head="mlp", entity_graph=True)
    model = _model(bert, head="transformer")
    with pytest.raises(ValueError, match=r"needs batch keys \['segment_ids', 'entity_ids'\]"):
        model(torch.tensor([[1, 2, 3]]))
    _, tokenizer = load_backbone(str(bert))
    with pytest.raises(ValueError, match="example 0: no bracketed name"):
        tokenize_dataset(Dataset.from_dict({"text": ["no names here."], "label": [0]}), tokenizer, level="sequence",
                         max_length=128, entity_graph=True)


def test_clutrr_entity_graph_run_without_the_question(tmp_path, bert):
    common = {"task.data_dir": _write(tmp_path / "clutrr"), "task.num_train": "null", "training.global_batch_size": 2,
              "model.entity_graph": "true", "task.question": "none"}
    config = ["--config", str(REPO / "configs" / "hybrid" / "clutrr.yaml")]
    with pytest.raises(UserError, match="question='none' needs mark_query=True"):
        train_hybrid.main([*config, *overrides(tmp_path / "no-backbone", tmp_path / "bad", steps=2, **common)])
    run = tmp_path / "run"
    train_hybrid.main([*config, *overrides(bert, run, steps=2, **common, **{"task.mark_query": "true"})])
    model = HybridRecursiveForSequenceClassification.from_pretrained(run / "model")
    assert model.config.entity_graph and model.reasoner.encoder.entity_graph
    assert "Entity-graph attention" in (run / "model" / "README.md").read_text()
    assert list(json.loads((run / "results.json").read_text())["results"])[:2] == ["k=2", "k=4"]
    # The research tools read the saved held-out sets with their graph ids (they were dropped once).
    depth_per_k.main(["--run", str(run), "--steps", "1", "2", "--batch-size", "2"])
    rows = json.loads((run / "depth_per_k" / "depth_per_k.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [2, 4, 10] and all(set(r["fixed"]) == {"1", "2"} for r in rows)
    assert clutrr_text("[Jo] met [Kim].", "('Jo', 'Kim')", question="none", mark_query=True) == "Story: <Jo> met {Kim}."
