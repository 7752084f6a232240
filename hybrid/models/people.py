"""Person-graph heads: reasoning over a story's people instead of its tokens (`HybridRecursiveConfig.person_graph`).

A kinship story states one fact per pair of neighbouring names in a sentence (CLUTRR, Sinha et al., EMNLP 2019,
arXiv 1908.06177). The token-level heads answer CLUTRR's training depths (k = 2, 3) from the chain's end facts and
never learn to follow a chain (docs/results.md). These heads build in the structure a chain-following solver needs:

- `PersonEncoder`: the backbone reads each sentence alone (`sentence_hidden_states`), so a token's features hold its
  own fact and nothing from the rest of the story; one sentence-local attention layer; then one node per bracketed
  person, links between people (`mention_pairs`) and a relation vector r_uv = MLP([mention_u; mention_v; words
  between]) per link and direction;
- `ChainCore` (head "recursive", core "chain"): A's state is the register; step t writes each person first reached
  at graph distance t from A as the mean over its reached neighbours u of compose(h_u, r_uv), with one `compose`
  shared by every step (breadth first, so every person is written once, along shortest paths). The number of steps
  is the distance from A to B: a longer chain takes more applications of the same weights, the recursion of TRM
  (arXiv 2510.04871) run along the chain instead of to a fixed depth;
- `GraphCore` (head "transformer"): the non-recursive comparator on the same input, `L_layers` message-passing
  layers with their own weights updating every person at once (a graph transformer over the people).

Both read B's state, which the output layer classifies, and answer in one supervision step.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid.core.act import Batch
from hybrid.core.layers import PERSON_KEYS
from hybrid.core.recursion import Carry
from hybrid.models.backbones import BackboneEncoder, backbone_max_length, sentence_hidden_states

# Position table of the sentence-local layer for a backbone that declares no length limit.
MAX_POSITIONS = 4096


def mention_pairs(segment_ids: Tensor, entity_ids: Tensor, sentence_ids: Tensor, input_ids: Tensor,
                  conjunctions: tuple[tuple[int, ...], ...] = (), possessives: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The links of a batch: (row, u, v, u_start, u_end, v_start, v_end, between_start), token spans [start, end);
    r_uv reads the words from between_start to v_start.

    Consecutive mentions of two different people inside one (joined) sentence are linked: a sentence states one fact
    between neighbouring names ("[Kecia] took her sister, [Florence], and [Florence]'s daughter, [Beverly]"); a pair
    further apart is only implied through the people between. The earlier mention gives way to the first person of
    its own sentence (`sentence_ids`, the sentences as written), the subject, in three cases:
    - the later mention is in a joined one-person sentence ("[Judy] takes her son [David] to practice. She also
      takes her son [Larry]": Judy-Larry, not David-Larry); r_uv then reads everything after the subject's mention;
    - the words between start with one of `conjunctions` ("[Frank] took his son [Charles] and daughter [Beverly]":
      Frank-Beverly, not Charles-Beverly); r_uv still reads the words after the earlier mention ("and daughter");
    - the last of `possessives` between the two is the subject's own, the first one after the subject's mention
      ("[Dorothy] stayed with her mother [Nicole] before the birth of her son [Charles]": Dorothy-Charles, not
      Nicole-Charles); r_uv again reads the words after the earlier mention."""
    pairs = []
    for row in range(segment_ids.shape[0]):
        seg, ent = segment_ids[row].tolist(), entity_ids[row].tolist()
        sentence, ids = sentence_ids[row].tolist(), input_ids[row].tolist()
        mentions, t = [], 0
        while t < len(ent):
            if ent[t] > 0 and seg[t] >= 0:
                first = t
                while t < len(ent) and (ent[t], seg[t]) == (ent[first], seg[first]):
                    t += 1
                mentions.append((seg[first], sentence[first], ent[first], first, t))
            else:
                t += 1
        subject: dict[int, tuple[int, int, int]] = {}
        for _, s, *mention in mentions:
            subject.setdefault(s, tuple(mention))
        subject_possessive = {}  # up to the sentence's next person, who may have a possessive of their own
        for s, (e, a, b) in subject.items():
            end = next((m[3] for m in mentions if m[1] == s and m[3] > a and m[2] != e), len(ids))
            subject_possessive[s] = next((w for w in ids[b:end] if w in possessives), None)
        for (g1, s1, e1, a1, b1), (g2, _, e2, a2, b2) in zip(mentions, mentions[1:]):
            if g1 != g2:
                continue
            between = b1
            said = [w for w in ids[b1:a2] if w in possessives]
            if s1 != sentence[a2]:
                e1, a1, b1 = subject[s1]
                between = b1
            elif any(tuple(ids[b1 : b1 + len(c)]) == c for c in conjunctions) or (said and said[-1] == subject_possessive[s1]):
                e1, a1, b1 = subject[s1]
            if e1 != e2:
                pairs.append((row, e1, e2, a1, b1, a2, b2, between))
    return pairs


@dataclass
class PersonGraph:
    """What the person cores reason over: r [B, P, P, D] (r_uv summed over the links from u to v; person 0 is "no
    person"), adjacency [B, P, P] bool, A's initial state [D], and the person index of A and of B per row [B]."""

    relations: Tensor
    adjacency: Tensor
    start: Tensor
    a: Tensor
    b: Tensor


class PersonEncoder(BackboneEncoder):
    """Sentence-local backbone features -> one sentence-local attention layer -> `PersonGraph`. Batch keys:
    `input_ids`, `attention_mask`, `PERSON_KEYS`, optionally `features` (sentence-local, as `batch_features` gives).

    marks: the token ids before A's and B's mentions (CLUTRR's mark_query writes <A> and {B}); conjunctions,
    possessives: token ids of the words that link a name to its sentence's subject (`mention_pairs`). The register
    is A's initial state."""

    def __init__(self, backbone: nn.Module, layers: list[int], hidden_size: int, rms_norm_eps: float, *,
                 num_heads: int, expansion: float, marks: tuple[int, int],
                 conjunctions: tuple[tuple[int, ...], ...] = (), possessives: tuple[int, ...] = ()):
        super().__init__(backbone, layers, hidden_size, rms_norm_eps)
        self.marks, self.conjunctions, self.possessives = tuple(marks), tuple(conjunctions), tuple(possessives)
        # A text is never longer than the backbone's limit (512 for BERT-likes), so neither is the table.
        self.position = nn.Embedding(backbone_max_length(backbone.config) or MAX_POSITIONS, hidden_size)
        self.sentence_layer = nn.TransformerEncoderLayer(hidden_size, num_heads, int(expansion * hidden_size),
                                                         dropout=0.0, batch_first=True, norm_first=True)
        self.relation = nn.Sequential(nn.Linear(3 * hidden_size, 2 * hidden_size), nn.GELU(),
                                      nn.Linear(2 * hidden_size, hidden_size))
        self.direction = nn.Embedding(2, hidden_size)  # u named before v, or after

    def batch_features(self, batch: Batch) -> Tensor:
        self._check(batch)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return sentence_hidden_states(self.backbone, batch["input_ids"], batch["attention_mask"],
                                          batch["segment_ids"], self.layers)

    def latent_shape(self, batch: Batch) -> tuple[int, int]:
        return batch["input_ids"].shape[0], 1  # the carry is B's state alone

    @staticmethod
    def _check(batch: Batch) -> None:
        missing = [key for key in PERSON_KEYS if key not in batch]
        if missing:
            raise ValueError(f"a person-graph head needs batch keys {list(PERSON_KEYS)}; missing {missing} "
                             "(tokenize with entity_graph=True, join_sentences=True)")

    def forward(self, batch: Batch) -> tuple[PersonGraph, None]:
        self._check(batch)
        features = batch.get("features")
        if features is None:
            features = self.batch_features(batch)
        ids, segments, entities = batch["input_ids"], batch["segment_ids"], batch["entity_ids"]
        length = ids.shape[1]
        x = self.proj(features.float()) + self.position.weight[:length]
        same_sentence = (segments[:, :, None] == segments[:, None, :]) | torch.eye(length, dtype=torch.bool,
                                                                                      device=ids.device)
        heads = self.sentence_layer.self_attn.num_heads
        x = self.sentence_layer(x, src_mask=~same_sentence.repeat_interleave(heads, 0))
        ends = []
        for mark in self.marks:
            at = ids == mark
            if not at.any(1).all():
                raise ValueError(f"a person-graph head needs token {mark} (A's and B's marks) in every text")
            ends.append(entities.gather(1, at.int().argmax(1, keepdim=True)).squeeze(1))
        pairs = mention_pairs(segments, entities, batch["sentence_ids"], ids, self.conjunctions, self.possessives)
        relations, adjacency = self._relations(x, pairs, int(entities.max()) + 1)
        return PersonGraph(relations, adjacency, self.register_token, *ends), None

    def _relations(self, x: Tensor, pairs: list[tuple[int, ...]], people: int) -> tuple[Tensor, Tensor]:
        batch, length, width = x.shape
        r = x.new_zeros(batch, people, people, width)
        adjacency = torch.zeros(batch, people, people, dtype=torch.bool, device=x.device)
        if not pairs:
            return r, adjacency
        # Rows of `pool` average u's mention, v's mention and the words between, over the flattened batch.
        pool = x.new_zeros(3, len(pairs), batch * length)
        for i, (row, _, _, u_start, u_end, v_start, v_end, between_start) in enumerate(pairs):
            offset = row * length
            for j, (lo, hi) in enumerate(((u_start, u_end), (v_start, v_end), (between_start, v_start))):
                if hi > lo:
                    pool[j, i, offset + lo : offset + hi] = 1 / (hi - lo)
        u_side, v_side, between = (pool[j] @ x.reshape(-1, width) for j in range(3))
        rows, u, v = torch.tensor([p[:3] for p in pairs], device=x.device).T
        forward = self.relation(torch.cat([u_side, v_side, between + self.direction.weight[0]], dim=-1))
        backward = self.relation(torch.cat([v_side, u_side, between + self.direction.weight[1]], dim=-1))
        r = r.index_put((rows, u, v), forward, accumulate=True).index_put((rows, v, u), backward, accumulate=True)
        adjacency[rows, u, v] = adjacency[rows, v, u] = True
        return r, adjacency


def compose_network(hidden_size: int) -> nn.Sequential:
    """compose(h_u, r_uv): what u's state and the fact linking u to v say about v."""
    return nn.Sequential(nn.Linear(2 * hidden_size, 2 * hidden_size), nn.GELU(),
                         nn.Linear(2 * hidden_size, hidden_size))


class _PersonCore(nn.Module):
    """The person cores' shared parts: a carry of B's state alone (nothing is carried between supervision steps),
    the messages compose(h_u, r_uv), and the readout of B's state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.readout = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU())

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None) -> Carry:
        return (torch.zeros(batch_size, 1, self.hidden_size, device=device),)

    def reset_carry(self, reset: Tensor, carry: Carry) -> Carry:
        return carry

    @staticmethod
    def initial_state(graph: PersonGraph) -> Tensor:
        """[B, P, D]: A holds the start vector, everyone else zeros."""
        h = graph.relations.new_zeros(graph.relations.shape[0], graph.relations.shape[1], graph.relations.shape[-1])
        h[torch.arange(h.shape[0], device=h.device), graph.a] = graph.start.to(h.dtype)
        return h

    @staticmethod
    def messages(compose: nn.Module, h: Tensor, r: Tensor) -> Tensor:
        """[B, U, V, D]: compose(h_u, r_uv) for every ordered pair of people."""
        return compose(torch.cat([h[:, :, None].expand(-1, -1, r.shape[1], -1), r], dim=-1))

    def read(self, h: Tensor, graph: PersonGraph) -> Carry:
        return (self.readout(h[torch.arange(h.shape[0], device=h.device), graph.b])[:, None],)


class ChainCore(_PersonCore):
    """Breadth first from A, one shared `compose` per step (see the module docstring). `max_hops` (a test-time
    override, like a recursive core's cycles) stops after that many steps: people further from A keep zeros."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)
        self.compose = nn.Sequential(compose_network(hidden_size), nn.LayerNorm(hidden_size))

    def walk(self, graph: PersonGraph, max_hops: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(h [B, P, D], new [B, P]) after each step: every person's state, and who was first reached now."""
        h = self.initial_state(graph)
        for edges, new in breadth_first(graph, max_hops):
            weights = edges.to(h.dtype)[..., None]
            update = (self.messages(self.compose, h, graph.relations) * weights).sum(1) / weights.sum(1).clamp(min=1)
            h = torch.where(new[..., None], update, h)
            yield h, new

    def forward(self, carry: Carry, graph: PersonGraph, mask: None = None, *, max_hops: int | None = None) -> Carry:
        h = self.initial_state(graph)
        for h, _ in self.walk(graph, max_hops):
            pass
        return self.read(h, graph)


def breadth_first(graph: PersonGraph, max_hops: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Per step out from A (at most `max_hops`): (edges [B, P, P], u on the frontier -> v first reached now; new
    [B, P], the people first reached now). Stops when no row reaches anyone new."""
    batch, people = graph.adjacency.shape[:2]
    reached = torch.zeros(batch, people, dtype=torch.bool, device=graph.adjacency.device)
    reached[torch.arange(batch, device=reached.device), graph.a] = True
    frontier = reached.clone()
    for _ in range(people if max_hops is None else max_hops):
        edges = graph.adjacency & frontier[:, :, None] & ~reached[:, None, :]
        new = edges.any(1)
        if not new.any():
            return
        yield edges, new
        reached |= new
        frontier = new


def hops_to_b(graph: PersonGraph) -> Tensor:
    """[B] long: the steps the chain core takes before B's state is written (the graph distance from A to B), 0 where
    B cannot be reached from A."""
    hops = torch.zeros(graph.b.shape[0], dtype=torch.long, device=graph.b.device)
    rows = torch.arange(graph.b.shape[0], device=graph.b.device)
    for step, (_, new) in enumerate(breadth_first(graph), start=1):
        hops[new[rows, graph.b]] = step
    return hops


class GraphCore(_PersonCore):
    """`layers` message-passing layers with their own weights: every person at once takes the mean of
    compose_l(h_u, r_uv) over all its neighbours, with a residual and a LayerNorm. B carries a learned marker, A the
    start vector."""

    def __init__(self, hidden_size: int, layers: int):
        super().__init__(hidden_size)
        self.compose = nn.ModuleList(compose_network(hidden_size) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(layers))
        self.b_marker = nn.Parameter(torch.randn(hidden_size))

    def forward(self, carry: Carry, graph: PersonGraph, mask: None = None, **cycles) -> Carry:
        if cycles:
            raise ValueError(f"a GraphCore has no cycles to override, got {sorted(cycles)}")
        h = self.initial_state(graph)
        rows = torch.arange(h.shape[0], device=h.device)
        h[rows, graph.b] = h[rows, graph.b] + self.b_marker
        weights = graph.adjacency.to(h.dtype)[..., None]
        for compose, norm in zip(self.compose, self.norms):
            h = norm(h + (self.messages(compose, h, graph.relations) * weights).sum(1) / weights.sum(1).clamp(min=1))
        return self.read(h, graph)


__all__ = ["ChainCore", "GraphCore", "PersonEncoder", "PersonGraph", "breadth_first", "compose_network", "hops_to_b",
           "mention_pairs"]
