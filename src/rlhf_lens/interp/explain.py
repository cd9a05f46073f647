"""Explain features end to end: examples -> explanation -> scores (simulation, detection, fuzzing; each with the
shuffled-explanation null) (-> utility)."""

from __future__ import annotations

from collections.abc import Sequence

from .config import SCORERS
from .examples import ExampleConfig, Record, collect_examples, normalise
from .explainers import Explainer
from .scorers import YesNoModel, choose_null_explanations, score_explanations, simulation_null
from .scoring import simulation_score
from .utility import annotate


def _example(record: Record, activations: list[int], simulated: list[float] | None = None) -> dict:
    out = {"doc": record.doc, "kind": record.kind, "tokens": record.tokens, "activations": activations,
           "max_activation": round(record.max_activation, 6), "values": [round(v, 6) for v in record.values]}
    if simulated is not None:
        out["simulated"] = [round(v, 4) for v in simulated]
    return out


def explain_features(store, layer: int, saes: dict, features: dict[str, list[int]], tokenizer,
                     explainer: Explainer, config: ExampleConfig = ExampleConfig(), model: str = "model",
                     max_cosine: dict[str, dict[int, float]] | None = None,
                     table: dict[str, float] | None = None, aggregate: str = "mean",
                     scorers: Sequence[str] = ("simulation",), yes_no: YesNoModel | None = None,
                     null_explanations: int = 1, score_features: int = 0,
                     scored_saes: Sequence[str] | None = None,
                     null_from: dict[str, list[int]] | None = None) -> list[dict]:
    """Feature records (docs/interp.md) for every requested feature of every SAE at `layer` of `store`.

    `saes` maps a name (recorded as "sae") to a SparseAutoencoder, `features` the same names to
    feature indices, `max_cosine` optionally name -> feature -> MMCS max cosine. With `table`,
    the utility and reward-alignment fields are filled too. `scorers`: simulation (the explainer's
    simulator; "score"), detection and fuzzing (`yes_no`'s P(yes), for the first `score_features`
    features of each SAE, 0: all; of the SAEs named in `scored_saes` only, when given); each also scored with
    `null_explanations` other features' explanations (of any SAE of the call, or of `null_from`'s features: those
    whose records must not depend on the others asked for alongside).
    """
    asked = check_scorers(scorers, yes_no, null_explanations, score_features)
    examples = collect_examples(store, layer, saes, features, tokenizer, config,
                                corpus_stats=explainer.capabilities.corpus_statistics)
    items = list(examples.features.values())
    shown = [item.shown() for item in items]
    explanations = explainer.explain_many(
        [(str(item.feature), tokens, acts) for item, (tokens, acts) in zip(items, shown)], examples.corpus)
    nulls = choose_null_explanations(
        explanations, null_explanations, config.seed, [(item.sae, item.feature) for item in items],
        None if null_from is None else [item.feature in null_from.get(item.sae, ()) for item in items])
    simulate = "simulation" in scorers
    simulated = explainer.simulate_many(
        [(text, [r.tokens for r in item.scoring()]) for text, item in zip(explanations, items)]) if simulate else None
    sim_null = simulation_null(explainer, items, explanations, nulls) if simulate and null_explanations else None
    scored = _scored(items, features, score_features, scored_saes)
    labels = [{"sae": item.sae, "feature": item.feature} for item in items]
    by_scorer = score_explanations(asked, [items[i] for i in scored], explanations, [nulls[i] for i in scored],
                                   labels, yes_no, config.seed) if asked and scored else {}
    records = []
    for i, (item, (_, acts), text) in enumerate(zip(items, shown, explanations)):
        scoring = item.scoring()
        sims = simulated[i] if simulated is not None else [None] * len(scoring)
        # A failed simulation predicts nothing: a constant 0 for its tokens (a constant correlates 0), counted.
        failed = sum(s is None for s in sims) if simulate else 0
        sims = [[0.0] * len(r.values) if s is None else s for s, r in zip(sims, scoring)]
        cosine = (max_cosine or {}).get(item.sae, {}).get(item.feature)
        record = {
            "model": model, "layer": layer, "sae": item.sae, "feature": item.feature,
            "max_cosine": None if cosine is None else float(cosine),
            "explanation": text, "score": simulation_score(sims, [r.values for r in scoring]) if simulate else None,
            "explainer": explainer.name, "simulation_failures": failed,
            "examples": [_example(r, a) for r, a in zip(item.top, acts)],
            "scoring_examples": [_example(r, a, s if simulate else None) for r, a, s in
                                 zip(scoring, normalise([r.values for r in scoring]), sims)],
        }
        if sim_null is not None:
            record["simulation_null"] = sim_null[i]
        for scorer, results in by_scorer.items():
            if i in scored:
                record[scorer] = results[scored.index(i)]
        records.append(record)
    if table is not None:
        annotate(records, table, aggregate)
    return records


def check_scorers(scorers: Sequence[str], yes_no: YesNoModel | None, null_explanations: int,
                  score_features: int) -> list[str]:
    """The scorers that ask the scorer model (detection, fuzzing), after the arguments' checks (a UserError)."""
    from ..errors import UserError

    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:  # none at all is allowed: explanations only (a decomposition's latents in a run without simulation)
        raise UserError(f"unknown scorer {unknown[0]!r}; use one or more of {', '.join(SCORERS)}")
    asked = [s for s in SCORERS if s in scorers and s != "simulation"]
    if asked and yes_no is None:
        raise UserError(f"{' and '.join(asked)} need a scorer model (interp.scorer_model): hf:MODEL or openai")
    if null_explanations < 0 or score_features < 0:
        raise UserError("null_explanations and score_features must be >= 0")
    return asked


def _scored(items, features: dict[str, list[int]], score_features: int,
            scored_saes: Sequence[str] | None = None) -> list[int]:
    """Positions in `items` of the features detection and fuzzing score: the first `score_features` requested
    features (0: all) of each SAE in `scored_saes` (None: every SAE)."""
    first = {name: set(list(dict.fromkeys(int(f) for f in feats))[:score_features or None])
             for name, feats in features.items() if scored_saes is None or name in scored_saes}
    return [i for i, item in enumerate(items) if item.feature in first.get(item.sae, set())]


def feature_selection(sae, features: list[int] | None = None, top_k: int | None = None,
                      mmcs_with=None) -> tuple[list[int], dict[int, float]]:
    """Feature indices to explain and their max cosine: given indices, or the top-k of `sae` by max cosine
    against the dictionary `mmcs_with` (another SAE of the same model and layer, usually twice as wide)."""
    from ..errors import UserError

    if features and (top_k is not None or mmcs_with is not None):
        raise UserError("give either --features or --top-k with --mmcs-with, not both")
    if features:
        size = int(sae.cfg.dict_size)
        bad = [f for f in features if not 0 <= f < size]
        if bad:
            raise UserError(f"feature index {bad[0]} out of range: the SAE has features 0..{size - 1}")
        return list(dict.fromkeys(features)), {}
    if mmcs_with is None:
        raise UserError("choose features: --features 1,2,3, or --top-k K with --mmcs-with SAE_DIR2 (the larger "
                        "dictionary of the same model and layer)")
    if top_k is None or top_k < 1:
        raise UserError("--top-k must be at least 1 when --mmcs-with is given")
    from ..dictionaries import top_features

    if int(mmcs_with.cfg.d_in) != int(sae.cfg.d_in):
        raise UserError(f"--mmcs-with SAE has width {mmcs_with.cfg.d_in} but the SAE has {sae.cfg.d_in}; give an "
                        "SAE of the same model and layer")
    top = top_features(sae.dictionary, mmcs_with.dictionary, min(top_k, int(sae.cfg.dict_size)))
    return [int(t["feature"]) for t in top], {int(t["feature"]): float(t["max_cosine"]) for t in top}


def explain_sae(sae_dir, model_spec: str, layer: int, explainer: Explainer, *, features: list[int] | None = None,
                top_k: int | None = None, mmcs_with=None, corpus: str | None = None, acts=None,
                split: str = "test", max_docs: int | None = None, config: ExampleConfig = ExampleConfig(),
                label: str | None = None, table: dict[str, float] | None = None, aggregate: str = "mean",
                device: str = "cpu", scorers: Sequence[str] = ("simulation",), yes_no: YesNoModel | None = None,
                null_explanations: int = 1, score_features: int = 0) -> list[dict]:
    """The `explain` command: load the SAE(s), harvest `corpus` (or open `acts`), explain, score.

    Everything a user can get wrong (widths, layer, feature indices) is checked before the harvest.
    A harvest goes to the user cache (`harvest.cached_harvest`, max_tokens = config.max_tokens) and resumes there.
    """
    from pathlib import Path

    from ..errors import UserError
    from ..models import load_tokenizer
    from ..sae import SparseAutoencoder
    from ..store import ActivationStore

    check_scorers(scorers, yes_no, null_explanations, score_features)
    sae = SparseAutoencoder.load(sae_dir)
    other = SparseAutoencoder.load(mmcs_with) if mmcs_with is not None else None
    chosen, cosines = feature_selection(sae, features, top_k, other)
    if acts is not None:
        store = ActivationStore(acts)
        if layer not in store.layers:
            raise UserError(f"layer {layer} is not in the store {acts}: it holds layers {store.layers}")
        _check_width(sae, store.d, layer, sae_dir)
        tokenizer = load_tokenizer(model_spec)
        stored_vocab = store.manifest.get("vocab_size")
        if stored_vocab is not None and int(stored_vocab) != len(tokenizer):
            raise UserError(f"the store {acts} was harvested with a tokenizer of {stored_vocab} tokens but {model_spec} "
                            f"has {len(tokenizer)}; give the --model the store was harvested from")
    else:
        if corpus is None:
            raise UserError("give --corpus NAME to harvest, or --acts STORE_DIR to reuse an activation store")
        store, tokenizer = _load_and_harvest(sae, sae_dir, model_spec, layer, corpus, split, max_docs, config, device)
    name = str(sae_dir)
    return explain_features(store, layer, {name: sae}, {name: chosen}, tokenizer, explainer, config,
                            model=label or Path(str(model_spec)).name, max_cosine={name: cosines},
                            table=table, aggregate=aggregate, scorers=scorers, yes_no=yes_no,
                            null_explanations=null_explanations, score_features=score_features)


def _check_width(sae, d: int, layer: int, sae_dir) -> None:
    from ..errors import UserError

    if int(sae.cfg.d_in) != int(d):
        raise UserError(f"SAE {sae_dir} expects activations of width {sae.cfg.d_in} but layer {layer} has width {d}; "
                        "use an SAE trained on this model and layer")


def _load_and_harvest(sae, sae_dir, model_spec, layer, corpus, split, max_docs, config, device):
    """Load the model, check it against the SAE, harvest `layer` over the corpus into the user cache."""
    from ..harvest import cached_harvest
    from ..models import check_layers, load_model, mlp_width

    model, tokenizer = load_model(model_spec, device=device)
    check_layers(model, [layer])
    _check_width(sae, mlp_width(model), layer, sae_dir)
    store = cached_harvest(model_spec, model, tokenizer, layer, corpus, split, max_docs, config.max_tokens, device)
    return store, tokenizer
