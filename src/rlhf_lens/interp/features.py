"""The features stage of a run: one model's top-k features of every block and seed explained and scored, with
the tuned model's most novel features beside them (docs/pipeline.md, `features/{model}.json`,
`features/tuned-new.json`); and the explainer a process shares between its jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import interrupt_point
from ..io import read_json, write_json
from .config import ExampleConfig, InterpConfig, LLMConfig


@dataclass
class FeaturesJob:
    """One model's share of the features stage, in plain values (it may run in another process or on another
    machine that sees the same files: give absolute paths)."""

    model: str
    """The model's name in the run: base, tuned, control or placebo (the tuned model's new features are explained)."""
    model_spec: str
    """The model (hub id or folder): its tokenizer decodes the examples."""
    store: str
    """Its activation store."""
    layers: list[int]
    """The analysed blocks."""
    mmcs: str
    """The run's mmcs.json (`dictionaries.compare_run_saes`): which SAEs, which features, which are new."""
    root: str
    """What the SAE folders recorded in mmcs.json are read against (the run folder)."""
    out: str
    """Where the model's feature records are written (features/{model}.json)."""
    interp: InterpConfig
    examples: ExampleConfig
    table: str
    """The utility table the records are scored against (reward.table)."""
    aggregate: str
    """reward.aggregate."""
    first_seed: int
    """The first SAE seed: mmcs.json's `new` compares its tuned dictionary with the base."""
    device: str = "cpu"
    units_before: int = 0
    """Blocks of the stage done by the jobs before this one (for the RLHF_LENS_INTERRUPT_AFTER test hook)."""


def explain_model_features(job: FeaturesJob) -> list[dict]:
    """One model's feature records, every block and seed, written to `job.out`; returns the records of the model's
    most novel features (the tuned model only; [] for the others)."""
    from ..models import load_tokenizer
    from ..rewards import load_utility_table
    from ..sae import SparseAutoencoder
    from ..store import ActivationStore
    from .explain import explain_features

    root = Path(job.root)
    mmcs_result = read_json(Path(job.mmcs))
    explainer = shared_explainer(job.interp.explainer, job.interp.llm, job.device)
    table = load_utility_table(job.table)
    first = f"s{job.first_seed}"  # mmcs.json's `new`: the first seed's tuned dictionary against the base
    new_records = []
    store = ActivationStore(Path(job.store))
    tokenizer = load_tokenizer(job.model_spec)
    records = []
    units = job.units_before
    for layer in job.layers:
        tops = [t for t in mmcs_result["top"] if t["model"] == job.model and t["layer"] == layer]
        saes = {f"s{t['seed']}": SparseAutoencoder.load(root / t["sae"]) for t in tops}
        features = {f"s{t['seed']}": [f["feature"] for f in t["features"]] for t in tops}
        cosines = {f"s{t['seed']}": {f["feature"]: f["max_cosine"] for f in t["features"]} for t in tops}
        novel = most_novel(mmcs_result["new"], layer, job.interp.top_k) if job.model == "tuned" else []
        # The new features ride along in the first seed's pass (one read of the store, one explainer
        # batch); each feature's examples and explanation do not depend on the others asked for, and
        # the top-k records are split off unchanged, so the headline is computed exactly as before.
        wanted = {**features, first: list(dict.fromkeys(features[first] + [r["feature"] for r in novel]))}
        # null_from: the top-k records' shuffled-explanation nulls come from the top-k only (not the novel ones)
        explained = explain_features(store, layer, saes, wanted, tokenizer, explainer,
                                     job.examples, model=job.model, max_cosine=cosines,
                                     table=table, aggregate=job.aggregate, null_from=features)
        records += [r for r in explained if r["feature"] in features[r["sae"]]]
        by_feature = {r["feature"]: r for r in explained if r["sae"] == first}
        new_records += [{**by_feature[row["feature"]], "new": True, "max_cosine_to_base": row["max_cosine_to_base"],
                         "match": row["match"]} for row in novel]
        units += 1
        interrupt_point("features", units)
    write_json(Path(job.out), records)
    return new_records


def most_novel(new: list[dict], layer: int, k: int) -> list[dict]:
    """mmcs.json's `new` rows of `layer`, the k farthest from every base feature (lowest max cosine) first."""
    return sorted((r for r in new if r["layer"] == layer), key=lambda r: (r["max_cosine_to_base"], r["feature"]))[:k]


def without_scoring_examples(record: dict) -> dict:
    """A feature record as results.json and decompose.json hold it: without the scoring examples (bulky, not shown)."""
    return {k: v for k, v in record.items() if k != "scoring_examples"}


_EXPLAINERS: dict[tuple, object] = {}


def shared_explainer(spec: str, llm: LLMConfig, device: str):
    """The run's explainer (interp.explainer, interp.llm); an `hf:` one (a local LM, costly to load) is made once per
    process and shared by its jobs."""
    from .explainers import get_explainer

    if not spec.startswith("hf:"):
        return get_explainer(spec, llm=llm, device=device)
    key = (spec, dataclasses.astuple(llm), device)
    if key not in _EXPLAINERS:
        _EXPLAINERS[key] = get_explainer(spec, llm=llm, device=device)
    return _EXPLAINERS[key]
