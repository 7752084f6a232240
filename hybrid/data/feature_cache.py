"""Backbone features computed once per example and reused across supervision steps and epochs.

Only for a frozen backbone (with LoRA the features change every step). Each entry is keyed by a hash of
(backbone fingerprint, text, token ids), where the fingerprint covers the backbone's name, its config, a sample of its
weights, the hidden-state layers read and the tokenizer (name and vocabulary): change any of them and the cache
misses instead of serving stale features. Entries live in memory and, with `cache_dir`, in a `datasets` folder
(`save_to_disk`) under `cache_dir/<fingerprint>`.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Value, load_from_disk
from torch import Tensor, nn
from torch.utils.data import Dataset as TorchDataset
from transformers import PreTrainedTokenizerBase

from hybrid.models.backbones import backbone_hidden_states

logger = logging.getLogger(__name__)

# Values hashed per weight tensor: enough to notice any fine-tuning or a different checkpoint, cheap for 7B models.
_SAMPLES_PER_TENSOR = 4096


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every tensor's name, shape and dtype, an evenly strided sample of its values, and its sum."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::stride].float().cpu().numpy()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{flat.double().sum().item():.10e}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(f"{tokenizer.name_or_path}|{type(tokenizer).__name__}|{vocab}".encode()).hexdigest()


def backbone_fingerprint(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, layers: list[int], backbone_name: str
) -> str:
    parts = [
        backbone_name,
        model.config.to_json_string(use_diff=False),
        weights_fingerprint(model),
        json.dumps(list(layers)),
        tokenizer_fingerprint(tokenizer),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class FeatureCache:
    """Features [L_i, D * len(layers)] per example for a frozen backbone; `hits` / `misses` count lookups.

    backbone_name: defaults to the model's `config.name_or_path`. cache_dir: None keeps entries in memory only.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        layers: list[int],
        backbone_name: str | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 32,
    ):
        if any(p.requires_grad for p in model.parameters()):
            raise ValueError("the feature cache needs a frozen backbone; this one has trainable parameters (LoRA?)")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token; load it with hybrid.models.backbones.load_backbone")
        self.model = model
        self.tokenizer = tokenizer
        self.layers = list(layers)
        self.batch_size = batch_size
        name = backbone_name if backbone_name is not None else model.config.name_or_path
        self.fingerprint = backbone_fingerprint(model, tokenizer, layers=self.layers, backbone_name=name)
        self.folder = None if cache_dir is None else Path(cache_dir) / self.fingerprint[:32]
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Tensor] = {}
        self._disk: Dataset | None = None
        self._disk_rows: dict[str, int] = {}
        self._unsaved: list[str] = []
        if self.folder is not None and self.folder.is_dir():
            self._disk = load_from_disk(str(self.folder)).with_format("torch")
            self._disk_rows = {key: row for row, key in enumerate(list(self._disk["key"]))}
            logger.info("feature cache: %d entries in %s", len(self._disk_rows), self.folder)

    def key(self, text: str, input_ids: list[int]) -> str:
        ids = np.asarray(input_ids, dtype=np.int64).tobytes()
        return hashlib.sha256(self.fingerprint.encode() + text.encode() + ids).hexdigest()

    def _lookup(self, key: str) -> Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if key in self._disk_rows:
            self._memory[key] = self._disk[self._disk_rows[key]]["features"]
            return self._memory[key]
        return None

    @torch.no_grad()
    def _compute(self, examples: list[list[int]]) -> list[Tensor]:
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start : start + self.batch_size]
            length = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), length), self.tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.as_tensor(ids)
                attention_mask[row, : len(ids)] = 1
            hidden = backbone_hidden_states(self.model, input_ids.to(device), attention_mask.to(device), self.layers)
            out.extend(hidden[row, : len(ids)].cpu() for row, ids in enumerate(chunk))
        return out

    def features(self, texts: list[str], input_ids: list[list[int]]) -> list[Tensor]:
        """Features of each example, computing (in batches) only the ones not cached yet."""
        keys = [self.key(text, ids) for text, ids in zip(texts, input_ids, strict=True)]
        found = [self._lookup(key) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        for i, value in zip(missing, self._compute([input_ids[i] for i in missing])):
            self._memory[keys[i]] = value
            self._unsaved.append(keys[i])
            found[i] = value
        return found

    def attach(self, dataset: Dataset) -> "CachedFeatureDataset":
        """A torch dataset of `dataset`'s examples (with `text` and `input_ids`) plus their `features`, all computed
        or looked up now; saved to `cache_dir` when one is set."""
        values = self.features(list(dataset["text"]), list(dataset["input_ids"]))
        self.save()
        return CachedFeatureDataset(dataset, values)

    def save(self) -> None:
        """Write new entries to the cache folder (no-op in memory-only mode or when nothing is new)."""
        if self.folder is None or not self._unsaved:
            return
        keys = list(self._disk_rows) + self._unsaved
        rows = [self._lookup(key).float().numpy() for key in keys]
        width = rows[0].shape[1]
        features = Features({"key": Value("string"), "features": Array2D(shape=(None, width), dtype="float32")})
        table = Dataset.from_dict({"key": keys, "features": rows}, features=features)
        staging = self.folder.with_name(self.folder.name + ".tmp")
        table.save_to_disk(str(staging))
        if self.folder.exists():
            shutil.rmtree(self.folder)
        staging.rename(self.folder)
        self._disk = load_from_disk(str(self.folder)).with_format("torch")
        self._disk_rows = {key: row for row, key in enumerate(keys)}
        self._unsaved = []


class CachedFeatureDataset(TorchDataset):
    """Examples of a tokenized dataset with their cached backbone `features`, for `TextCollator`."""

    def __init__(self, dataset: Dataset, features: list[Tensor]):
        self.dataset = dataset
        self.values = features

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        example = dict(self.dataset[index])
        example["features"] = self.values[index]
        return example


__all__ = ["CachedFeatureDataset", "FeatureCache", "backbone_fingerprint", "tokenizer_fingerprint", "weights_fingerprint"]
