"""Backbone features computed once per example and reused across supervision steps and epochs.

Only for a frozen backbone (with LoRA the features change every step). Each entry is keyed by a hash of
(backbone fingerprint, text, token ids), where the fingerprint covers the backbone's name, its config, a sample of its
weights, the hidden-state layers read, the tokenizer (name and vocabulary) and whether each sentence is read alone
(`sentence_local`, the person-graph heads; the sentences are then part of the key): change any of them and the
cache misses instead of serving stale features.

Features are stored in half precision by default (float16; bfloat16 where a backbone's activations overflow float16's
range) in Arrow files, the format of `datasets`, which memory-maps them: the operating system pages features in as
batches read them and can drop them again, so a cache far larger than memory costs no resident memory. A folder
`cache_dir/<fingerprint>-<dtype>` holds one `part-*.arrow` file per build (and per rank): a build only appends, so
ranks write their shards side by side and every reader sees one dataset made of all parts. Without `cache_dir` the
parts go to a temporary folder removed with the cache.
"""

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hybrid.models.backbones import backbone_hidden_states, sentence_hidden_states

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
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, layers: list[int], backbone_name: str,
    sentence_local: bool = False,
) -> str:
    parts = [
        backbone_name,
        model.config.to_json_string(use_diff=False),
        weights_fingerprint(model),
        json.dumps(list(layers)),
        tokenizer_fingerprint(tokenizer),
    ] + (["sentence-local"] if sentence_local else [])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# Arrow has no bfloat16: its 16 bits are stored as int16 and viewed back as bfloat16 when read.
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_STORED = {
    "float16": (np.float16, torch.float16), "bfloat16": (np.int16, torch.int16), "float32": (np.float32, torch.float32),
}


class FeatureCache:
    """Features [L_i, D * len(layers)] per example for a frozen backbone; `hits` / `misses` count looked-up examples.

    backbone_name: defaults to the model's `config.name_or_path`. cache_dir: None keeps the parts in a temporary
    folder. dtype: how features are stored ("float16", "bfloat16" or "float32"). rank / world_size / barrier: in a
    multi-process launch every rank computes its share of the missing examples and `barrier` (e.g.
    `accelerator.wait_for_everyone`) waits for all shards; sharing needs a `cache_dir` all ranks see (without one each
    rank computes everything). progress: show a progress bar while computing (rank 0 only).
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
        dtype: str = "float16",
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        progress: bool = True,
        sentence_local: bool = False,
    ):
        if any(p.requires_grad for p in model.parameters()):
            raise ValueError("the feature cache needs a frozen backbone; this one has trainable parameters (LoRA?)")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token; load it with hybrid.models.backbones.load_backbone")
        if dtype not in DTYPES:
            raise ValueError(f"feature cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if world_size > 1 and barrier is None:
            raise ValueError("a feature cache shared by several ranks needs a barrier (accelerator.wait_for_everyone)")
        self.model = model
        self.tokenizer = tokenizer
        self.layers = list(layers)
        self.batch_size = batch_size
        self.dtype = dtype
        self.sentence_local = sentence_local
        name = backbone_name if backbone_name is not None else model.config.name_or_path
        self.fingerprint = backbone_fingerprint(model, tokenizer, layers=self.layers, backbone_name=name,
                                                sentence_local=sentence_local)
        if cache_dir is None:
            self.folder = Path(tempfile.mkdtemp(prefix="hybrid-features-"))
            weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
            rank, world_size = 0, 1  # a private folder: nothing to share
        else:
            self.folder = Path(cache_dir) / f"{self.fingerprint[:32]}-{dtype}"
            self.folder.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        self.progress = progress and rank == 0
        self.hits = 0
        self.misses = 0
        self._parts: list[str] = []
        self._chunks: list[Tensor] = []  # the flat values of every part's record batches
        self._rows: dict[str, tuple[Tensor, int, int]] = {}  # key -> (a part's flat values, start, stop)
        self._reload()
        if self._rows:
            logger.info("feature cache: %d entries in %s", len(self._rows), self.folder)

    def key(self, text: str, input_ids: list[int], segment_ids: list[int] | None = None) -> str:
        ids = np.asarray(input_ids if segment_ids is None else [*input_ids, *segment_ids], dtype=np.int64).tobytes()
        return hashlib.sha256(self.fingerprint.encode() + text.encode() + ids).hexdigest()

    def _reload(self) -> None:
        """Index every complete part in the folder (parts written by other ranks or earlier runs included)."""
        for path in sorted(self.folder.glob("part-*.arrow")):
            if path.name in self._parts:
                continue
            table = Dataset.from_file(str(path)).data.table  # memory-mapped
            self._parts.append(path.name)
            keys = table.column("key").to_pylist()
            row = 0
            for chunk in table.column("features").chunks:
                with warnings.catch_warnings():  # the mapped buffer is read-only; nothing writes to it
                    warnings.simplefilter("ignore", UserWarning)
                    values = torch.from_numpy(chunk.values.to_numpy(zero_copy_only=True))
                values = values.view(DTYPES[self.dtype])
                self._chunks.append(values)
                offsets = chunk.offsets.to_numpy()
                for i in range(len(chunk)):
                    self._rows.setdefault(keys[row], (values, int(offsets[i]), int(offsets[i + 1])))
                    row += 1

    def _view(self, key: str, length: int) -> Tensor:
        values, start, stop = self._rows[key]
        return values[start:stop].view(length, (stop - start) // length)

    @torch.no_grad()
    def _compute(self, examples: list[tuple[list[int], list[int] | None]]) -> list[np.ndarray]:
        """Backbone features of one batch of `examples` (input ids, segment ids), in their order, as flat arrays of
        the stored type."""
        device = next(self.model.parameters()).device
        length = max(len(ids) for ids, _ in examples)
        input_ids = torch.full((len(examples), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
        segment_ids = torch.full((len(examples), length), -1, dtype=torch.long)
        for row, (ids, segments) in enumerate(examples):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
            if segments is not None:
                segment_ids[row, : len(ids)] = torch.as_tensor(segments)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if self.sentence_local:
            hidden = sentence_hidden_states(self.model, input_ids, attention_mask, segment_ids.to(device), self.layers)
        else:
            hidden = backbone_hidden_states(self.model, input_ids, attention_mask, self.layers)
        stored = hidden.to(DTYPES[self.dtype])
        if not torch.isfinite(stored).all() and torch.isfinite(hidden).all():
            raise ValueError(
                f"backbone features reach {hidden.abs().max().item():.4g}, beyond the range of {self.dtype}; "
                "store them as bfloat16 or float32"
            )
        stored = stored.cpu().view(_STORED[self.dtype][1])
        return [stored[row, : len(ids)].reshape(-1).numpy() for row, (ids, _) in enumerate(examples)]

    def _write_part(self, items: list[tuple[str, tuple[list[int], list[int] | None]]]) -> None:
        """Compute `items` (key, (input ids, segment ids)), longest first so that each backbone batch holds similar lengths and the
        largest batch comes first, and write them as one part, atomically (a reader never sees half a part)."""
        items = sorted(items, key=lambda item: -len(item[1][0]))
        numpy_type, _ = _STORED[self.dtype]
        name = f"part-{uuid.uuid4().hex}"
        staging = self.folder / f"{name}.tmp"
        per_write = self.batch_size * 8
        bar = tqdm(total=len(items), desc="backbone features", unit="text", disable=not self.progress)
        try:
            with pa.OSFile(str(staging), "wb") as sink:
                writer = None
                for start in range(0, len(items), per_write):
                    group = items[start : start + per_write]
                    flats = []
                    for first in range(0, len(group), self.batch_size):
                        flats += self._compute([example for _, example in group[first : first + self.batch_size]])
                        bar.update(min(self.batch_size, len(group) - first))
                    offsets = np.cumsum([0] + [len(f) for f in flats], dtype=np.int64)
                    values = pa.array(np.concatenate(flats).astype(numpy_type, copy=False))
                    batch = pa.record_batch(
                        [
                            pa.array([key for key, _ in group], type=pa.string()),
                            pa.array([len(ids) for _, (ids, _) in group], type=pa.int32()),
                            pa.LargeListArray.from_arrays(pa.array(offsets), values),
                        ],
                        names=["key", "length", "features"],
                    )
                    if writer is None:
                        writer = pa.ipc.new_stream(sink, batch.schema)
                    writer.write_batch(batch)
                writer.close()
            staging.rename(self.folder / f"{name}.arrow")
        finally:
            bar.close()
            staging.unlink(missing_ok=True)

    def attach(self, dataset: Dataset) -> "CachedFeatureDataset":
        """A torch dataset of `dataset`'s examples (with `text` and `input_ids`) plus their `features`: the ones not
        cached yet are computed now (this rank's share of them, with a progress bar) and stored. Sentence-local
        features also need `segment_ids`."""
        input_ids = list(dataset["input_ids"])
        if self.sentence_local and "segment_ids" not in dataset.column_names:
            raise ValueError("sentence-local features need the dataset's segment_ids (tokenize with entity_graph=True)")
        segments = list(dataset["segment_ids"]) if self.sentence_local else [None] * len(input_ids)
        keys = [self.key(*example) for example in zip(dataset["text"], input_ids, segments, strict=True)]
        missing = {key: (ids, seg) for key, ids, seg in zip(keys, input_ids, segments) if key not in self._rows}
        self.misses += sum(key in missing for key in keys)
        self.hits += sum(key not in missing for key in keys)
        mine = list(missing.items())[self.rank :: self.world_size]
        if mine:
            self._write_part(mine)
        if self.world_size > 1:
            self.barrier()
        if missing:
            self._reload()
        return CachedFeatureDataset(dataset, [self._view(key, len(ids)) for key, ids in zip(keys, input_ids)])

    def features(self, texts: list[str], input_ids: list[list[int]]) -> list[Tensor]:
        """Features of each example, computing only the ones not cached yet."""
        return self.attach(Dataset.from_dict({"text": texts, "input_ids": input_ids})).values

    def nbytes(self) -> int:
        """Bytes of the stored features (all parts in the folder)."""
        return sum(values.numel() * values.element_size() for values in self._chunks)


class CachedFeatureDataset(TorchDataset):
    """Examples of a tokenized dataset with their cached backbone `features` (views into the memory-mapped parts),
    for `TextCollator`. The rows are read from `dataset` once, so indexing costs no Arrow lookup."""

    def __init__(self, dataset: Dataset, features: list[Tensor]):
        self.dataset = dataset
        self.rows = dataset.to_list()
        self.values = features

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        """Token count of each example, for length-bucketed batches."""
        return [len(row["input_ids"]) for row in self.rows]

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], "features": self.values[index]}


__all__ = ["DTYPES", "CachedFeatureDataset", "FeatureCache", "backbone_fingerprint", "tokenizer_fingerprint", "weights_fingerprint"]
