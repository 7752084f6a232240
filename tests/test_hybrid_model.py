"""Hybrid models on tiny random backbones of four architectures: forward, training, save / load, Auto classes, LoRA,
baselines and the ACT loop."""

import pytest
import torch
from test_backbones import ARCHITECTURES, tiny_backbones  # noqa: F401  (session fixture)
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from hybrid.data.text_tasks import TextCollator, make_chain_reasoning, make_text_sudoku, tokenize_dataset
from hybrid.models.backbones import load_backbone
from hybrid.models.configuration_hybrid import HybridRecursiveConfig
from hybrid.models.modeling_hybrid import (
    HybridRecursiveForSequenceClassification,
    HybridRecursiveForTokenClassification,
    hybrid_model_for,
)
from hybrid.models.reasoner import OutputHeads, Reasoner

HEAD = dict(hidden_size=32, num_heads=2, H_cycles=2, L_cycles=2, L_layers=1, H_layers=1, halt_max_steps=2)


def _config(path, **overrides) -> HybridRecursiveConfig:
    return HybridRecursiveConfig(backbone_name_or_path=str(path), **{"num_labels": 4, **HEAD, **overrides})


def _sudoku_batch(tokenizer, n=4):
    data = tokenize_dataset(make_text_sudoku(n, n=4, num_blanks=6), tokenizer, level="token", max_length=128)
    return TextCollator(tokenizer.pad_token_id)(list(data))


def _chain_batch(tokenizer, n=4):
    data = tokenize_dataset(make_chain_reasoning(n, hops=2), tokenizer, level="sequence", max_length=128)
    return TextCollator(tokenizer.pad_token_id)(list(data))


def _assert_backbone_equals_saved(model, folder):
    saved = AutoModel.from_pretrained(folder).state_dict()
    for key, value in saved.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_train_step_and_round_trip(tiny_backbones, arch, tmp_path):
    folder = tiny_backbones[arch]
    _, tokenizer = load_backbone(str(folder))
    batch = _sudoku_batch(tokenizer)
    model = HybridRecursiveForTokenClassification(_config(folder))
    _assert_backbone_equals_saved(model, folder)  # construction (post_init) never re-initialises the backbone

    model.train()
    assert not model.backbone.training
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    assert out.logits.shape == (*batch["input_ids"].shape, 4)
    out.loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.reasoner.encoder.proj.weight.grad.abs().sum() > 0 and model.reasoner.heads.output.weight.grad.abs().sum() > 0

    model.eval()
    expected = model(batch["input_ids"], batch["attention_mask"]).logits
    model.save_pretrained(tmp_path / "head")
    assert not any("backbone" in key and "lora" not in key for key in _saved_keys(tmp_path / "head"))
    assert "AutoModelForTokenClassification" in (tmp_path / "head" / "README.md").read_text()
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "head")
    assert type(loaded) is HybridRecursiveForTokenClassification
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits, expected, rtol=0, atol=0)
    _assert_backbone_equals_saved(loaded, folder)


def _saved_keys(folder, name="model.safetensors"):
    from safetensors import safe_open

    with safe_open(str(folder / name), framework="pt") as f:
        return list(f.keys())


def test_loss_decreases_with_adam(tiny_backbones):
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    batch = _sudoku_batch(tokenizer)
    model = HybridRecursiveForTokenClassification(_config(tiny_backbones["bert"])).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_head_input_does_not_depend_on_the_backbone_feature_scale(tiny_backbones):
    # Regression: unnormalised features at MiniLM's scale (RMS ~0.5) kept the recursive head at chance on chain
    # reasoning; backbones differ in hidden-state scale by orders of magnitude.
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    batch = _chain_batch(tokenizer)
    model = hybrid_model_for(_config(tiny_backbones["bert"], task="sequence", num_labels=2)).eval()
    features = model.backbone_features(batch["input_ids"], batch["attention_mask"])
    logits = [
        model(batch["input_ids"], batch["attention_mask"], features=features * scale).logits for scale in (1.0, 300.0)
    ]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits[0], model(batch["input_ids"], batch["attention_mask"], features=-features).logits)


def test_save_backbone_needs_no_backbone_reference(tiny_backbones, tmp_path):
    _, tokenizer = load_backbone(str(tiny_backbones["gpt2"]))
    batch = _chain_batch(tokenizer)
    config = _config(tiny_backbones["gpt2"], task="sequence", num_labels=2, core="hrm")
    model = HybridRecursiveForSequenceClassification(config).eval()
    expected = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    assert expected.shape == (4, 2)
    model.save_pretrained(tmp_path / "full", save_backbone=True)
    reloaded_config = HybridRecursiveConfig.from_pretrained(tmp_path / "full")
    reloaded_config.backbone_name_or_path = str(tmp_path / "nowhere")  # would fail if the file were not used
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full", config=reloaded_config)
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits, expected, rtol=0, atol=0)


def test_lora_changes_only_adapter_and_head(tiny_backbones, tmp_path):
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    batch = _sudoku_batch(tokenizer)
    model = HybridRecursiveForTokenClassification(_config(tiny_backbones["bert"], lora_r=4, head="linear")).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("reasoner.encoder.backbone."))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # LoRA B starts at zero, so A only moves from the second step
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert "reasoner.heads.output.weight" in changed

    model.eval()
    expected = model(batch["input_ids"], batch["attention_mask"]).logits
    model.save_pretrained(tmp_path / "lora")
    # The adapter is saved in PEFT's own format beside the head, and only there.
    assert not any("lora_" in key for key in _saved_keys(tmp_path / "lora"))
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert any("lora_" in key for key in _saved_keys(tmp_path / "lora" / "adapter", "adapter_model.safetensors"))
    loaded = HybridRecursiveForTokenClassification.from_pretrained(tmp_path / "lora")
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("head", ["linear", "mlp", "transformer"])
def test_baselines_train_through_the_act_loop(tiny_backbones, head):
    _, tokenizer = load_backbone(str(tiny_backbones["distilbert"]))
    batch = _chain_batch(tokenizer)
    model = hybrid_model_for(_config(tiny_backbones["distilbert"], head=head, task="sequence", num_labels=2))
    recursive = hybrid_model_for(_config(tiny_backbones["distilbert"], task="sequence", num_labels=2))
    head_params = sum(p.numel() for p in model.reasoner.core.parameters())
    if head == "transformer":  # same blocks as the recursive core (L_layers for TRM)
        assert head_params == sum(p.numel() for p in recursive.reasoner.core.parameters())
    act_loss = model.act_loss().train()
    carry = act_loss.initial_carry(batch)
    carry, loss, metrics, preds, all_halted = act_loss(carry, batch)
    assert preds["logits"].shape == (4, 1, 2) and torch.equal(preds["q_halt_logits"], torch.zeros(4))
    loss.backward()
    if head != "linear":
        assert all(p.grad is not None for p in model.reasoner.core.parameters())
    assert model.reasoner.encoder.proj.weight.grad is not None


@pytest.mark.parametrize("core", ["trm", "hrm", "trm_singlez"])
def test_act_loop_drives_the_recursive_head(tiny_backbones, core):
    _, tokenizer = load_backbone(str(tiny_backbones["llama_sentencepiece"]))
    batch = _sudoku_batch(tokenizer)
    model = hybrid_model_for(_config(tiny_backbones["llama_sentencepiece"], core=core))
    act_loss = model.act_loss().train()
    carry = act_loss.initial_carry(batch)
    for _ in range(model.config.halt_max_steps):
        carry, loss, metrics, preds, all_halted = act_loss(carry, batch)
        loss.backward()
    assert all_halted  # at halt_max_steps every slot halts
    assert ("q_continue_loss" in metrics) == (core == "hrm")
    # Cached features give the same step as running the backbone.
    model.eval()
    features = model.backbone_features(batch["input_ids"], batch["attention_mask"])
    live = model.reasoner(model.reasoner.empty_carry(batch), batch)
    cached = model.reasoner(model.reasoner.empty_carry(batch), {**batch, "features": features})
    torch.testing.assert_close(live.logits, cached.logits)


def test_bad_inputs_raise_clear_errors(tiny_backbones, tmp_path):
    with pytest.raises(ValueError, match="core must be one of"):
        HybridRecursiveConfig(core="rnn")
    with pytest.raises(ValueError, match="hidden_size .* divisible by num_heads"):
        HybridRecursiveConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="sequence-level model but config.task is 'token'"):
        HybridRecursiveForSequenceClassification(_config(tiny_backbones["bert"]))
    model = HybridRecursiveForTokenClassification(_config(tiny_backbones["bert"]))
    model.config.save_pretrained(tmp_path / "config_only")
    with pytest.raises(OSError, match="model.safetensors"):
        HybridRecursiveForTokenClassification.from_pretrained(tmp_path / "config_only")
    with pytest.raises(ValueError, match="unsupported arguments"):
        HybridRecursiveForTokenClassification.from_pretrained(tmp_path / "config_only", colour="blue")
    model.config.backbone_name_or_path = None
    with pytest.raises(ValueError, match="no name or path to refer to"):
        model.save_pretrained(tmp_path / "x")


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_all_padding_columns_are_cut_without_changing_any_output(tiny_backbones, task):
    """The training carry is padded to the longest training text; the reasoner cuts the columns that are padding in
    every row. Same logits, Q logits and latents at every real position as the uncut step, on a core that really saw
    the shorter length."""
    _, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    make = _sudoku_batch if task == "token" else _chain_batch
    longest = make(tokenizer)["input_ids"].shape[1]
    examples = tokenize_dataset(
        make_text_sudoku(4, n=4, num_blanks=6) if task == "token" else make_chain_reasoning(4, hops=2),
        tokenizer, level=task, max_length=128,
    )
    batch = TextCollator(tokenizer.pad_token_id, pad_to=longest + 9)(list(examples))
    model = hybrid_model_for(_config(tiny_backbones["bert"], task=task, num_labels=4)).eval()
    reasoner = model.reasoner
    batch["features"] = model.backbone_features(batch["input_ids"], batch["attention_mask"])
    seen = []
    reasoner.core.register_forward_hook(lambda module, args, out: seen.append(args[1].shape[1]))
    # A carry that is not the initial one: one step in, with different latents in every position.
    carry = Reasoner.forward(reasoner, reasoner.empty_carry(batch), batch).carry
    seen.clear()
    cut = reasoner(carry, batch)
    whole = Reasoner.forward(reasoner, carry, batch)
    assert seen == [1 + longest, 1 + longest + 9]
    keep = 1 + longest
    for new, ref in zip(cut.carry, whole.carry):
        assert new.shape == ref.shape
        torch.testing.assert_close(new[:, :keep], ref[:, :keep])
    torch.testing.assert_close(cut.q_halt_logits, whole.q_halt_logits)
    assert cut.logits.shape == whole.logits.shape
    torch.testing.assert_close(cut.logits[:, : cut.logits.shape[1] - 9], whole.logits[:, : cut.logits.shape[1] - 9])


def test_left_padded_columns_are_not_cut(tiny_backbones):
    """Cutting leading padding would move the tokens relative to the register (RoPE): only a suffix is ever cut."""
    _, tokenizer = load_backbone(str(tiny_backbones["gpt2"]))
    batch = _chain_batch(tokenizer)
    mask = batch["attention_mask"]
    batch = {k: torch.cat([torch.zeros_like(v[:, :3]) if k == "attention_mask" else v[:, :3], v], dim=1)
             if v.ndim == 2 else v for k, v in batch.items()}
    assert not batch["attention_mask"][:, :3].any() and torch.equal(batch["attention_mask"][:, 3:], mask)
    model = hybrid_model_for(_config(tiny_backbones["gpt2"], task="sequence", num_labels=4)).eval()
    seen = []
    model.reasoner.core.register_forward_hook(lambda module, args, out: seen.append(args[1].shape[1]))
    model.reasoner(model.reasoner.empty_carry(batch), batch)
    assert seen == [1 + batch["input_ids"].shape[1]]


def test_readout_tokens_add_the_mean_latent_at_each_marker_to_the_classifier_input():
    """The entity-start readout: register, then the mean latent over each readout token's positions (zeros where a
    text lacks it), shifted past the register; nothing else reaches the classifier."""
    heads = OutputHeads(6, 3, skip=1, level="sequence", readout_ids=(7, 3))
    z = torch.randn(2, 6, 6)
    input_ids = torch.tensor([[7, 3, 7, 9, 1], [3, 3, 0, 0, 0]])
    logits, _ = heads(z, input_ids)
    tokens = z[:, 1:]
    expected = torch.stack([
        torch.cat([z[0, 0], (tokens[0, 0] + tokens[0, 2]) / 2, tokens[0, 1]]),
        torch.cat([z[1, 0], torch.zeros(6), (tokens[1, 0] + tokens[1, 1]) / 2]),
    ]).unsqueeze(1)
    torch.testing.assert_close(logits, heads.output(expected))
    with pytest.raises(ValueError, match="needs the batch's input_ids"):
        heads(z)
    with pytest.raises(ValueError, match="sequence-level classifier"):
        OutputHeads(6, 3, skip=1, level="token", readout_ids=(7,))


def test_readout_tokens_resolve_through_the_tokenizer_and_survive_save_and_load(tiny_backbones, tmp_path):
    folder = tiny_backbones["bert"]
    _, tokenizer = load_backbone(str(folder))
    config = _config(folder, task="sequence", readout_tokens=["<", "{"])
    with pytest.raises(ValueError, match="have no ids yet"):
        hybrid_model_for(config)
    config.resolve_readout_tokens(tokenizer)
    assert config.readout_token_ids == tokenizer.convert_tokens_to_ids(["<", "{"])
    model = hybrid_model_for(config).eval()
    texts = ["is <ann> the aunt of {bo}?", "<cy> and {di} and <cy>"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    logits = model(batch["input_ids"], batch["attention_mask"]).logits
    assert model.reasoner.heads.output.weight.shape == (4, 3 * 32)  # register + one mean per marker
    model.save_pretrained(tmp_path / "head")
    assert "mean latent at each of the tokens ['<', '{']" in (tmp_path / "head" / "README.md").read_text()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head")
    assert loaded.config.readout_token_ids == config.readout_token_ids
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits, logits, rtol=0, atol=0)

    with pytest.raises(ValueError, match="not one token of the backbone's tokenizer"):
        _config(folder, task="sequence", readout_tokens=["<<ann"]).resolve_readout_tokens(tokenizer)
    with pytest.raises(ValueError, match="readout_tokens is for task='sequence'"):
        _config(folder, readout_tokens=["<"])
