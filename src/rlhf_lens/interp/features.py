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
    dtype: str = "float32"
    diff_dir: str = ""
    """The run's diff folder: the reward effect reads its vocabulary, frequency-matched null, held-out prompts and
    coherent strength per block there ("": no reward effect)."""
    reward_spec: str = ""
    """The run's reward (reward.spec, or rm:PATH): U(word) for a reward without a utility table."""
    diff_table: str | None = None
    """diff.table: the utility table the diff reads words with (None: the reward's own)."""
    prompt_min_chars: int | None = None
    """rlhf.prompt_min_chars: the diff's held-out prompts are drawn again as it drew them."""
    units_before: int = 0
    """Blocks of the stage done by the jobs before this one (for the RLHF_LENS_INTERRUPT_AFTER test hook)."""


def explain_model_features(job: FeaturesJob) -> dict:
    """One model's feature records, every block and seed, written to `job.out`. Returns {"new": the records of the
    model's most novel features (the tuned model only; [] for the others), "cost": what the scorer model was asked
    (`YesNo.counts`, None without detection or fuzzing)}."""
    from ..models import load_tokenizer
    from ..rewards import load_utility_table
    from ..sae import SparseAutoencoder
    from ..store import ActivationStore
    from .explain import explain_features

    root = Path(job.root)
    mmcs_result = read_json(Path(job.mmcs))
    explainer = shared_explainer(job.interp.explainer, job.interp.llm, job.device)
    yes_no = shared_yes_no(job.interp, job.device)
    before = yes_no.counts() if yes_no is not None else None
    effects = EffectReader(job) if job.interp.reward_effect and job.diff_dir else None
    table = load_utility_table(job.table)
    first = f"s{job.first_seed}"  # mmcs.json's `new`: the first seed's tuned dictionary against the base
    new_records = []
    store = ActivationStore(Path(job.store))
    # the reward effect loads the model with its tokenizer: no second load of the tokenizer then
    tokenizer = effects.tokenizer if effects is not None else load_tokenizer(job.model_spec)
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
                                     table=table, aggregate=job.aggregate, scorers=job.interp.scorer, yes_no=yes_no,
                                     null_explanations=job.interp.null_explanations,
                                     score_features=job.interp.score_features, scored_saes=[first],
                                     null_from=features)
        if effects is not None:  # the first seed's top-k (the ones the report shows), then the new ones apart
            shown = [r for r in explained if r["sae"] == first and r["feature"] in features[first]]
            effects.add(shown, saes, layer, job.interp.output_top)
            effects.add([r for r in explained if r["sae"] == first and r["feature"] not in features[first]], saes,
                        layer, job.interp.output_top)
        records += [r for r in explained if r["feature"] in features[r["sae"]]]
        by_feature = {r["feature"]: r for r in explained if r["sae"] == first}
        new_records += [{**by_feature[row["feature"]], "new": True, "max_cosine_to_base": row["max_cosine_to_base"],
                         "match": row["match"]} for row in novel]
        units += 1
        interrupt_point("features", units)
    write_json(Path(job.out), records)
    cost = None if yes_no is None else {**{k: v - before[k] for k, v in yes_no.counts().items()},
                                        "model": yes_no.model_id}
    return {"new": new_records, "cost": cost}


class EffectReader:
    """A features job's reward-effect reading (`reward_effect.reward_effects`): its model, loaded once, and the
    diff's reading; each SAE feature's decoder row is a direction added at its block."""

    def __init__(self, job: FeaturesJob):
        from ..models import load_model
        from .reward_effect import output_reading

        self.model, self.tokenizer = load_model(job.model_spec, device=job.device, dtype=job.dtype)
        self.reading = output_reading(job.diff_dir, self.model, self.tokenizer, job.reward_spec, job.diff_table,
                                      prompt_min_chars=job.prompt_min_chars, match_kl=job.interp.effect_match_kl)

    def add(self, records: list[dict], saes: dict, layer: int, output_top: int) -> None:
        """Fill each record's vocab_proj, token_change and reward_effect (Benjamini-Hochberg over these records)."""
        from .reward_effect import add_reward_effects

        add_reward_effects(records, saes, self.model, self.reading, layer, output_top)


def most_novel(new: list[dict], layer: int, k: int) -> list[dict]:
    """mmcs.json's `new` rows of `layer`, the k farthest from every base feature (lowest max cosine) first."""
    return sorted((r for r in new if r["layer"] == layer), key=lambda r: (r["max_cosine_to_base"], r["feature"]))[:k]


def without_scoring_examples(record: dict) -> dict:
    """A feature record as results.json and decompose.json hold it: without the scoring examples (bulky, not shown)."""
    return {k: v for k, v in record.items() if k != "scoring_examples"}


_EXPLAINERS: dict[tuple, object] = {}


def latent_scoring(interp: InterpConfig) -> dict:
    """How the latents of a decomposition or an RM's SAE are scored (`explain_features` keywords): by simulation when
    interp.scorer names it, with the run's shuffled-explanation null. Detection and fuzzing score the features stage's
    features only: their scorer model's prompts are a run's costliest part."""
    return {"scorers": [s for s in interp.scorer if s == "simulation"], "null_explanations": interp.null_explanations}


def wants_yes_no(interp: InterpConfig) -> bool:
    """Whether interp.scorer asks a scorer model (detection or fuzzing)."""
    return any(s in ("detection", "fuzzing") for s in interp.scorer)


def shared_yes_no(interp: InterpConfig, device: str):
    """The scorer model detection and fuzzing ask (interp.scorer_model resolved), made once per process and shared by
    its jobs (a local LM is costly to load); None when interp.scorer names neither."""
    if not wants_yes_no(interp):
        return None
    from .answers import yes_no_model

    spec = interp.resolved_scorer_model()
    key = ("yes_no", spec, dataclasses.astuple(interp.llm), device)
    if key not in _EXPLAINERS:
        _EXPLAINERS[key] = yes_no_model(spec, interp.llm, device)
    return _EXPLAINERS[key]


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


def scoring_summary(records: dict[str, list[dict]], scorers: list[str], level: float = 0.05,
                    cost: dict | None = None) -> dict:
    """results.json `scoring`: per model, each scorer pooled over its feature records against the shuffled-explanation
    null (`scorers.scorer_summary`), and the reward effect's counts: features measured, how many raise / lower the
    reward's words (their claims, Benjamini-Hochberg within a model's block), the mean effect; `cost`: what the
    scorer model was asked (the features stage's)."""
    from .scorers import scorer_summary

    models: dict[str, dict] = {}
    effects: dict[str, dict] = {}
    for model, rows in records.items():
        models[model] = {s: scorer_summary(rows, s, level) for s in scorers}
        measured = [r["reward_effect"] for r in rows if isinstance(r.get("reward_effect"), dict)
                    and r["reward_effect"].get("effect") is not None]
        if measured:
            effects[model] = {"n": len(measured), "raises": sum(e.get("claim") == "raises" for e in measured),
                              "lowers": sum(e.get("claim") == "lowers" for e in measured),
                              "mean": sum(float(e["effect"]) for e in measured) / len(measured)}
    if len(records) > 1:  # every model's features pooled: whether the explainer's explanations beat the null at all
        pooled = [r for rows in records.values() for r in rows]
        models["all models"] = {s: scorer_summary(pooled, s, level) for s in scorers}
    return {"scorers": list(scorers), "level": level, "models": models, "reward_effect": effects, "cost": cost}
