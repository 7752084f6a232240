"""The person-graph heads (`HybridRecursiveConfig.person_graph`, `hybrid.models.people`, `hybrid.data.people`):
run-on sentences split; pronoun sentences joined to the sentence before; links between neighbouring names, or to the
sentence's subject after a conjunction, its possessive or a full stop; sentence-local backbone features, cached and
live alike; the chain core carries A's state down the chain one person per step and never reads people off the A-B
path; the graph comparator reaches as far as its layers; the recipe trains, saves and reloads such a head."""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from test_backbones import make_tiny_backbone
from test_clutrr import _row, _write
from test_clutrr_run import depth_per_k, hybrid_heads
from test_faults import load_recipe
from test_train_hybrid import overrides, train_hybrid

from hybrid.config import ConfigError, load_config
from hybrid.data.clutrr import load_clutrr
from hybrid.data.feature_cache import FeatureCache
from hybrid.data.people import join_one_person_sentences, split_run_on_sentences, words_before_names
from hybrid.data.text_tasks import TextCollator, tokenize_dataset
from hybrid.models.backbones import backbone_hidden_states, load_backbone, sentence_hidden_states
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import HybridRecursiveForSequenceClassification
from hybrid.models.people import mention_pairs
from hybrid.train.config import HybridTrainConfig

REPO = Path(__file__).resolve().parents[1]
# Al-Bo, Bo-Cy, Cy-Di, Di-Ed: B is four links from A; Fa-Gi is off every A-B path.
CHAIN = "Story: <Al> met [Bo]. [Bo] saw [Cy]. [Cy] has [Di]. [Di] knows {Ed}. [Fa] met [Gi]."


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_backbone("bert", tmp_path_factory.mktemp("bb") / "bert")


def test_a_sentence_naming_one_person_joins_the_sentence_before():
    # [CLS] "[Tim] likes his sister ." "Her name is [Ann] ." "[Bo] met [Cy] ." "Bye ." [SEP]
    segments = [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, -1]
    entities = [0, 1, 0, 0, 0, 0, 0, 2, 0, 3, 0, 4, 0, 0, 0, 0]
    assert join_one_person_sentences(segments, entities) == [-1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, -1]
    # The first sentence has nothing before it: it stays alone even with one person.
    assert join_one_person_sentences([0, 1, 1], [1, 2, 3]) == [0, 1, 1]


def test_run_on_sentences_are_split_before_a_name_after_a_rare_word_or_a_name():
    seen = words_before_names(["[Ann] took her son [Bo] home.", "[Cy] and her son [Di] ran.",
                               "[Ed]'s son [Fay] and [Gus] sang.", "[Al] met her son [Ida]."])
    assert seen["son"] == 4 and seen["and"] == 1
    text = "Story: [Kim] took her son [Al] to her party [Bo] met [Cy] [Di] ran."
    assert split_run_on_sentences(text, seen) == "Story: [Kim] took her son [Al] to her party. [Bo] met. [Cy]. [Di] ran."
    assert split_run_on_sentences(text, seen, rare=0) == text.replace("[Cy] [Di]", "[Cy]. [Di]")


def test_clutrr_splits_run_ons_in_every_set_with_word_counts_from_training_alone(tmp_path):
    saw = [_row(f"[A{i}] saw [B{i}].", (f"A{i}", f"B{i}"), "son", "task_1.2") for i in range(3)]
    rows = {"train.csv": saw + [_row("[Cy] met [Di] [Ed] ran.", ("Cy", "Ed"), "son", "task_1.3")],
            # "met" comes before a name three times here, but only once in training: still rare
            "test.csv": [_row(f"[F{i}] met [G{i}] [H{i}] saw [J{i}].", (f"F{i}", f"J{i}"), "son", "task_1.4")
                         for i in range(3)]}
    train, tests = load_clutrr(_write(tmp_path / "c", rows), question="none", mark_query=True, split_run_ons=True)
    assert train["text"][0] == "Story: <A0> saw {B0}."  # "saw" is seen three times before a name in training
    assert train["text"][3] == "Story: <Cy> met. [Di]. {Ed} ran."
    assert tests["k=4"]["text"][0] == "Story: <F0> met. [G0]. [H0] saw {J0}."
    unsplit, _ = load_clutrr(tmp_path / "c", question="none", mark_query=True)
    assert unsplit["text"][3] == "Story: <Cy> met [Di] {Ed} ran."


AND, COMMA, HIS, HER = 50, 51, 52, 53
WORDS = dict(conjunctions=((AND,), (COMMA, AND)), possessives=(HIS, HER))


def test_links_go_to_the_sentence_subject_after_a_conjunction_its_possessive_or_a_full_stop():
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
    assert mention_pairs(segments, entities, sentences, input_ids, **WORDS) == [
        (0, 1, 2, 1, 2, 4, 5, 2),  # Frank-Charles, as neighbours
        (0, 1, 3, 1, 2, 7, 8, 5),  # Frank-Beverly after "and", reading "and daughter"
        (0, 1, 4, 1, 2, 11, 12, 2),  # Frank-Di across the full stop, reading all after Frank
        (1, 1, 2, 1, 2, 3, 4, 2), (1, 1, 3, 1, 2, 6, 7, 4),  # Kim-Al, and Kim-Bo after ", and"
        (2, 1, 2, 1, 2, 5, 6, 2), (2, 1, 3, 1, 2, 9, 10, 6),  # Dot-Nic, and Dot-Cal after Dot's own "her"
        (3, 1, 2, 1, 2, 5, 6, 2), (3, 2, 3, 5, 6, 9, 10, 6)]  # Ann-Bo, and Bo-Cy: "his" is Bo's
    # With no link words and the joined sentences as written: neighbouring names only (Charles-Beverly,
    # Beverly-Di, Al-Bo, Nic-Cal).
    assert [p[1:3] for p in mention_pairs(segments, entities, segments, input_ids)] == [
        (1, 2), (2, 3), (3, 4), (1, 2), (2, 3), (1, 2), (2, 3), (1, 2), (2, 3)]


def test_each_sentence_is_read_alone_between_the_texts_own_special_tokens(bert):
    backbone, tokenizer = load_backbone(str(bert))
    backbone.requires_grad_(False)
    data = tokenize_dataset(Dataset.from_dict({"text": [CHAIN, "Story: <Al> met {Bo}."], "label": [0, 1]}),
                            tokenizer, level="sequence", max_length=128, entity_graph=True, join_sentences=True)
    batch = TextCollator(tokenizer.pad_token_id)(list(data))
    with torch.no_grad():
        local = sentence_hidden_states(backbone, batch["input_ids"], batch["attention_mask"], batch["segment_ids"], [0, -1])
        ids = batch["input_ids"][0]
        for sentence in range(5):
            positions = (batch["segment_ids"][0] == sentence).nonzero().flatten()
            alone = torch.cat([ids[:1], ids[positions], ids[len(data[0]["input_ids"]) - 1:][:1]])[None]
            expected = backbone_hidden_states(backbone, alone, torch.ones_like(alone), [0, -1])[0, 1:-1]
            torch.testing.assert_close(local[0, positions], expected, rtol=1e-5, atol=1e-5)
    assert (local[0, 0] == 0).all() and (local[1, len(data[1]["input_ids"]):] == 0).all()  # [CLS], padding
    # The feature cache stores the same features, under keys apart from the whole-text ones.
    cache = FeatureCache(backbone, tokenizer, layers=[0, -1], sentence_local=True, dtype="float32", progress=False)
    cached = cache.attach(data).values
    torch.testing.assert_close(cached[0], local[0, : len(cached[0])], rtol=1e-5, atol=1e-5)
    whole = FeatureCache(backbone, tokenizer, layers=[0, -1], dtype="float32", progress=False)
    assert whole.fingerprint != cache.fingerprint
    with pytest.raises(ValueError, match="need the dataset's segment_ids"):
        cache.attach(data.remove_columns("segment_ids"))


def _model(bert, tokenizer, **overrides):
    fields = dict(task="sequence", num_labels=3, hidden_size=16, num_heads=2, halt_max_steps=1, person_graph=True,
                  head="recursive", core="chain", readout_tokens=["<", "{"])
    config = HybridRecursiveConfig(backbone_name_or_path=str(bert), **{**fields, **overrides})
    config.resolve_readout_tokens(tokenizer)
    torch.manual_seed(0)
    return HybridRecursiveForSequenceClassification(config).eval()


def _chain_batch(tokenizer):
    data = tokenize_dataset(Dataset.from_dict({"text": [CHAIN], "label": [0]}), tokenizer, level="sequence",
                            max_length=128, entity_graph=True, join_sentences=True)
    return TextCollator(tokenizer.pad_token_id)(list(data))


def _reads(model, batch, sentence: int, **cycles) -> bool:
    """Whether the logits change when the features of one sentence change."""
    reasoner = model.reasoner
    features = reasoner.encoder.batch_features(batch)

    def logits(f):
        data = {**batch, "features": f}
        graph, _ = reasoner.encoder(data)
        return reasoner.heads(reasoner.core(reasoner.empty_carry(data), graph, None, **cycles)[0])[0]

    moved = features.clone()
    moved[0, batch["segment_ids"][0] == sentence] += 1.0
    return not torch.allclose(logits(features), logits(moved))


def test_the_chain_core_reads_the_whole_chain_and_nothing_off_it(bert):
    _, tokenizer = load_backbone(str(bert))
    batch = _chain_batch(tokenizer)
    model = _model(bert, tokenizer)
    with torch.no_grad():
        assert _reads(model, batch, 0)  # A's own fact, four steps from B
        assert _reads(model, batch, 3)  # B's fact
        assert not _reads(model, batch, 4)  # Fa-Gi: off every A-B path
        # A test-time cap on the steps: three steps do not reach B, so nothing reaches its state.
        assert not _reads(model, batch, 0, max_hops=3) and not _reads(model, batch, 3, max_hops=3)
        assert _reads(model, batch, 0, max_hops=4)
        # The graph comparator reaches as far as its layers: B is four links from A.
        shallow, deep = _model(bert, tokenizer, head="transformer", L_layers=2), _model(bert, tokenizer, head="transformer", L_layers=4)
        assert _reads(shallow, batch, 3) and not _reads(shallow, batch, 0)
        assert _reads(deep, batch, 0) and not _reads(deep, batch, 4)


def test_person_graph_config_and_input_errors(bert):
    _, tokenizer = load_backbone(str(bert))
    with pytest.raises(ValueError, match="person_graph needs halt_max_steps=1"):
        HybridRecursiveConfig(backbone_name_or_path=str(bert), task="sequence", person_graph=True, core="chain",
                              readout_tokens=["<", "{"], halt_max_steps=2)
    with pytest.raises(ValueError, match="person_graph needs core=chain"):
        HybridRecursiveConfig(backbone_name_or_path=str(bert), task="sequence", person_graph=True, core="trm",
                              readout_tokens=["<", "{"], halt_max_steps=1)
    with pytest.raises(ValueError, match="person_graph needs readout_tokens"):
        HybridRecursiveConfig(backbone_name_or_path=str(bert), task="sequence", person_graph=True, core="chain",
                              halt_max_steps=1)
    with pytest.raises(ValueError, match="core='chain' reasons over people"):
        HybridRecursiveConfig(backbone_name_or_path=str(bert), core="chain")
    with pytest.raises(ConfigError, match="person_graph needs task.question=none, got 'first'"):
        load_config(HybridTrainConfig, REPO / "configs" / "hybrid" / "clutrr_people.yaml", ["task.question=first"])
    model = _model(bert, tokenizer)
    with pytest.raises(ValueError, match=r"needs batch keys \['segment_ids', 'entity_ids', 'sentence_ids'\]"):
        model(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="join_sentences joins the entity graph's sentences"):
        tokenize_dataset(Dataset.from_dict({"text": [CHAIN], "label": [0]}), tokenizer, level="sequence",
                         max_length=128, join_sentences=True)


def test_clutrr_people_config_trains_saves_and_reloads(tmp_path, bert):
    run = tmp_path / "run"
    extra = {"task.data_dir": _write(tmp_path / "clutrr"), "task.num_train": "null", "training.global_batch_size": 2,
             "model.halt_max_steps": 1}
    train_hybrid.main(["--config", str(REPO / "configs" / "hybrid" / "clutrr_people.yaml"),
                       *overrides(bert, run, steps=3, **extra)])
    summary = json.loads((run / "results.json").read_text())
    assert summary["person_graph"] and summary["core"] == "chain" and "H_cycles" not in summary
    assert list(summary["results"])[:3] == ["k=2", "k=4", "k=10"]
    model = HybridRecursiveForSequenceClassification.from_pretrained(run / "model")
    assert type(model.reasoner.core).__name__ == "ChainCore" and model.config.subject_possessive_ids
    assert "Person-graph head" in (run / "model" / "README.md").read_text()
    # The saved held-out set carries the graph ids; the reloaded model computes its sentence-local features live and
    # answers as the cached features of the run did.
    held_out = Dataset.load_from_disk(str(run / "data" / "k=4"))
    batch = TextCollator(0)(list(held_out.select_columns(["input_ids", "label", "segment_ids", "entity_ids",
                                                          "sentence_ids"])))
    labels = batch.pop("labels")
    with torch.no_grad():
        live = model(**batch).logits
        cached = model(**batch, features=model.reasoner.encoder.batch_features(batch)).logits
    torch.testing.assert_close(live, cached)
    accuracy = (live.argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(summary["results"]["k=4"]["exact_accuracy"], abs=1e-6)

    # The depth tools: accuracy per k with the walk capped (no step: B's state stays empty), steps to B; the walk.
    depth_per_k.main(["--run", str(run), "--hops", "1", "3", "--batch-size", "2"])
    rows = json.loads((run / "depth_per_k" / "depth_per_k.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [2, 4, 10] and all(set(r["capped"]) == {"1", "3", "None"} for r in rows)
    assert rows[1]["capped"]["None"] == pytest.approx(accuracy, abs=1e-6)
    assert rows[0]["mean_hops"] == 1.0 and rows[0]["unreached"] == 0.0  # "[Hal] is <Ivy>'s son": one link
    load_recipe("trace").main(["--checkpoint", str(run / "model"), "--data", str(run / "data" / "k=2"),
                               "--examples", "0", "--out", str(tmp_path / "walk")])
    walk = json.loads((tmp_path / "walk" / "trace.json").read_text())["examples"]["0"]
    assert [[p["person"] for p in step] for step in walk["steps"]] == [["{ hal }"]]
    assert walk["steps"][0][0]["relation"] == walk["predicted"]  # B is reached at the last step and read there
    # The heads table measures FLOPs on a model rebuilt from the run's config, sentence-local features included.
    flops = hybrid_heads.training_flops(run, examples=2)
    assert flops["head"] > 0 and flops["backbone"] == 0
