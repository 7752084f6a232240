"""Configuration of hybrid mode: a recursive head (TRM / HRM / single-z) on top of any Hugging Face backbone.

The backbone is named by `backbone_name_or_path` (a Hub id or a local folder) and, once a model has been built, its
config is embedded as `backbone_model_config`, so a checkpoint saved with its backbone weights can be rebuilt without
reaching the Hub. Field names follow the pure-mode config: `H_cycles` is the paper's T, `L_cycles` its n.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from hybrid.core.act import HALT_RULES
from hybrid.core.losses import LOSS_FUNCTIONS
from hybrid.models.reasoner import BASELINE_KINDS, RECURSIVE_KINDS

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"

HEADS = ("recursive", *BASELINE_KINDS)
TASKS = ("token", "sequence")
PERSON_CORE = "chain"  # the recursive core of person_graph (hybrid.models.people.ChainCore)
# English words that link a name to its sentence's subject (person_graph's default subject_conjunctions / _possessives)
SUBJECT_CONJUNCTIONS = ("and", ", and")
SUBJECT_POSSESSIVES = ("his", "her")


@strict(accept_kwargs=True)
class HybridRecursiveConfig(PreTrainedConfig):
    r"""
    backbone_name_or_path: Hub id or local folder of the backbone, loaded with `AutoModel` (encoder or decoder-only).
    backbone_model_config: the backbone's own config, embedded when the model is built (a dict or a config).
    backbone_layers: indices into the backbone's `hidden_states` (0 = embeddings, -1 = last layer); several layers
        are concatenated along the feature axis before the projection into the head's width.
    head: "recursive" (the core below) or a baseline: "linear", "mlp", "transformer" (see `hybrid.models.baselines`).
    core: "trm", "hrm" or "trm_singlez" (TRM's single-latent ablation); "chain" with `person_graph`.
    hidden_size, num_heads, expansion, rms_norm_eps: width, attention heads and SwiGLU expansion of the head's blocks.
    H_cycles, L_cycles: T and n of one supervision step. L_layers: blocks of the TRM network (HRM's L network);
        H_layers: blocks of HRM's H network (unused by TRM).
    halt_max_steps, halt_exploration_prob: deep supervision / ACT. halt_rule: "q_halt" (TRM) or
        "q_halt_vs_continue" (HRM, which also trains the Q-continue logit); None picks the core's own rule
        (`hybrid.core.act.halting_rule`).
    loss_type: "stablemax_cross_entropy" or "softmax_cross_entropy".
    task: "token" (one label per token) or "sequence" (one label per text); num_labels / id2label / label2id: the
        output classes and their names (transformers' own fields).
    lora_r: 0 keeps the backbone frozen; > 0 trains LoRA adapters of that rank (PEFT) with `lora_alpha` and
        `lora_target_modules` (None: PEFT's default for the architecture).
    train_backbone: train every backbone weight (full fine-tuning; with `head="linear"` the baseline of most
        benchmark papers). The backbone still runs in eval mode (no dropout); its trained weights are kept in
        training checkpoints and always saved by `save_pretrained`. Exclusive with `lora_r`.
    readout_tokens: sequence task only: the classifier also reads the mean latent at the positions of each of these
        tokens (entity markers such as the "<" and "{" that CLUTRR's `mark_query` puts before the two queried people),
        besides the register; each must be one token of the backbone's tokenizer. readout_token_ids: their ids,
        filled from the tokenizer by `resolve_readout_tokens` (the training recipe does it).
    entity_graph: the head's attention follows the text's entity graph instead of joining every token: a token
        attends to the tokens of its own sentence and to every mention of the same bracketed name in other sentences;
        the register reads every token and is read by none. A kinship fact (one sentence) then passes one hop per
        attention layer, so how far along a chain of facts the head sees grows with the number of layer applications:
        with recursion, with depth at test time. Batches need `segment_ids` and `entity_ids`
        (`hybrid.data.text_tasks.entity_graph_ids`; the training recipe adds them). Heads with attention only
        ("recursive", "transformer").
    person_graph: the head reasons over the text's people (its bracketed names) instead of its tokens
        (`hybrid.models.people`): the backbone reads each sentence alone, people named in one sentence are linked, and
        each link gets a relation vector. head="recursive" with core="chain" walks out from A one person per step
        with shared weights (a longer chain takes more steps); head="transformer" is `L_layers` graph layers over all
        people at once. `readout_tokens` name A's and B's marks (CLUTRR's mark_query: ["<", "{"]). Sequence task, one
        supervision step (halt_max_steps=1). Batches need `segment_ids`, `entity_ids` and `sentence_ids`
        (`tokenize_dataset(..., entity_graph=True, join_sentences=True)`; the training recipe adds them).
    subject_conjunctions, subject_possessives (person_graph): a name after one of these conjunctions, or after the
        sentence subject's own possessive, is linked to the subject rather than to the name before it
        (`hybrid.models.people.mention_pairs`); [] turns the rule off. Their token ids (`subject_conjunction_ids`,
        `subject_possessive_ids`) are filled by `resolve_readout_tokens`.
    backbone_in_checkpoint: written by `save_pretrained`: whether the saved weights include the backbone's.
    """

    model_type = "hybrid_recursive"
    sub_configs_defaults = {
        "backbone_model_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True)
    }

    backbone_name_or_path: str | None = DEFAULT_BACKBONE
    backbone_model_config: dict | PreTrainedConfig | None = None
    backbone_layers: list[int] | None = None
    head: str = "recursive"
    core: str = "trm"
    hidden_size: int = 256
    num_heads: int = 4
    expansion: float = 4.0
    rms_norm_eps: float = 1e-5
    H_cycles: int = 3
    L_cycles: int = 6
    L_layers: int = 2
    H_layers: int = 2
    halt_max_steps: int = 8
    halt_exploration_prob: float = 0.1
    halt_rule: str | None = None
    loss_type: str = "stablemax_cross_entropy"
    task: str = "token"
    lora_r: int = 0
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None
    train_backbone: bool = False
    readout_tokens: list[str] | None = None
    readout_token_ids: list[int] | None = None
    entity_graph: bool = False
    person_graph: bool = False
    subject_conjunctions: list[str] | None = None
    subject_possessives: list[str] | None = None
    subject_conjunction_ids: list[list[int]] | None = None
    subject_possessive_ids: list[int] | None = None
    backbone_in_checkpoint: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.backbone_layers is None:
            self.backbone_layers = [-1]
        choices = {"head": HEADS, "core": (*RECURSIVE_KINDS, PERSON_CORE), "task": TASKS, "loss_type": tuple(LOSS_FUNCTIONS)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"HybridRecursiveConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.halt_rule is not None and self.halt_rule not in HALT_RULES:
            raise ValueError(f"HybridRecursiveConfig.halt_rule must be None or one of {HALT_RULES}, got {self.halt_rule!r}")
        if not self.backbone_layers:
            raise ValueError("HybridRecursiveConfig.backbone_layers must name at least one hidden-state index")
        if self.backbone_name_or_path is None and self.backbone_model_config is None:
            raise ValueError(
                "HybridRecursiveConfig needs backbone_name_or_path (a Hub id or local folder) or backbone_model_config"
            )
        positive = ("hidden_size", "num_heads", "H_cycles", "L_cycles", "L_layers", "H_layers", "halt_max_steps")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"HybridRecursiveConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"HybridRecursiveConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"HybridRecursiveConfig: the head dimension hidden_size / num_heads = {self.hidden_size // self.num_heads} "
                "must be even (rotary position embeddings rotate pairs)"
            )
        if self.lora_r < 0:
            raise ValueError(f"HybridRecursiveConfig.lora_r must be >= 0 (0 = frozen backbone), got {self.lora_r}")
        if self.train_backbone and self.lora_r > 0:
            raise ValueError("HybridRecursiveConfig: train_backbone=True trains every backbone weight; set lora_r=0 "
                             f"(got lora_r={self.lora_r})")
        if self.readout_tokens and self.task != "sequence":
            raise ValueError(f"HybridRecursiveConfig.readout_tokens is for task='sequence' (one label per text), got "
                             f"task={self.task!r}: token-level heads already read every token")
        if self.entity_graph and self.head not in ("recursive", "transformer"):
            raise ValueError(f"HybridRecursiveConfig.entity_graph shapes attention; the {self.head!r} head has none "
                             "(use head='recursive' or 'transformer')")
        if self.person_graph:
            self._check_person_graph()
        elif self.core == PERSON_CORE and self.head == "recursive":
            raise ValueError(f"HybridRecursiveConfig.core={PERSON_CORE!r} reasons over people: set person_graph=True")
        if self.readout_token_ids is not None and len(self.readout_token_ids) != len(self.readout_tokens or []):
            raise ValueError(f"HybridRecursiveConfig.readout_token_ids {self.readout_token_ids} must hold one id per "
                             f"readout token {self.readout_tokens}")

    def _check_person_graph(self) -> None:
        needs = {  # key: (what person_graph needs, whether it has it)
            "task": ("sequence", self.task == "sequence"),
            "head": ("recursive or transformer", self.head in ("recursive", "transformer")),
            "core": (PERSON_CORE, self.head != "recursive" or self.core == PERSON_CORE),
            "halt_max_steps": (1, self.halt_max_steps == 1),  # the walk runs inside one supervision step
            "entity_graph": (False, not self.entity_graph),
            "readout_tokens": ("A's and B's marks, e.g. ['<', '{']", len(self.readout_tokens or []) == 2),
        }
        for key, (wanted, ok) in needs.items():
            if not ok:
                raise ValueError(f"HybridRecursiveConfig.person_graph needs {key}={wanted}, got {getattr(self, key)!r}")
        if self.subject_conjunctions is None:
            self.subject_conjunctions = list(SUBJECT_CONJUNCTIONS)
        if self.subject_possessives is None:
            self.subject_possessives = list(SUBJECT_POSSESSIVES)

    def resolve_readout_tokens(self, tokenizer) -> None:
        """Fill `readout_token_ids` (and, with person_graph, the subject words' ids) from `tokenizer`; each readout
        token and possessive must be one token of its vocabulary."""
        self.readout_token_ids = [_one_token(tokenizer, t, "readout token") for t in self.readout_tokens or []] or None
        if self.person_graph:
            self.subject_conjunction_ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(words))
                                            for words in self.subject_conjunctions]
            self.subject_possessive_ids = [_one_token(tokenizer, t, "possessive") for t in self.subject_possessives]


def _one_token(tokenizer, token: str, what: str) -> int:
    pieces = tokenizer.tokenize(token)
    if len(pieces) != 1 or tokenizer.convert_tokens_to_ids(pieces[0]) == tokenizer.unk_token_id:
        raise ValueError(f"{what} {token!r} is not one token of the backbone's tokenizer (it gives {pieces}); pick "
                         "one the tokenizer keeps whole")
    return tokenizer.convert_tokens_to_ids(pieces[0])


__all__ = ["HybridRecursiveConfig", "DEFAULT_BACKBONE"]
