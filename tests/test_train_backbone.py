"""Full fine-tuning (`train_backbone=True`): every backbone weight trains (in eval mode), training checkpoints keep
the trained backbone, the saved folder holds it (not a reference to the untrained name), and a resumed run is exact."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_backbones import make_tiny_backbone
from test_train_hybrid import bert, overrides, train_hybrid  # noqa: F401  (bert: module fixture)

from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import HybridRecursiveForSequenceClassification
from hybrid.train.config import HybridTrainConfig


def _model(backbone) -> HybridRecursiveForSequenceClassification:
    config = HybridRecursiveConfig(backbone_name_or_path=str(backbone), head="linear", train_backbone=True, task="sequence",
                                   num_labels=3, hidden_size=32, num_heads=2, halt_max_steps=2, halt_exploration_prob=0.0)
    return HybridRecursiveForSequenceClassification(config)


def test_backbone_trains_in_eval_mode_and_the_saved_folder_holds_it(tmp_path):
    backbone = make_tiny_backbone("bert", tmp_path / "bert")
    model = _model(backbone).train()
    assert not model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    input_ids = torch.randint(5, 100, (4, 12))
    mask = torch.ones_like(input_ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(input_ids, mask, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    optimizer.step()
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder.layer.0.attention" in k for k in changed) and any("embeddings" in k for k in changed)
    assert all(model.is_checkpointed_key(k) for k in model.state_dict())

    model.eval()
    expected = model(input_ids, mask).logits
    model.save_pretrained(tmp_path / "saved")  # no save_backbone=True needed: the trained weights are the model
    assert any(".backbone." in k for k in load_file(tmp_path / "saved" / "model.safetensors"))
    shutil.rmtree(backbone)  # the untrained backbone's folder is gone: the saved folder must not need it
    loaded = HybridRecursiveForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert loaded.config.backbone_in_checkpoint and loaded.config.train_backbone
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    torch.testing.assert_close(loaded(input_ids, mask).logits, expected, rtol=0, atol=0)


def test_config_rejects_a_feature_cache_or_lora_with_a_trained_backbone():
    with pytest.raises(ValueError, match="train_backbone=true trains the backbone.*feature_cache=none"):
        HybridTrainConfig(run={"output_dir": "x"}, model={"train_backbone": True})
    HybridTrainConfig(run={"output_dir": "x"}, model={"train_backbone": True}, feature_cache="none")
    with pytest.raises(ValueError, match="set lora_r=0"):
        HybridRecursiveConfig(train_backbone=True, lora_r=4)


def test_resumed_full_fine_tuning_run_is_exact_and_checkpoints_keep_the_trained_backbone(tmp_path, bert):
    extra = {"model.head": "linear", "model.train_backbone": "true", "feature_cache": "none", "training.lr": 1e-2}
    full, split = tmp_path / "full", tmp_path / "split"
    train_hybrid.main(overrides(bert, full, **extra))
    train_hybrid.main(overrides(bert, split, **extra) + ["run.stop_at_step=4"])
    train_hybrid.main(overrides(bert, split, **extra) + ["run.resume=auto"])
    a = load_file(full / "checkpoints" / "step_00000008" / "model.safetensors")
    b = load_file(split / "checkpoints" / "step_00000008" / "model.safetensors")
    untrained = load_file(bert / "model.safetensors")
    backbone_keys = [k for k in a if ".backbone." in k]
    assert backbone_keys and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    word = next(k for k in backbone_keys if k.endswith("word_embeddings.weight"))
    assert not torch.equal(a[word], untrained[word.split(".backbone.")[1]])
    saved = load_file(full / "model" / "model.safetensors")
    assert torch.equal(saved[word], a[word])
