"""CLUTRR research screen: a recursive head over the story's people, propagating "how is this person related to A?"
outward from A one kinship fact per step, against the same head without weight sharing and a graph transformer over
the same people.

    python bench/clutrr_entity_recurrence.py --seeds 0 1 2 3 4 5 --steps 1500 --out runs/screen/entity_recurrence_subject

Why: the token-level heads of hybrid mode answer k = 2, 3 from the chain's end facts and never learn to follow a
chain (docs/results.md, "Embedding layer only"). This screen builds in the structure a chain-following solver needs:
- run-on sentences are split (a full stop before a name that follows a name or a word rarely seen before a name in
  training), and the backbone (frozen all-MiniLM-L6-v2, layers [0, -1]) reads each sentence alone, so a token's
  features hold its own kinship fact and nothing from the rest of the story; a sentence naming at most one person
  is joined to the one before (pronouns carry facts across the full stop);
- one node per bracketed person; after one sentence-local attention layer, each pair of neighbouring names in a
  sentence gives a relation vector r_uv = MLP([mention_u; mention_v; words between]) for each direction, except
  that a name after "and", after the subject's own "his"/"her", or in a joined one-person sentence is linked to its
  sentence's first person, the subject (`--edges subject`, the default; `--edges adjacent`: neighbouring names only,
  no splitting; `--edges sentence`: every pair of a sentence, with the sentence mean instead of the words between);
- the state of A is a learned vector; step t gives each person first reached at graph distance t the mean over its
  reached neighbours u of compose(h_u, r_uv) (breadth first, so every person is written once, along shortest paths);
- the classifier reads B's state. The number of steps is the distance from A to B: longer chains take more steps.
`--variants recursive` shares `compose` across steps (a recursive head); `untied` gives each of the first
`--untied-depth` steps its own `compose` and stops there, as a fixed-depth (non-recursive) network must; `graph` is
a non-recursive graph transformer on the same relation vectors (`--graph-layers` layers with their own weights,
every person updated at once).

The input is `task.mark_query=true, task.question=none` text (A written <A>, B {B}); story and query only.
Not part of the hybrid training recipe: a screen to decide whether this structure is worth building in.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.data.clutrr import load_clutrr
from hybrid.data.text_tasks import tokenize_dataset
from hybrid.models.backbones import backbone_hidden_states, backbone_max_length, load_backbone
from hybrid.utils import UserError, get_logger, run_main

log = get_logger("hybrid.clutrr_entity_recurrence")
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
LAYERS = [0, -1]
MARK_A, MARK_B = "<", "{"


def sentence_features(model, input_ids: list[list[int]], segment_ids: list[list[int]], cls: int, sep: int,
                      batch_size: int = 128) -> list[Tensor]:
    """Per text, [L, D] backbone features where each sentence's tokens come from a backbone pass over that sentence
    alone ([CLS] sentence [SEP]); tokens outside any sentence (the text's own [CLS], [SEP]) stay zero."""
    width = model.config.hidden_size * len(LAYERS)
    out = [torch.zeros(len(ids), width, dtype=torch.float16) for ids in input_ids]
    jobs = [(i, [t for t, s in enumerate(seg) if s == sentence])
            for i, seg in enumerate(segment_ids) for sentence in sorted(set(seg) - {-1})]
    jobs.sort(key=lambda job: len(job[1]))
    start = time.time()
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b: b + batch_size]
        length = max(len(pos) for _, pos in chunk) + 2
        ids = torch.zeros(len(chunk), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (i, pos) in enumerate(chunk):
            tokens = [cls, *(input_ids[i][t] for t in pos), sep]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        with torch.no_grad():
            hidden = backbone_hidden_states(model, ids, mask, LAYERS).half()
        for row, (i, pos) in enumerate(chunk):
            out[i][pos] = hidden[row, 1: 1 + len(pos)]
        if (b // batch_size) % 20 == 0:
            log.info("sentence features: %d / %d sentences, %.0f s", b + len(chunk), len(jobs), time.time() - start)
    return out


def join_one_person_sentences(segment_ids: list[int], entity_ids: list[int]) -> list[int]:
    """Segment ids where a sentence naming at most one person is joined to the sentence before it. CLUTRR's
    crowd-written stories carry a fact across a sentence boundary with a pronoun ("[Tim] likes to visit his sister.
    Her name is [Ann]."), which leaves the two people in no common sentence: without joining, 13 % of the training
    stories and 27 % of the k = 10 ones have no path from A to B."""
    people: dict[int, set[int]] = {}
    for s, e in zip(segment_ids, entity_ids):
        if s >= 0:
            people.setdefault(s, set()).update({e} - {0})
    joined: dict[int, int] = {}
    for s in sorted(people):
        joined[s] = joined[s - 1] if len(people[s]) <= 1 and s - 1 in joined else s
    return [joined.get(s, -1) for s in segment_ids]


NAME_AFTER_WORD = re.compile(r"(\S+) (?=[\[<{])")


def words_before_names(texts: list[str]) -> Counter:
    """How often each word (lower-cased) comes right before a bracketed name in `texts`."""
    return Counter(match.group(1).lower() for text in texts for match in NAME_AFTER_WORD.finditer(text))


def split_run_on_sentences(text: str, seen: Counter, rare: int = 3) -> str:
    """Ends a sentence before a name that follows another name, or a word seen before a name fewer than `rare` times
    in the training stories (`seen`, from `words_before_names`). The long test stories are crowd-written pieces
    stitched together, often with no full stop between them ("... went to her brother [Charles]'s birthday party
    [Roger] took his son [Robert] ..."); left as one sentence, the last name of one piece and the subject of the next
    look like neighbouring names that state a fact."""
    def cut(match: re.Match) -> str:
        word = match.group(1)
        after_a_name = word[-1] in "]>}"
        rare_word = word[-1].isalpha() and seen[word.lower()] < rare
        return f"{word}. " if after_a_name or rare_word else match.group(0)
    return NAME_AFTER_WORD.sub(cut, text)


def build_examples(dataset, tokenizer, model, label_ids: dict[str, int], join: bool) -> list[tuple]:
    """(features, segment_ids, entity_ids, A's entity, B's entity, label id, sentence ids before joining,
    input_ids) per story."""
    data = tokenize_dataset(dataset, tokenizer, level="sequence", max_length=backbone_max_length(model.config, tokenizer),
                            entity_graph=True)
    marks = tokenizer.convert_tokens_to_ids([MARK_A, MARK_B])
    segments = data["segment_ids"]
    if join:
        segments = [join_one_person_sentences(seg, ent) for seg, ent in zip(segments, data["entity_ids"])]
    features = sentence_features(model, data["input_ids"], segments, tokenizer.cls_token_id, tokenizer.sep_token_id)
    examples = []
    for f, ids, seg, sentences, ent, label in zip(features, data["input_ids"], segments, data["segment_ids"],
                                                  data["entity_ids"], data["label"]):
        ids, ent = torch.tensor(ids), torch.tensor(ent)
        a, b = (int(ent[ids == mark][0]) for mark in marks)
        examples.append((f, torch.tensor(seg), ent, a, b, label_ids[label], torch.tensor(sentences), ids))
    return examples


def collate(examples: list[tuple]) -> dict[str, Tensor]:
    n, length = len(examples), max(len(e[1]) for e in examples)
    batch = {"features": torch.zeros(n, length, examples[0][0].shape[1]),
             "segment_ids": torch.full((n, length), -1), "entity_ids": torch.zeros(n, length, dtype=torch.long),
             "sentence_ids": torch.full((n, length), -1), "input_ids": torch.zeros(n, length, dtype=torch.long)}
    for row, (f, seg, ent, _, _, _, sentences, ids) in enumerate(examples):
        batch["features"][row, : len(seg)] = f.float()
        batch["segment_ids"][row, : len(seg)] = seg
        batch["entity_ids"][row, : len(seg)] = ent
        batch["sentence_ids"][row, : len(seg)] = sentences
        batch["input_ids"][row, : len(seg)] = ids
    for key, column in (("a", 3), ("b", 4), ("labels", 5)):
        batch[key] = torch.tensor([e[column] for e in examples])
    return batch


def link_words(tokenizer) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Token ids of the conjunctions ("and", ", and") and possessives ("his", "her") that `mention_pairs` reads."""
    conjunctions = tuple(tuple(tokenizer.convert_tokens_to_ids(words)) for words in (["and"], [",", "and"]))
    return conjunctions, tuple(tokenizer.convert_tokens_to_ids(["his", "her"]))


def mention_pairs(segment_ids: Tensor, entity_ids: Tensor, sentence_ids: Tensor | None = None,
                  input_ids: Tensor | None = None, conjunctions: tuple[tuple[int, ...], ...] = (),
                  possessives: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Consecutive mentions of two different people inside one (joined) sentence, as (row, u, v, u_start, u_end,
    v_start, v_end, between_start) with token spans [start, end); r_uv reads the words from between_start to v_start.
    CLUTRR's sentences state one fact between neighbouring names ("[Kecia] took her sister, [Florence], and
    [Florence]'s daughter, [Beverly]"); a pair further apart is only implied, through the people between, and run-on
    sentences without a full stop make such pairs common in the long stories (up to 7 people in one sentence at
    k >= 4, never more than 4 in training).

    With `sentence_ids` (the sentences before joining) and `input_ids`, the earlier mention gives way to the first
    person of its own sentence, the subject, in three cases:
    - the later mention is in a joined one-person sentence ("[Judy] takes her son [David] to practice. She also
      takes her son [Larry]": Judy-Larry, not David-Larry); r_uv then reads everything after the subject's mention;
    - the words between start with one of `conjunctions` ("[Frank] took his son [Charles] and daughter [Beverly]":
      Frank-Beverly, not Charles-Beverly); r_uv still reads the words after the earlier mention ("and daughter");
    - the last of `possessives` (his, her) between the two is the subject's own, the first one after the subject's
      mention ("[Dorothy] stayed with her mother [Nicole] before the birth of her son [Charles]": Dorothy-Charles,
      not Nicole-Charles); r_uv again reads the words after the earlier mention."""
    pairs = []
    for row in range(segment_ids.shape[0]):
        seg, ent = segment_ids[row].tolist(), entity_ids[row].tolist()
        sentence = seg if sentence_ids is None else sentence_ids[row].tolist()
        ids = [] if input_ids is None else input_ids[row].tolist()
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
        subject_possessive = {}  # up to the sentence's next person, who may have a possessive of their own
        if sentence_ids is not None:
            for _, s, *mention in mentions:
                subject.setdefault(s, tuple(mention))
            for s, (e, a, b) in subject.items():
                end = next((m[3] for m in mentions if m[1] == s and m[3] > a and m[2] != e), len(ids))
                subject_possessive[s] = next((w for w in ids[b:end] if w in possessives), None)
        for (g1, s1, e1, a1, b1), (g2, _, e2, a2, b2) in zip(mentions, mentions[1:]):
            if g1 != g2:
                continue
            between = b1
            said = [w for w in ids[b1:a2] if w in possessives]
            if sentence_ids is not None and s1 != sentence[a2]:
                e1, a1, b1 = subject[s1]
                between = b1
            elif sentence_ids is not None and (any(tuple(ids[b1: b1 + len(c)]) == c for c in conjunctions)
                                               or (said and said[-1] == subject_possessive[s1])):
                e1, a1, b1 = subject[s1]
            if e1 != e2:
                pairs.append((row, e1, e2, a1, b1, a2, b2, between))
    return pairs


class PersonGraph(nn.Module):
    """Sentence-local encoder -> relation vectors r_uv between people -> a reasoner over the people (subclasses)
    -> classifier on B's state. `edges="adjacent"` links neighbouring names of a sentence and reads r_uv from the
    two mentions and the words between them; `edges="subject"` does too, but links a name after a conjunction, after
    the subject's own possessive or in a joined one-person sentence to its sentence's subject (`mention_pairs`; the
    token ids of `conjunctions` and `possessives` come from `link_words`); `edges="sentence"` links every pair of
    people in a sentence and reads r_uv from the two mentions and the sentence mean."""

    def __init__(self, in_features: int, width: int, num_labels: int, edges: str,
                 conjunctions: tuple[tuple[int, ...], ...] = (), possessives: tuple[int, ...] = ()):
        super().__init__()
        if edges == "subject" and not (conjunctions and possessives):
            raise ValueError('edges="subject" needs the token ids of its conjunctions and possessives')
        self.edges, self.conjunctions, self.possessives = edges, conjunctions, possessives
        self.proj = nn.Linear(in_features, width)
        self.position = nn.Embedding(512, width)
        self.sentence_layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True,
                                                         norm_first=True)
        self.relation = nn.Sequential(nn.Linear(3 * width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        if edges != "sentence":
            self.direction = nn.Embedding(2, width)  # u named before v, or after
        self.start = nn.Parameter(torch.randn(width))
        self.classifier = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                        nn.Linear(width, num_labels))

    def relations(self, features: Tensor, segment_ids: Tensor, entity_ids: Tensor, sentence_ids: Tensor | None = None,
                  input_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(r [B, E, E, D], adjacency [B, E, E] bool): r_uv summed over the sentences that link u to v.
        `sentence_ids` (before joining) and `input_ids` are read by `edges="subject"` only."""
        length = features.shape[1]
        x = self.proj(features) + self.position(torch.arange(length))[None]
        same_sentence = (segment_ids[:, :, None] == segment_ids[:, None, :]) | torch.eye(length, dtype=torch.bool)
        x = self.sentence_layer(x, src_mask=~same_sentence.repeat_interleave(self.sentence_layer.self_attn.num_heads, 0))
        people = int(entity_ids.max()) + 1
        if self.edges == "subject":
            if sentence_ids is None or input_ids is None:
                raise ValueError('edges="subject" reads sentence_ids and input_ids')
            return self._pair_relations(x, mention_pairs(segment_ids, entity_ids, sentence_ids, input_ids,
                                                         self.conjunctions, self.possessives), people)
        if self.edges == "adjacent":
            return self._pair_relations(x, mention_pairs(segment_ids, entity_ids), people)
        sentences = int(segment_ids.max()) + 1
        in_sentence = F.one_hot(segment_ids.clamp(min=0), sentences).float() * (segment_ids >= 0)[..., None]
        is_person = F.one_hot(entity_ids, people).float()
        is_person[..., 0] = 0  # entity id 0: not inside a bracketed name
        count = torch.einsum("bts,bte->bse", in_sentence, is_person)
        mention = torch.einsum("bts,bte,btd->bsed", in_sentence, is_person, x) / count.clamp(min=1)[..., None]
        sentence_mean = torch.einsum("bts,btd->bsd", in_sentence, x) / in_sentence.sum(1).clamp(min=1)[..., None]
        present = count > 0
        pair = present[:, :, :, None] & present[:, :, None, :] & ~torch.eye(people, dtype=torch.bool)
        u_side = mention[:, :, :, None].expand(-1, -1, -1, people, -1)
        v_side = mention[:, :, None].expand(-1, -1, people, -1, -1)
        context = sentence_mean[:, :, None, None].expand(-1, -1, people, people, -1)
        inputs = torch.cat([u_side, v_side, context], dim=-1)
        return (self.relation(inputs) * pair[..., None]).sum(1), pair.any(1)

    def _pair_relations(self, x: Tensor, pairs: list[tuple[int, ...]], people: int):
        batch, length, width = x.shape
        r = torch.zeros(batch, people, people, width)
        adjacency = torch.zeros(batch, people, people, dtype=torch.bool)
        if not pairs:
            return r, adjacency
        pool = torch.zeros(3, len(pairs), batch * length)  # rows average u's mention, v's mention, the words between
        for i, (row, _, _, u_start, u_end, v_start, v_end, between_start) in enumerate(pairs):
            offset = row * length
            for j, (lo, hi) in enumerate(((u_start, u_end), (v_start, v_end), (between_start, v_start))):
                if hi > lo:
                    pool[j, i, offset + lo: offset + hi] = 1 / (hi - lo)
        u_side, v_side, between = (pool[j] @ x.reshape(-1, width) for j in range(3))
        rows, u, v = torch.tensor([p[:3] for p in pairs]).T
        forward = self.relation(torch.cat([u_side, v_side, between + self.direction.weight[0]], dim=-1))
        backward = self.relation(torch.cat([v_side, u_side, between + self.direction.weight[1]], dim=-1))
        r = r.index_put((rows, u, v), forward, accumulate=True).index_put((rows, v, u), backward, accumulate=True)
        adjacency[rows, u, v] = adjacency[rows, v, u] = True
        return r, adjacency

    def initial_state(self, r: Tensor, a: Tensor) -> Tensor:
        h = torch.zeros(r.shape[0], r.shape[1], r.shape[-1])
        h[torch.arange(r.shape[0]), a] = self.start
        return h

    @staticmethod
    def messages(compose: nn.Module, h: Tensor, r: Tensor) -> Tensor:
        """[B, U, V, D]: compose(h_u, r_uv) for every ordered pair of people."""
        return compose(torch.cat([h[:, :, None].expand(-1, -1, r.shape[1], -1), r], dim=-1))


class EntityRecurrence(PersonGraph):
    """Breadth-first from A: step t writes each person first reached at distance t as the mean over its reached
    neighbours u of compose(h_u, r_uv) (see the module docstring)."""

    def __init__(self, in_features: int, width: int, num_labels: int, tied: bool, untied_depth: int,
                 edges: str = "adjacent", conjunctions: tuple[tuple[int, ...], ...] = (),
                 possessives: tuple[int, ...] = ()):
        super().__init__(in_features, width, num_labels, edges, conjunctions, possessives)
        self.max_depth = None if tied else untied_depth
        self.compose = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, 2 * width), nn.GELU(), nn.Linear(2 * width, width), nn.LayerNorm(width))
            for _ in range(1 if tied else untied_depth))

    def forward(self, features: Tensor, segment_ids: Tensor, entity_ids: Tensor, a: Tensor, b: Tensor,
                sentence_ids: Tensor | None = None, input_ids: Tensor | None = None) -> Tensor:
        r, adjacency = self.relations(features, segment_ids, entity_ids, sentence_ids, input_ids)
        batch, people = adjacency.shape[:2]
        h = self.initial_state(r, a)
        reached = torch.zeros(batch, people, dtype=torch.bool)
        reached[torch.arange(batch), a] = True
        frontier = reached.clone()
        for depth in range(people):
            if self.max_depth is not None and depth == self.max_depth:
                break
            edges = adjacency & frontier[:, :, None] & ~reached[:, None, :]  # u on the frontier -> v not yet reached
            new = edges.any(1)
            if not new.any():
                break
            messages = self.messages(self.compose[0 if self.max_depth is None else depth], h, r)
            weights = edges.float()[..., None]
            h = torch.where(new[..., None], (messages * weights).sum(1) / weights.sum(1).clamp(min=1), h)
            reached |= new
            frontier = new
        return self.classifier(h[torch.arange(batch), b])


class GraphLayers(PersonGraph):
    """The non-recursive comparator on the same input: `layers` message-passing layers, each with its own weights,
    update every person at once from the mean of compose_l(h_u, r_uv) over all its neighbours, with a residual and
    a LayerNorm (a graph transformer over the people); B carries a learned marker, A the start vector."""

    def __init__(self, in_features: int, width: int, num_labels: int, layers: int, edges: str = "adjacent",
                 conjunctions: tuple[tuple[int, ...], ...] = (), possessives: tuple[int, ...] = ()):
        super().__init__(in_features, width, num_labels, edges, conjunctions, possessives)
        self.compose = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.b_marker = nn.Parameter(torch.randn(width))

    def forward(self, features: Tensor, segment_ids: Tensor, entity_ids: Tensor, a: Tensor, b: Tensor,
                sentence_ids: Tensor | None = None, input_ids: Tensor | None = None) -> Tensor:
        r, adjacency = self.relations(features, segment_ids, entity_ids, sentence_ids, input_ids)
        rows = torch.arange(r.shape[0])
        h = self.initial_state(r, a)
        h[rows, b] = h[rows, b] + self.b_marker
        weights = adjacency.float()[..., None]
        for compose, norm in zip(self.compose, self.norms):
            messages = self.messages(compose, h, r)
            h = norm(h + (messages * weights).sum(1) / weights.sum(1).clamp(min=1))
        return self.classifier(h[rows, b])


def train_and_evaluate(train: list, tests: dict[str, list], num_labels: int, variant: str, seed: int,
                       args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if variant == "graph":
        model = GraphLayers(train[0][0].shape[1], args.width, num_labels, args.graph_layers, args.edges,
                            args.conjunctions, args.possessives)
    else:
        model = EntityRecurrence(train[0][0].shape[1], args.width, num_labels, tied=variant == "recursive",
                                 untied_depth=args.untied_depth, edges=args.edges, conjunctions=args.conjunctions,
                                 possessives=args.possessives)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / args.steps)))
    start = time.time()
    for step in range(args.steps):
        batch = collate(rng.sample(train, args.batch_size))
        labels = batch.pop("labels")
        loss = F.cross_entropy(model(**batch), labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            log.info("%s seed %d step %d loss %.3f (%.0f s)", variant, seed, step, loss.item(), time.time() - start)
    wall = time.time() - start
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for name, examples in tests.items():
            correct = 0
            for s in range(0, len(examples), 64):
                batch = collate(examples[s: s + 64])
                labels = batch.pop("labels")
                correct += (model(**batch).argmax(-1) == labels).sum().item()
            accuracy[name] = 100 * correct / len(examples)
    deep = [accuracy[f"k={k}"] for k in range(4, 11) if f"k={k}" in accuracy]
    return {"variant": variant, "seed": seed, "params": params, "wall_s": round(wall), "accuracy": accuracy,
            "mean_k4_10": sum(deep) / len(deep)}


def table(results: list[dict], names: list[str]) -> str:
    lines = ["| variant | params | " + " | ".join(names) + " | mean k=4..10 | wall s |", "|" + "---|" * (len(names) + 4)]
    for variant in dict.fromkeys(r["variant"] for r in results):
        rows = [r for r in results if r["variant"] == variant]
        means = torch.tensor([r["mean_k4_10"] for r in rows])
        cells = [f"{sum(r['accuracy'][n] for r in rows) / len(rows):.1f}" for n in names]
        spread = f" ± {means.std().item():.1f}" if len(rows) > 1 else ""
        seeds = " / ".join(f"{m:.1f}" for m in means.tolist())
        lines.append(f"| {variant} | {rows[0]['params']:,} | " + " | ".join(cells)
                     + f" | {means.mean().item():.1f}{spread} ({seeds}) | {sum(r['wall_s'] for r in rows) / len(rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CLUTRR folder or Hub id (default $HYBRID_DATA_DIR/clutrr)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["recursive", "untied", "graph"],
                        choices=["recursive", "untied", "graph"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--untied-depth", type=int, default=3, help="steps of the untied variant (train k <= 3)")
    parser.add_argument("--graph-layers", type=int, default=4, help="layers of the graph variant")
    parser.add_argument("--edges", default="subject", choices=["subject", "adjacent", "sentence"],
                        help="subject: neighbouring names of a sentence, a name after a conjunction, after the "
                             "subject's own his/her or in a joined one-person sentence linked to the subject, run-on "
                             "sentences split; adjacent: neighbouring names only; sentence: every pair of a sentence "
                             "(see PersonGraph, mention_pairs, split_run_on_sentences)")
    parser.add_argument("--no-join-sentences", dest="join_sentences", action="store_false",
                        help="keep every sentence apart (see join_one_person_sentences)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"--out {args.out} is not empty; pick a new folder")
    try:
        train_set, test_sets = load_clutrr(args.data, question="none", mark_query=True)
    except ValueError as error:  # a missing folder or a malformed file: the user's input
        raise UserError(str(error)) from None
    backbone, tokenizer = load_backbone(BACKBONE)
    backbone.eval()
    label_ids = {name: i for i, name in enumerate(sorted(set(train_set["label"])))}
    unseen = {n for s in test_sets.values() for n in s["label"]} - set(label_ids)
    if unseen:
        raise UserError(f"held-out labels {sorted(unseen)} never occur in training")
    args.conjunctions, args.possessives = link_words(tokenizer)
    if args.edges == "subject":
        seen = words_before_names(train_set["text"])
        split = {name: s.map(lambda row: {"text": split_run_on_sentences(row["text"], seen)})
                 for name, s in {"train": train_set, **test_sets}.items()}
        for name, s in split.items():
            before = train_set if name == "train" else test_sets[name]
            log.info("%s: split run-on sentences in %d of %d stories", name,
                     sum(a != b for a, b in zip(s["text"], before["text"])), len(s))
        train_set, test_sets = split.pop("train"), split
    log.info("building sentence-local features for %d training stories", len(train_set))
    train = build_examples(train_set, tokenizer, backbone, label_ids, args.join_sentences)
    tests = {name: build_examples(s, tokenizer, backbone, label_ids, args.join_sentences) for name, s in test_sets.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in args.variants:
        for seed in args.seeds:
            results.append(train_and_evaluate(train, tests, len(label_ids), variant, seed, args))
            log.info("%s seed %d: mean k=4..10 %.1f %%", variant, seed, results[-1]["mean_k4_10"])
            (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                               "results": results}, indent=1))
    markdown = table(results, list(test_sets))
    (args.out / "table.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    run_main(main)
