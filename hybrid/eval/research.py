"""Loading a trained model and its held-out data for the research tools, whichever mode it was trained in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from hybrid.core.act import Batch
from hybrid.core.losses import ACTLoss
from hybrid.data.format import DatasetFormatError, DatasetMetadata, read_split
from hybrid.models.pure import PureConfig
from hybrid.restore import load_pure_run
from hybrid.utils import UserError


@dataclass
class ResearchModel:
    """A trained model ready for the research tools."""

    act_loss: ACTLoss
    kind: Literal["pure", "hybrid"]
    trained_steps: int  # halt_max_steps it was trained with
    source: Path
    hf_model: object = None  # hybrid: the Hugging Face model (its backbone and tokenizer decode traces)
    arch: PureConfig | None = None  # pure: its architecture, with the dataset sizes it was trained on


def load_research_model(path: str | Path) -> ResearchModel:
    """A `train_pure.py` run (or one of its checkpoint folders), or a folder written by a hybrid model's
    `save_pretrained` (recognised by its config.json of model_type "hybrid_recursive")."""
    path = Path(path)
    config_file = path / "config.json"
    if config_file.is_file():
        from hybrid.models.configuration_hybrid import HybridRecursiveConfig
        from hybrid.models.modeling_hybrid import hybrid_model_class

        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != HybridRecursiveConfig.model_type:
            raise ValueError(f"{config_file}: model_type {model_type!r} is not {HybridRecursiveConfig.model_type!r}")
        config = HybridRecursiveConfig.from_pretrained(path)
        model = hybrid_model_class(config).from_pretrained(path, config=config)
        return ResearchModel(model.act_loss().eval(), "hybrid", config.halt_max_steps, path, model)

    run = load_pure_run(path)
    act_loss = ACTLoss(run.act, loss_type=run.arch.loss_type).eval()
    return ResearchModel(act_loss, "pure", run.arch.halt_max_steps, run.checkpoint, arch=run.arch)


def check_data_shape(metadata: DatasetMetadata, arch: PureConfig, where: str | Path) -> None:
    """A pure model reads grids of the seq_len and vocab_size it was trained on; `where` names the dataset.json."""
    if (metadata.seq_len, metadata.vocab_size) != (arch.seq_len, arch.vocab_size):
        raise UserError(
            f"{where} has seq_len={metadata.seq_len}, vocab_size={metadata.vocab_size}; the model was trained with "
            f"seq_len={arch.seq_len}, vocab_size={arch.vocab_size}"
        )


def check_grid_data(model: ResearchModel, data: str | Path, split: str, kind: str | None = None) -> None:
    """Before any model runs: a pure model's `split` of `data` has the model's seq_len and vocab_size and, when a
    picture `kind` is given, the sizes of that kind's grids. Hybrid models read tokenized text and are not checked."""
    if model.kind != "pure":
        return
    meta_file = Path(data) / split / "dataset.json"
    try:
        metadata = DatasetMetadata.from_json(meta_file)
    except DatasetFormatError as err:
        raise UserError(str(err)) from None
    check_data_shape(metadata, model.arch, meta_file)
    if kind is not None:
        from hybrid.eval.pictures import grid_sizes_expected

        expected = grid_sizes_expected(kind, metadata.seq_len, metadata.vocab_size)
        if expected:
            raise UserError(f"--kind {kind} draws grids with {expected}; {meta_file} has seq_len={metadata.seq_len}, "
                            f"vocab_size={metadata.vocab_size}")


def research_batches(
    model: ResearchModel,
    data: str | Path,
    *,
    global_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "test",
) -> Iterator[tuple[Batch, Tensor]]:
    """(batch, real-row mask) pairs of one rank. Pure: a `build_data.py` folder (its `split`). Hybrid: a tokenized
    `datasets` folder (`save_to_disk`, a Dataset or a DatasetDict holding `split`) with `input_ids` and `labels`
    (token level) or `label` (sequence level), padded to the longest text of each batch."""
    data = Path(data)
    if global_batch_size <= 0 or global_batch_size % world_size:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of world_size {world_size}")
    if model.kind == "pure":
        from hybrid.data.sampler import eval_batches

        yield from eval_batches(
            read_split(data, split), global_batch_size=global_batch_size, rank=rank, world_size=world_size
        )
        return

    from datasets import DatasetDict, load_from_disk

    from hybrid.core.layers import GRAPH_KEYS, PERSON_KEYS
    from hybrid.data.text_tasks import TextCollator

    dataset = load_from_disk(str(data))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{data}: no split {split!r}; it has {sorted(dataset)}")
        dataset = dataset[split]
    hf_model = model.hf_model
    label_column = "labels" if hf_model.config.task == "token" else "label"
    # Entity- and person-graph heads also read each token's sentence and name (tokenize_dataset(..., entity_graph=True,
    # join_sentences=True for the person graph)).
    graph = PERSON_KEYS if hf_model.config.person_graph else GRAPH_KEYS if hf_model.config.entity_graph else ()
    columns = ["input_ids", label_column, *graph]
    missing = set(columns) - set(dataset.column_names)
    if missing:
        flags = " (entity_graph=True" + (", join_sentences=True)" if hf_model.config.person_graph else ")") if graph else ""
        raise ValueError(f"{data}: missing columns {sorted(missing)} (it has {dataset.column_names}); save a dataset "
                         f"tokenized with hybrid.data.text_tasks.tokenize_dataset{flags}")
    pad = hf_model.pad_token_id
    if pad is None:
        raise ValueError(f"{model.source}: the backbone config has no pad_token_id to pad text batches with")
    collate = TextCollator(pad)
    local = global_batch_size // world_size
    for start in range(0, len(dataset), global_batch_size):
        lo = min(start + rank * local, len(dataset))
        hi = min(lo + local, start + global_batch_size, len(dataset))
        if hi > lo:
            batch = collate(list(dataset.select(range(lo, hi)).select_columns(columns)))
            if hf_model.backbone_is_frozen:
                # Once per batch, not at each of up to hundreds of supervision steps: a frozen backbone's features
                # never change (the same reuse as training's feature cache).
                with torch.no_grad():
                    batch["features"] = hf_model.reasoner.encoder.batch_features(batch)
            yield batch, torch.ones(hi - lo, dtype=torch.bool)


__all__ = ["ResearchModel", "check_data_shape", "check_grid_data", "load_research_model", "research_batches"]
