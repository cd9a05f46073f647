"""The feedback probe (the seed paper's later version, "Interpreting Learned Feedback Patterns", NeurIPS 2024): a
cross-validated linear probe on the policy's SAE features predicting the reward of a text.

A text's features are its SAE codes mean-pooled over its tokens, read exactly where the run's SAEs were trained
(the MLP output of a block, through the harvest's own forward and hook). The target is binary: the reward above
its median. The folds are grouped by prompt (no prompt in both training and test) and stratified by class, seeded.
A random dictionary of the same shape, read on the tuned model, is the control: a probe on the SAE's features
should beat a probe on random directions of the same activations for the features to be the ones that carry it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..sae import SparseAutoencoder

PROBE_C = 0.1
"""The probe's one fixed L2 regularisation (scikit-learn's C, on standardised features): there are more features
(hundreds) than texts (about a hundred), so the fit needs a firm prior, and one value set in advance is not tuned
on the folds it is scored on."""
TOP_FEATURES = 10
"""Features listed: the largest |weight| of the best dictionary's probe refit on all texts."""
CONTROL = "random"
"""The control dictionary's name: never the "best dictionary" whose features are listed."""
CHUNK_TEXTS = 256
"""Texts per harvested chunk in `pooled_codes` (their activations are held in memory at once)."""
CHUNK_ROWS = 8192
"""Token rows encoded by an SAE at once."""


def pooled_codes(model, tokenizer, layer: int, saes: dict[str, SparseAutoencoder], texts: list[str],
                 max_length: int = 128, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per SAE name, [n_texts, m]: the mean over each text's tokens of the SAE's codes of block `layer`'s MLP
    output, harvested as `rlhf_lens.harvest` harvests it (same hook, texts cut on the right at `max_length`)."""
    return pooled_codes_at(model, tokenizer, {layer: saes}, texts, max_length, batch_size)


def pooled_codes_at(model, tokenizer, saes: dict[int, dict[str, SparseAutoencoder]], texts: list[str],
                    max_length: int = 128, batch_size: int = 16) -> dict[str, np.ndarray]:
    """`pooled_codes` at several blocks in one forward pass: `saes` maps a block to the SAEs read there."""
    from ..harvest.config import HarvestConfig
    from ..harvest.run import Harvester
    from ..models import check_layers, mlp_width

    if not texts:
        raise UserError("no texts to read SAE codes of; give at least one")
    named = {name: (layer, sae) for layer, at in saes.items() for name, sae in at.items()}
    if not named:
        raise UserError("no SAEs to encode with; give at least one")
    if len(named) != sum(len(at) for at in saes.values()):
        raise UserError("an SAE name is given at two blocks; name each SAE once")
    layers = check_layers(model, sorted(saes))
    d = mlp_width(model)
    for name, (layer, sae) in named.items():
        if sae.cfg.d_in != d:
            raise UserError(f"SAE {name!r} reads width {sae.cfg.d_in} but block {layer}'s MLP output has width {d}; "
                            "give the SAEs trained on this model's activations")
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has neither a pad nor an EOS token; give it a pad token")
    config = HarvestConfig(layers=layers, corpus="<texts>", max_tokens=max_length, batch_size=batch_size,
                           dtype="float32")
    harvester = Harvester(model, tokenizer, texts, config, layers)
    pooled = {name: torch.zeros(len(texts), sae.cfg.dict_size, dtype=torch.float64)
              for name, (_, sae) in named.items()}
    counts = torch.zeros(len(texts), dtype=torch.float64)
    for start in range(0, len(texts), CHUNK_TEXTS):
        end = min(start + CHUNK_TEXTS, len(texts))
        acts, index = harvester.shard(Path("<texts>"), 0, start, end)
        doc = index["doc"]  # absolute text index of every token row
        counts.index_add_(0, doc, torch.ones(len(doc), dtype=torch.float64))
        for name, (layer, sae) in named.items():
            device = next(sae.parameters()).device
            for row in range(0, len(doc), CHUNK_ROWS):
                with torch.no_grad():
                    codes = sae.encode(acts[layer][row:row + CHUNK_ROWS].to(device)).double().cpu()
                pooled[name].index_add_(0, doc[row:row + CHUNK_ROWS], codes)
    empty = (counts == 0).nonzero().flatten()
    if len(empty):
        raise UserError(f"text {int(empty[0])} has no tokens; drop empty texts before probing")
    return {name: (total / counts[:, None]).numpy() for name, total in pooled.items()}


def random_dictionary(sae: SparseAutoencoder, seed: int) -> SparseAutoencoder:
    """The control: an SAE of the same shape and architecture whose rows are random unit vectors (seeded), read
    and written with the same rows (encoder = decoder). b_enc is zero (the trained one is fitted to the trained
    rows); b_dec is copied (the data's offset: decoding only, the codes do not read it); a BatchTopK threshold is
    copied (the same JumpReLU rule; a TopK's k keeps the same sparsity exactly)."""
    control = SparseAutoencoder(replace(sae.cfg))
    generator = torch.Generator().manual_seed(int(seed))
    rows = torch.randn(sae.cfg.dict_size, sae.cfg.d_in, generator=generator)
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        control.decoder.copy_(rows)
        if control.encoder is not None:
            control.encoder.copy_(rows)
        control.b_enc.zero_()
        control.b_dec.copy_(sae.b_dec.detach().cpu())
        if control.arch.learns_threshold:
            control.threshold.copy_(sae.threshold.detach().cpu())
    return control.to(next(sae.parameters()).device).eval()


def classes(target: np.ndarray) -> np.ndarray:
    """The probe's binary target: a target of two distinct values is its own classes (the higher is 1); any other
    is 1 where it is above its median, 0 where at or below it (ties at the median count as not above)."""
    target = np.asarray(target, dtype=np.float64)
    values = np.unique(target)
    if len(values) == 2:
        return (target == values[1]).astype(np.int64)
    return (target > np.median(target)).astype(np.int64)


def probe_folds(labels: np.ndarray, groups: Sequence, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, test indices) of each fold: grouped (a group, a text's prompt, is never in both), stratified
    by class, seeded (scikit-learn's StratifiedGroupKFold with shuffling). UserError when the texts cannot make
    `folds` folds whose training part holds both classes."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    n = len(labels)
    group_ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    if len(group_ids) != n:
        raise UserError(f"{len(group_ids)} groups for {n} texts; give one group (its prompt) per text")
    if folds < 2:
        raise UserError(f"the probe needs at least 2 folds (got {folds})")
    if n < folds:
        raise UserError(f"{n} texts cannot make {folds} folds; give at least {folds} texts")
    n_groups = int(group_ids.max()) + 1 if n else 0
    if n_groups < folds:
        raise UserError(f"{n_groups} prompts cannot make {folds} folds grouped by prompt; give texts of at least "
                        f"{folds} prompts")
    if len(np.unique(labels)) < 2:
        raise UserError(f"all {n} texts are in one class of the target; the probe needs texts on both sides of it")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members": checked below
        split = list(splitter.split(np.zeros(n), labels, group_ids))
    for train, test in split:
        if len(np.unique(labels[train])) < 2 or len(test) == 0:
            raise UserError(f"the texts cannot make {folds} prompt-grouped folds with both classes in every training "
                            "part; give more texts or fewer folds")
    return split


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))


def feedback_probe(codes: dict[str, np.ndarray], target: np.ndarray, groups: Sequence, folds: int, seed: int,
                   layers: dict[str, int] | None = None, target_name: str = "the target") -> dict:
    """The probe object of docs/inspect_rm.md: per dictionary, a logistic regression (standardised features, C =
    PROBE_C) predicting `classes(target)` from its codes [n, m], scored on `probe_folds`; accuracy's mean and sd
    (ddof 1) over the folds; "chance" = the majority class's share; "top_features": the TOP_FEATURES largest
    |weight| (on standardised features) of the best dictionary's probe (highest accuracy, not the control) refit
    on all texts."""
    target = np.asarray(target, dtype=np.float64)
    if target.ndim != 1 or not np.isfinite(target).all():
        raise UserError("the probe's target must be one finite number per text")
    if not codes:
        raise UserError("no dictionaries to probe; give at least one")
    for name, x in codes.items():
        if np.ndim(x) != 2 or len(x) != len(target):
            raise UserError(f"dictionary {name!r} has codes of shape {list(np.shape(x))} for {len(target)} texts; "
                            "give [texts, features]")
    labels = classes(target)
    split = probe_folds(labels, groups, folds, seed)
    dictionaries = {}
    for name, x in codes.items():
        accuracies = []
        for train, test in split:
            probe = _probe().fit(x[train], labels[train])
            accuracies.append(float((probe.predict(x[test]) == labels[test]).mean()))
        dictionaries[name] = {"accuracy": float(np.mean(accuracies)), "sd": float(np.std(accuracies, ddof=1)),
                              "layer": None if layers is None else layers.get(name)}
    candidates = [name for name in codes if name != CONTROL] or list(codes)
    best = max(candidates, key=lambda name: dictionaries[name]["accuracy"])  # ties: the first named
    weights = _probe().fit(codes[best], labels)[-1].coef_[0]
    top = np.argsort(-np.abs(weights), kind="stable")[:TOP_FEATURES]
    return {"target": f"{target_name} above its median", "texts": int(len(labels)), "folds": int(folds),
            "dictionaries": dictionaries, "chance": float(max(labels.mean(), 1 - labels.mean())),
            "top_features": [{"dictionary": best, "feature": int(j), "weight": float(weights[j]), "explanation": None}
                             for j in top]}


def probe_policy(base_model, tuned_model, tokenizer, dictionaries: dict[str, tuple[int, str]], texts: list[str],
                 groups: Sequence, rewards: np.ndarray, folds: int, seed: int, max_length: int = 128) -> dict:
    """The "probe" object of inspect_rm.json: `feedback_probe` of the RM's `rewards` of `texts` on the policy's
    dictionaries (name -> (layer, SAE folder)); a name starting with "tuned" is read on the tuned model's
    activations, "base" on the base model's; the control "random" (`random_dictionary` of the first tuned one,
    seeded with `seed`) is read on the tuned model at that layer."""
    if CONTROL in dictionaries:
        raise UserError(f"the dictionary name {CONTROL!r} is the probe's own control; name yours tuned-* or base-*")
    bad = [name for name in dictionaries if not name.startswith(("tuned", "base"))]
    if bad:
        raise UserError(f"dictionary {bad[0]!r}: names must start with 'tuned' or 'base' (which model reads it)")
    tuned = [name for name in dictionaries if name.startswith("tuned")]
    if not tuned:
        raise UserError("the probe needs at least one tuned dictionary (a name starting with 'tuned')")
    if len(texts) != len(rewards):
        raise UserError(f"{len(texts)} texts but {len(rewards)} rewards; give one reward per text")
    saes = {name: SparseAutoencoder.load(folder).eval() for name, (_, folder) in dictionaries.items()}
    saes[CONTROL] = random_dictionary(saes[tuned[0]], seed)
    layers = {name: int(layer) for name, (layer, _) in dictionaries.items()}
    layers[CONTROL] = layers[tuned[0]]
    codes: dict[str, np.ndarray] = {}
    for model_name, model in (("tuned", tuned_model), ("base", base_model)):
        names = [name for name in saes if name.startswith(model_name) or name == CONTROL and model_name == "tuned"]
        by_layer: dict[int, dict[str, SparseAutoencoder]] = {}
        for name in names:
            by_layer.setdefault(layers[name], {})[name] = saes[name]
        codes.update(pooled_codes_at(model, tokenizer, by_layer, texts, max_length=max_length))  # one pass a model
    codes = {name: codes[name] for name in saes}  # the given order, the control last
    return feedback_probe(codes, np.asarray(rewards, dtype=np.float64), groups, folds, seed, layers=layers,
                          target_name="the RM's reward")
