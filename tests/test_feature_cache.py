"""The feature cache hits on identical inputs and misses whenever the backbone, layers, tokenizer, text or storage type
change; features are stored in half precision close to the backbone's, in memory-mapped Arrow parts, shardable
across ranks."""

import pytest
import torch
from test_backbones import tiny_backbones  # noqa: F401  (session fixture)

from hybrid.data import feature_cache
from hybrid.data.feature_cache import FeatureCache
from hybrid.data.text_tasks import TextCollator, make_text_sudoku, tokenize_dataset
from hybrid.models.backbones import backbone_hidden_states, load_backbone


def _data(tokenizer, seed=0, n=3):
    return tokenize_dataset(make_text_sudoku(n, n=4, num_blanks=6, seed=seed), tokenizer, level="token", max_length=128)


@pytest.fixture
def bert(tiny_backbones):
    model, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    model.requires_grad_(False)
    return model, tokenizer


def _live(model, cached, layers=(-1,)):
    batch = TextCollator(0)([cached[i] for i in range(len(cached))])
    live = backbone_hidden_states(model, batch["input_ids"], batch["attention_mask"], list(layers))
    mask = batch["attention_mask"].bool()
    return batch["features"][mask], live[mask]


def test_cache_hits_misses_and_disk(bert, tmp_path):
    model, tokenizer = bert
    data = _data(tokenizer)
    cache = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    cached = cache.attach(data)
    assert (cache.hits, cache.misses) == (0, 3)
    cache.attach(data)
    assert (cache.hits, cache.misses) == (3, 3)

    # The cached features are the backbone's, position for position, to float16's precision.
    stored, live = _live(model, cached)
    assert stored.dtype == torch.float16
    torch.testing.assert_close(stored.float(), live, rtol=2**-10, atol=1e-4)

    reopened = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    reopened.attach(data)
    assert (reopened.hits, reopened.misses) == (3, 0)

    other_layer = FeatureCache(model, tokenizer, layers=[1], cache_dir=tmp_path)
    other_layer.attach(data)
    assert other_layer.misses == 3

    other_text = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    other_text.attach(_data(tokenizer, seed=1))
    assert other_text.misses == 3

    other_dtype = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path, dtype="float32")
    other_dtype.attach(data)
    assert other_dtype.misses == 3

    with torch.no_grad():
        model.embeddings.word_embeddings.weight[1000:1010] += 1.0  # any change of weights is a different backbone
    changed = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    assert changed.fingerprint != cache.fingerprint


def test_storage_types_halve_memory_and_stay_close(bert):
    model, tokenizer = bert
    data = _data(tokenizer, n=4)
    full = FeatureCache(model, tokenizer, layers=[0, -1], dtype="float32")
    exact, live = _live(model, full.attach(data), layers=(0, -1))
    torch.testing.assert_close(exact, live, rtol=1e-5, atol=1e-5)
    for dtype, rtol in (("float16", 2**-10), ("bfloat16", 2**-7)):
        half = FeatureCache(model, tokenizer, layers=[0, -1], dtype=dtype)
        stored, _ = _live(model, half.attach(data), layers=(0, -1))
        assert stored.dtype == feature_cache.DTYPES[dtype]
        torch.testing.assert_close(stored.float(), live, rtol=rtol, atol=1e-3)
        assert half.nbytes() * 2 == full.nbytes() > 0


def test_features_beyond_float16_are_an_error(bert, monkeypatch):
    model, tokenizer = bert
    monkeypatch.setattr(feature_cache, "backbone_hidden_states", lambda model, ids, mask, layers: torch.full((*ids.shape, 4), 1e6))
    with pytest.raises(ValueError, match="beyond the range of float16; store them as bfloat16"):
        FeatureCache(model, tokenizer, layers=[-1]).attach(_data(tokenizer, n=1))
    cached = FeatureCache(model, tokenizer, layers=[-1], dtype="bfloat16").attach(_data(tokenizer, n=1))
    assert cached[0]["features"].float().max().item() == pytest.approx(1e6, rel=1e-2)


def test_ranks_compute_their_shards_and_read_one_dataset(bert, tmp_path):
    model, tokenizer = bert
    data = _data(tokenizer, n=5)
    # Two ranks simulated in one process: rank 0 waits at the barrier while rank 1 builds its shard.
    rank1 = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path, rank=1, world_size=2, barrier=lambda: None)
    rank0 = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path, rank=0, world_size=2,
                         barrier=lambda: rank1.attach(data))
    both = rank0.attach(data)
    parts = sorted(rank0.folder.glob("part-*.arrow"))
    from datasets import Dataset

    assert sorted(len(Dataset.from_file(str(p))) for p in parts) == [2, 3]  # each rank computed its share only
    single = FeatureCache(model, tokenizer, layers=[-1]).attach(data)
    for i in range(5):
        assert torch.equal(both[i]["features"], single[i]["features"])
    reopened = FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path)
    reopened.attach(data)
    assert (reopened.hits, reopened.misses) == (5, 0)
    with pytest.raises(ValueError, match="needs a barrier"):
        FeatureCache(model, tokenizer, layers=[-1], cache_dir=tmp_path, rank=0, world_size=2)


def test_cache_misses_for_another_tokenizer(bert):
    model, tokenizer = bert
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
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        FeatureCache(model, tokenizer, layers=[-1], dtype="int8")
