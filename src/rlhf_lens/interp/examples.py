"""Feature examples: the documents where each feature fires most, read from an activation store.

One pass over the store serves every feature of every SAE of one layer: each shard's
activations are encoded by every SAE, and per feature a running top list of documents
(ranked by their maximum activation over the first `max_tokens` tokens) keeps the
winners' per-token activations. Documents never straddle shards (store.py), so a
document's maximum is final once its shard is read. Activations of the first
`max_tokens` tokens of a causal model do not depend on later tokens, so they equal a
forward pass over the document cut to `max_tokens` tokens (the paper's "first 50 tokens").

Per feature: `top` (ranks 1..n_top, shown to the explainer), `holdout` (the next n_holdout,
for scoring) and `random` documents (for scoring; drawn once from a seeded permutation of
all documents, skipping the feature's top and holdout documents). For detection and fuzzing
(detection.py, fuzzing.py), in the same pass: `activating` windows (a seeded sample of the
documents it fires on, one per activation bin, none of them shown) and `silent` ones (samples.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..progress import progress_bar
from .config import ExampleConfig
from .samples import Sampler
from .text import TokenDecoder, unit_counts


@dataclass
class Record:
    """One document cut to `max_tokens` tokens, with one feature's activation on each token."""

    doc: int
    token_ids: list[int]
    values: list[float]
    """Raw (unnormalised) activations of the feature, one per token."""
    kind: str
    """"top", "holdout", "random", "activating" or "silent"."""
    tokens: list[str] = field(default_factory=list)
    """Decoded pieces (see text.py), filled after the pass."""
    start: int = 0
    """Position of the first token in the document (a window of an activating or silent document)."""

    @property
    def max_activation(self) -> float:
        return max(self.values, default=0.0)


@dataclass
class FeatureExamples:
    sae: str
    feature: int
    top: list[Record]
    holdout: list[Record]
    random: list[Record]
    activating: list[Record] = field(default_factory=list)
    """Windows of documents it fires on, none shown to the explainer, one per activation bin (detection, fuzzing)."""
    silent: list[Record] = field(default_factory=list)
    """Windows of documents where it is silent (max <= 0): n_silent, or fewer for a dense feature."""
    n_firing: int = 0
    """Documents of the store where it fires (max > 0 over the first max_tokens tokens)."""

    def shown(self) -> tuple[list[list[str]], list[list[int]]]:
        """The top records as the explainer sees them: tokens and activations normalised to 0..10."""
        return [r.tokens for r in self.top], normalise([r.values for r in self.top])

    def scoring(self) -> list[Record]:
        """Held-out top and random records: the explanation is scored on these."""
        return self.holdout + self.random


@dataclass
class CorpusStats:
    """Unit (word / punctuation) counts over the first `max_tokens` tokens of every stored document."""

    counts: Counter
    total: int

    def frequency(self, key: str) -> float:
        """Add-one smoothed relative frequency of a unit."""
        return (self.counts.get(key, 0) + 1) / (self.total + 1)


_CORPUS_STATS: dict[tuple, CorpusStats] = {}


@dataclass
class ExampleSet:
    layer: int
    max_tokens: int
    features: dict[tuple[str, int], FeatureExamples]
    corpus: CorpusStats | None


def normalise(values: list[list[float]]) -> list[list[int]]:
    """Activations to integers 0..10: floor(10 * a / m), m the max over all given records.

    Negative activations count as 0; every value 0 when m <= 0. Floor (not round) as Bills
    et al.: only the record's strongest token reaches 10, and anything below a tenth of the
    max shows as 0.
    """
    top = max((v for record in values for v in record), default=0.0)
    if not top > 0:
        return [[0] * len(record) for record in values]
    return [[min(10, max(0, math.floor(10.0 * v / top))) for v in record] for record in values]


def check_features(saes: dict, features: dict[str, list[int]], d: int, layer: int) -> dict[str, list[int]]:
    """Width and index checks; returns de-duplicated feature lists in the given order."""
    checked: dict[str, list[int]] = {}
    for name, sae in saes.items():
        d_in, size = int(sae.cfg.d_in), int(sae.cfg.dict_size)
        if d_in != d:
            raise UserError(f"SAE {name} expects activations of width {d_in} but layer {layer} has width {d}; "
                            "use an SAE trained on this model and layer")
        wanted = list(dict.fromkeys(int(f) for f in features.get(name, [])))
        bad = [f for f in wanted if not 0 <= f < size]
        if bad:
            raise UserError(f"feature index {bad[0]} out of range: SAE {name} has features 0..{size - 1}")
        if wanted:
            checked[name] = wanted
    if not checked:
        raise UserError("no features to explain; give feature indices (--features) or --top-k with --mmcs-with")
    return checked


def collect_examples(store, layer: int, saes: dict, features: dict[str, list[int]], tokenizer,
                     config: ExampleConfig = ExampleConfig(), corpus_stats: bool = True) -> ExampleSet:
    """Top, held-out and random records of every requested feature of every SAE, in one pass over `store`.

    `saes` maps a name (written into the records, e.g. the SAE's folder) to a SparseAutoencoder;
    `features` maps the same names to feature indices. `corpus_stats` also counts every unit of
    the stored text (the offline explainer's frequencies).
    """
    config.check()
    if layer not in store.layers:
        raise UserError(f"layer {layer} is not in the store {store.path}: it holds layers {store.layers}")
    features = check_features(saes, features, store.d, layer)
    keep = config.n_top + config.n_holdout
    # The random documents: a seeded permutation of all documents, long enough to skip any feature's top ones.
    permutation = np.random.default_rng(config.seed).permutation(store.n_docs)
    order = permutation[: config.n_random + keep]
    sampler = Sampler(features, config, permutation)
    random_pool = {int(d) for d in order}
    decoder = TokenDecoder(tokenizer)
    counts: Counter = Counter()
    # corpus statistics do not depend on the layer: count them once per store (the pipeline asks per layer)
    stats_key = (str(store.path.resolve()), store.n_tokens, config.max_tokens,
                 getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    cached_stats = _CORPUS_STATS.get(stats_key) if corpus_stats else None
    count_units = corpus_stats and cached_stats is None

    # name -> per feature: list of (max, doc, token_ids, values), sorted by (-max, doc)
    best: dict[str, list[list[tuple[float, int, list[int], list[float]]]]] = {
        name: [[] for _ in feats] for name, feats in features.items()}
    random_rows: dict[str, dict[int, tuple[list[int], torch.Tensor]]] = {name: {} for name in features}
    # per feature, the activation a document must reach to enter a full running list
    floor_values = {name: np.full(len(feats), -np.inf) for name, feats in features.items()}
    n_shards = len(store.manifest["shards"])
    with torch.inference_mode(), progress_bar() as bar:
        task = bar.add_task(f"examples layer {layer}", total=n_shards)
        for shard in store.iter_shards(layer):
            rows = shard.pos < config.max_tokens
            acts, docs, ids = shard.acts[rows], shard.doc[rows], shard.token_ids[rows].long()
            if len(docs) == 0:
                bar.update(task, advance=1)
                continue
            # rows are ordered by (doc, pos): each document is one contiguous run
            doc_ids, inverse, lengths = torch.unique_consecutive(docs, return_inverse=True, return_counts=True)
            starts = torch.cumsum(lengths, 0) - lengths
            if count_units:
                for s, n in zip(starts.tolist(), lengths.tolist()):
                    counts.update(unit_counts("".join(decoder.pieces(ids[s:s + n].tolist()))))
            here_random = [(i, int(d)) for i, d in enumerate(doc_ids.tolist()) if int(d) in random_pool]
            for name, sae in saes.items():
                if name not in features:
                    continue
                codes = _encode(sae, acts, features[name], config.batch_size)  # [n, F]
                doc_max = torch.full((len(doc_ids), codes.shape[1]), -math.inf)
                doc_max = doc_max.scatter_reduce(0, inverse[:, None].expand_as(codes), codes, "amax")
                doc_max_np = doc_max.numpy()
                doc_ids_np = doc_ids.numpy()
                # only features whose best document here can enter their running list need a look
                sampler.update(name, doc_ids_np, doc_max_np, ids, codes, starts, lengths)
                floors = floor_values[name]
                for j in np.nonzero(doc_max_np.max(axis=0) >= floors)[0].tolist():
                    running = best[name][j]
                    # this shard's best documents for feature j, ties broken by document index
                    ranked = np.lexsort((doc_ids_np, -doc_max_np[:, j]))[:keep]
                    floor = running[-1][:2] if len(running) >= keep else None
                    added = False
                    for u in ranked.tolist():
                        entry_key = (float(doc_max_np[u, j]), int(doc_ids_np[u]))
                        if floor is not None and (-entry_key[0], entry_key[1]) >= (-floor[0], floor[1]):
                            break
                        s, n = int(starts[u]), int(lengths[u])
                        running.append((*entry_key, ids[s:s + n].tolist(), codes[s:s + n, j].tolist()))
                        added = True
                    if added:
                        running.sort(key=lambda e: (-e[0], e[1]))
                        del running[keep:]
                        if len(running) >= keep:
                            floors[j] = running[-1][0]
                for u, doc in here_random:
                    s, n = int(starts[u]), int(lengths[u])
                    random_rows[name][doc] = (ids[s:s + n].tolist(), codes[s:s + n].clone())
            bar.update(task, advance=1)

    result: dict[tuple[str, int], FeatureExamples] = {}
    for name, feats in features.items():
        for j, feature in enumerate(feats):
            ranked = best[name][j]
            chosen = {doc for _, doc, _, _ in ranked}
            top = [Record(doc, tok, vals, "top") for _, doc, tok, vals in ranked[: config.n_top]]
            holdout = [Record(doc, tok, vals, "holdout") for _, doc, tok, vals in ranked[config.n_top:]]
            rand: list[Record] = []
            for doc in order.tolist():
                if len(rand) >= config.n_random:
                    break
                if doc in chosen or doc not in random_rows[name]:
                    continue
                tok, codes = random_rows[name][doc]
                rand.append(Record(doc, tok, codes[:, j].tolist(), "random"))
            activating, silent = ([Record(doc, tok, vals, kind, start=start) for doc, start, tok, vals in windows]
                                  for kind, windows in zip(("activating", "silent"),
                                                           sampler.windows(name, j, feature, {r.doc for r in top})))
            for record in top + holdout + rand + activating + silent:
                record.tokens = decoder.pieces(record.token_ids)
            result[(name, feature)] = FeatureExamples(name, feature, top, holdout, rand, activating, silent,
                                                      sampler.n_firing[name][j])
    stats = cached_stats
    if count_units:
        stats = CorpusStats(counts, sum(counts.values()))
        if len(_CORPUS_STATS) >= 8:
            _CORPUS_STATS.clear()
        _CORPUS_STATS[stats_key] = stats
    return ExampleSet(layer, config.max_tokens, result, stats)


def _encode(sae, acts: torch.Tensor, feats: list[int], batch_size: int) -> torch.Tensor:
    """Codes of the chosen features, float32 on the CPU, `[n, len(feats)]`."""
    device = next(sae.parameters()).device
    index = torch.tensor(feats, dtype=torch.long, device=device)
    out = []
    for i in range(0, len(acts), batch_size):
        codes = sae.encode(acts[i:i + batch_size].to(device))
        out.append(codes.index_select(1, index).float().cpu())
    return torch.cat(out)
