"""Explain features end to end: examples -> explanation -> simulation -> score (-> utility)."""

from __future__ import annotations

from .examples import ExampleConfig, Record, collect_examples, normalise
from .explainers import Explainer
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
                     table: dict[str, float] | None = None, aggregate: str = "mean") -> list[dict]:
    """Feature records (docs/interp.md) for every requested feature of every SAE at `layer` of `store`.

    `saes` maps a name (recorded as "sae") to a SparseAutoencoder, `features` the same names to
    feature indices, `max_cosine` optionally name -> feature -> MMCS max cosine. With `table`,
    the utility and reward-alignment fields are filled too.
    """
    examples = collect_examples(store, layer, saes, features, tokenizer, config,
                                corpus_stats=explainer.capabilities.corpus_statistics)
    items = list(examples.features.values())
    shown = [item.shown() for item in items]
    explanations = explainer.explain_many(
        [(str(item.feature), tokens, acts) for item, (tokens, acts) in zip(items, shown)], examples.corpus)
    simulated = explainer.simulate_many(
        [(text, [r.tokens for r in item.scoring()]) for text, item in zip(explanations, items)])
    records = []
    for item, (_, acts), text, sims in zip(items, shown, explanations, simulated):
        scoring = item.scoring()
        # A failed simulation predicts nothing: a constant 0 for its tokens (a constant correlates 0), counted.
        failed = sum(s is None for s in sims)
        sims = [[0.0] * len(r.values) if s is None else s for s, r in zip(sims, scoring)]
        cosine = (max_cosine or {}).get(item.sae, {}).get(item.feature)
        records.append({
            "model": model, "layer": layer, "sae": item.sae, "feature": item.feature,
            "max_cosine": None if cosine is None else float(cosine),
            "explanation": text, "score": simulation_score(sims, [r.values for r in scoring]),
            "explainer": explainer.name, "simulation_failures": failed,
            "examples": [_example(r, a) for r, a in zip(item.top, acts)],
            "scoring_examples": [_example(r, a, s) for r, a, s in
                                 zip(scoring, normalise([r.values for r in scoring]), sims)],
        })
    if table is not None:
        annotate(records, table, aggregate)
    return records


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
                device: str = "cpu") -> list[dict]:
    """The `explain` command: load the SAE(s), harvest `corpus` (or open `acts`), explain, score.

    Everything a user can get wrong (widths, layer, feature indices) is checked before the harvest.
    A harvest goes to the user cache (`harvest.cached_harvest`, max_tokens = config.max_tokens) and resumes there.
    """
    from pathlib import Path

    from ..errors import UserError
    from ..models import load_tokenizer
    from ..sae import SparseAutoencoder
    from ..store import ActivationStore

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
                            table=table, aggregate=aggregate)


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
