"""Hybrid heads as ordinary transformers models: Hub-layout loading offline, class names, pipelines, Trainer,
push_to_hub, and a forward loss that is the training loss."""

import shutil

import pytest
import torch
from test_backbones import tiny_backbones  # noqa: F401  (session fixture)
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

from hybrid.core.rollout import rollout
from hybrid.data.text_tasks import TextCollator, make_chain_reasoning, tokenize_dataset
from hybrid.models.backbones import load_backbone
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import hybrid_model_for

HEAD = dict(hidden_size=32, num_heads=2, H_cycles=2, L_cycles=1, L_layers=1, H_layers=1, halt_max_steps=2)
NAMES = {0: "no", 1: "yes"}


def _sequence_model(folder, **overrides):
    config = HybridRecursiveConfig(
        backbone_name_or_path=str(folder), task="sequence", id2label=NAMES, label2id={v: k for k, v in NAMES.items()},
        **{**HEAD, **overrides},
    )  # fmt: skip
    return hybrid_model_for(config)


def _chain_batch(tokenizer, n=6):
    data = tokenize_dataset(make_chain_reasoning(n, hops=1), tokenizer, level="sequence", max_length=128)
    return TextCollator(tokenizer.pad_token_id)(list(data))


def _hub_cache(tmp_path, folder, repo="org/name", revision="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face Hub cache holding `folder` as `repo` at `revision`, with refs/main pointing at it."""
    root = tmp_path / "hub"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return root, revision


def test_loads_from_a_hub_cache_offline_by_revision(tiny_backbones, tmp_path, monkeypatch):
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    batch = _chain_batch(tokenizer)
    model = _sequence_model(tiny_backbones["bert"]).eval()
    expected = model(batch["input_ids"], batch["attention_mask"]).logits
    model.save_pretrained(tmp_path / "saved")
    cache, revision = _hub_cache(tmp_path, tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    for rev in (revision, "main"):
        loaded = AutoModelForSequenceClassification.from_pretrained("org/name", revision=rev, cache_dir=cache)
        torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits, expected, rtol=0, atol=0)
        assert loaded.config.id2label == NAMES
    with pytest.raises(OSError):
        AutoModelForSequenceClassification.from_pretrained("org/name", revision="f" * 40, cache_dir=cache)
    with pytest.raises(OSError):
        AutoModelForSequenceClassification.from_pretrained("org/other", cache_dir=cache, local_files_only=True)


def test_pipelines_return_class_names(tiny_backbones, tmp_path):
    folder = tiny_backbones["bert"]
    _, tokenizer = load_backbone(str(folder))
    model = _sequence_model(folder).eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    # BERT tokenizers return token_type_ids, which the model must accept.
    assert "token_type_ids" in tokenizer("a b")
    out = classify(["Question: is Ann taller than Bob? Facts: Ann is taller than Bob."])
    assert out[0]["label"] in NAMES.values() and 0.0 <= out[0]["score"] <= 1.0

    tags = {0: "O", 1: "DIGIT", 2: "NAME"}
    token_config = HybridRecursiveConfig(
        backbone_name_or_path=str(folder), task="token", id2label=tags, label2id={v: k for k, v in tags.items()}, **HEAD
    )
    token_model = hybrid_model_for(token_config).eval()
    token_model.save_pretrained(tmp_path / "token")
    tokenizer.save_pretrained(tmp_path / "token")
    tagger = pipeline("token-classification", model=str(tmp_path / "token"))
    entities = tagger("Ann 1 2 Bob")
    assert entities and all(e["entity"] in tags.values() for e in entities)
    assert type(tagger.model) is type(AutoModelForTokenClassification.from_pretrained(tmp_path / "token"))


def test_forward_loss_is_the_training_loss(tiny_backbones):
    for core in ("trm", "hrm"):
        _, tokenizer = load_backbone(str(tiny_backbones["gpt2"]))
        batch = _chain_batch(tokenizer)
        torch.manual_seed(0)
        model = _sequence_model(tiny_backbones["gpt2"], core=core, halt_exploration_prob=0.0).train()
        out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        # The same batch driven by the ACT wrapper and the training loss head, step by step from a fresh carry.
        act_loss = model.act_loss().train()
        assert not model.backbone.training  # no dropout in the backbone, however the train mode is reached
        data = dict(batch)
        carry, losses = act_loss.initial_carry(data), []
        for _ in range(model.config.halt_max_steps):
            carry, loss, metrics, _, _ = act_loss(carry, data)
            carry.halted = torch.zeros_like(carry.halted)  # q_halt starts at -5: nothing halts in two steps anyway
            losses.append(loss / len(data["labels"]))
        torch.testing.assert_close(out.loss, torch.stack(losses).mean())
        assert ("q_continue_loss" in metrics) == (core == "hrm")


def test_trainer_trains_a_head(tiny_backbones, tmp_path):
    from datasets import Dataset

    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    texts = make_chain_reasoning(16, hops=1)
    data = tokenize_dataset(texts, tokenizer, level="sequence", max_length=128).rename_column("label", "labels")
    model = _sequence_model(tiny_backbones["bert"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    collate = TextCollator(tokenizer.pad_token_id)

    def collator(rows):
        return collate([{"input_ids": r["input_ids"], "label": r["labels"]} for r in rows])

    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(list(data)), data_collator=collator)
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert "reasoner.heads.output.weight" in changed
    assert all(torch.equal(p, before.get(n, p)) for n, p in model.named_parameters() if ".backbone." in n)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert loaded.config.id2label == NAMES


def test_push_to_hub_uploads_what_save_pretrained_writes(tiny_backbones, monkeypatch):
    """Only the network calls are replaced; the files uploaded are checked."""
    import huggingface_hub
    from huggingface_hub import HfApi

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        uploaded.update({op.path_in_repo: op for op in operations})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="", commit_description="",
            oid="1" * 40, pr_url=None,
        )  # fmt: skip

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    model = _sequence_model(tiny_backbones["bert"])
    model.push_to_hub("org/head", token="not-used")
    assert {"config.json", "model.safetensors"} <= set(uploaded)


def test_a_hybrid_trm_with_hrms_rule_trains_q_continue(tiny_backbones):
    """Regression: hybrid core=trm with halt_rule=q_halt_vs_continue halted on a Q-continue logit never trained."""
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    batch = _chain_batch(tokenizer)
    model = _sequence_model(tiny_backbones["bert"], core="trm", halt_rule="q_halt_vs_continue")
    act_loss = model.act_loss().train()
    assert act_loss.act.halt_rule == "q_halt_vs_continue" and act_loss.act.compute_target_q
    with torch.no_grad():  # at initialisation the bootstrapped target equals q_continue exactly (zero gradient)
        model.reasoner.heads.q_head.weight.normal_(std=0.1)
    _, loss, metrics, _, _ = act_loss(act_loss.initial_carry(batch), batch)
    loss.backward()
    assert "q_continue_loss" in metrics and model.reasoner.heads.q_head.weight.grad[1].abs().sum() > 0
