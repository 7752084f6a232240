"""Backbone loading and hidden states, plus the tiny random backbones (four architectures) the hybrid tests share.

Each tiny backbone is saved to a folder with its tokenizer, so tests load it by path exactly as a user loads a Hub
model. The SentencePiece one trains its tokenizer here, on a few task sentences.
"""

import io
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    LlamaTokenizer,
    PreTrainedTokenizerFast,
)

from hybrid.data.text_tasks import make_chain_reasoning, make_text_sudoku
from hybrid.models.backbones import (
    BackboneNotFoundError,
    backbone_hidden_size,
    backbone_hidden_states,
    backbone_max_length,
    load_backbone,
    resolve_backbone_path,
)
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE

ARCHITECTURES = ("bert", "gpt2", "distilbert", "llama_sentencepiece")
WIDTH = 32


def _corpus() -> list[str]:
    return list(make_text_sudoku(8, n=4, num_blanks=4)["text"]) + list(make_chain_reasoning(8, hops=2)["text"])


def _minilm_folder() -> Path:
    return Path(resolve_backbone_path(DEFAULT_BACKBONE))


def _wordpiece_tokenizer(folder: Path) -> None:
    # The real MiniLM WordPiece vocabulary (offline), copied next to the random model.
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(_minilm_folder() / name, folder / name)


def _bpe_tokenizer(folder: Path) -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)


def _sentencepiece_tokenizer(folder: Path) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=120, model_type="bpe", minloglevel=2
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    LlamaTokenizer.from_pretrained(folder).save_pretrained(folder)


def make_tiny_backbone(arch: str, folder: Path) -> Path:
    """Save a random `arch` backbone of width 32 with a working tokenizer to `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, hidden_size=WIDTH)
    if arch == "bert":
        _wordpiece_tokenizer(folder)
        model = BertModel(BertConfig(vocab_size=30522, max_position_embeddings=128, **small))
    elif arch == "distilbert":
        _wordpiece_tokenizer(folder)
        model = DistilBertModel(DistilBertConfig(vocab_size=30522, dim=WIDTH, hidden_dim=64, n_layers=2, n_heads=2))
    elif arch == "gpt2":
        _bpe_tokenizer(folder)
        model = GPT2Model(GPT2Config(vocab_size=200, n_embd=WIDTH, n_layer=2, n_head=2, n_positions=128))
    elif arch == "llama_sentencepiece":
        _sentencepiece_tokenizer(folder)
        model = LlamaModel(LlamaConfig(vocab_size=120, max_position_embeddings=128, num_key_value_heads=2, **small))
    else:
        raise ValueError(f"unknown test architecture {arch!r}")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {arch: make_tiny_backbone(arch, root / arch) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_backbone_and_hidden_states(tiny_backbones, arch):
    model, tokenizer = load_backbone(str(tiny_backbones[arch]))
    assert tokenizer.pad_token_id is not None and tokenizer.is_fast
    assert backbone_hidden_size(model.config) == WIDTH
    assert backbone_max_length(model.config, tokenizer) <= 512
    enc = tokenizer(["Mia is taller than Tom.", "Tom is taller."], padding=True, return_tensors="pt")
    both = backbone_hidden_states(model, enc["input_ids"], enc["attention_mask"], [0, -1])
    last = backbone_hidden_states(model, enc["input_ids"], enc["attention_mask"], [-1])
    assert both.shape == (2, enc["input_ids"].shape[1], 2 * WIDTH)
    torch.testing.assert_close(both[..., WIDTH:], last)
    # The pretrained weights are the saved ones.
    saved = AutoModel.from_pretrained(tiny_backbones[arch]).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def test_bad_layer_index_names_the_range(tiny_backbones):
    model, tokenizer = load_backbone(str(tiny_backbones["bert"]))
    enc = tokenizer(["a b"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"layer index 7 is out of range.*3 hidden states"):
        backbone_hidden_states(model, enc["input_ids"], enc["attention_mask"], [7])


def test_default_backbone_resolves_offline(caplog):
    caplog.set_level("INFO", logger="hybrid.models.backbones")
    path = resolve_backbone_path(DEFAULT_BACKBONE)
    assert Path(path, "config.json").is_file()
    if path != DEFAULT_BACKBONE:
        assert "using the installed copy" in caplog.text


def test_unknown_backbone_error_names_it():
    with pytest.raises(BackboneNotFoundError, match="no-such-org/no-such-model.*local folder"):
        load_backbone("no-such-org/no-such-model")
