"""The feature cache hits on identical inputs and misses whenever the backbone, layers, tokenizer or text change."""

import pytest
import torch
from test_backbones import tiny_backbones  # noqa: F401  (session fixture)

from hybrid.data.feature_cache import FeatureCache
from hybrid.data.text_tasks import TextCollator, make_text_sudoku, tokenize_dataset
from hybrid.models.backbones import backbone_hidden_states, load_backbone


def _data(tokenizer, seed=0):
    return tokenize_dataset(make_text_sudoku(3, n=4, num_blanks=6, seed=seed), tokenizer, level="token", max_length=128)


def test_cache_hits_misses_and_disk(tiny_backbones, tmp_path):
    model, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    model.requires_grad_(False)
    data = _data(tokenizer)
    cache = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    cached = cache.attach(data)
    assert (cache.hits, cache.misses) == (0, 3)
    cache.attach(data)
    assert (cache.hits, cache.misses) == (3, 3)

    # The cached features are the backbone's, position for position.
    batch = TextCollator(tokenizer.pad_token_id)([cached[i] for i in range(3)])
    live = backbone_hidden_states(model, batch["input_ids"], batch["attention_mask"], [-1])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(batch["features"][mask], live[mask], rtol=1e-5, atol=1e-5)

    reopened = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    reopened.attach(data)
    assert (reopened.hits, reopened.misses) == (3, 0)

    other_layer = FeatureCache(model, tokenizer, layers=[1], cache_dir=tmp_path)
    other_layer.attach(data)
    assert other_layer.misses == 3

    other_text = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    other_text.attach(_data(tokenizer, seed=1))
    assert other_text.misses == 3

    with torch.no_grad():
        model.embeddings.word_embeddings.weight[1000:1010] += 1.0  # any change of weights is a different backbone
    changed = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    assert changed.fingerprint != cache.fingerprint


def test_cache_misses_for_another_tokenizer(tiny_backbones):
    model, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    model.requires_grad_(False)
    text = ["1 2 _ 3"]
    first = FeatureCache(model, tokenizer, layers=[-1])
    tokenizer.add_tokens(["zzqx"])  # same name, different vocabulary
    second = FeatureCache(model, tokenizer, layers=[-1])
    assert first.fingerprint != second.fingerprint
    ids = [tokenizer(text[0])["input_ids"]]
    second.features(text, ids)
    second.features(text, ids)
    assert (second.hits, second.misses) == (1, 1)


def test_cache_refuses_a_trainable_backbone(tiny_backbones):
    model, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    with pytest.raises(ValueError, match="needs a frozen backbone"):
        FeatureCache(model, tokenizer, layers=[-1])
