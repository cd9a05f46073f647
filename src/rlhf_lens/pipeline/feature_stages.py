"""The stages that give features their meaning: `features` (every model's top features explained and scored, their
reward effect read) and `scores` (the utility score, reward alignment, simulation and MMCS per model over seeds, and
the scorers' pooled summaries)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..io import read_json, write_json
from .jobs import executor_of, job_resources
from .records import analysed_layers, analysed_models, in_run, relative
from .rm_stages import run_reward


def stage_features(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Explain the top-k features of every seed's small SAE, and the tuned model's most novel features; one job per
    model (`interp.features.explain_model_features`)."""
    from ..interp.features import FeaturesJob, explain_model_features, wants_yes_no

    models = analysed_models(state, run_dir.absolute())
    layers = analysed_layers(config, state)
    stores = state["harvest"]["stores"]
    files = {name: relative(run_dir, run_dir / "features" / f"{name}.json") for name in stores}
    # Jobs get absolute paths: a Ray worker on another node does not share the driver's working directory.
    jobs = [FeaturesJob(model=name, model_spec=models[name], store=str(in_run(run_dir, store_dir).absolute()),
                        layers=layers, mmcs=str(in_run(run_dir, state["mmcs"]["file"]).absolute()),
                        root=str(run_dir.absolute()), out=str(in_run(run_dir, files[name]).absolute()),
                        interp=config.interp, examples=config.examples, table=config.reward.table,
                        aggregate=config.reward.aggregate, first_seed=config.sae.seeds[0], device=config.model.device,
                        dtype=config.model.dtype, diff_dir=str(in_run(run_dir, state["diff"]["dir"]).absolute()),
                        reward_spec=run_reward(config, state, run_dir), diff_table=config.diff.table,
                        prompt_min_chars=config.rlhf.prompt_min_chars, units_before=i * len(layers))
            for i, (name, store_dir) in enumerate(stores.items())]
    # a local LM (explainer or scorer model) and the reward effect's steering run the model: worth a GPU
    gpu = config.interp.explainer.startswith("hf:") or config.interp.reward_effect or (
        wants_yes_no(config.interp) and config.interp.resolved_scorer_model().startswith("hf:"))
    new_records, costs = [], []
    for done in executor_of(state).map(explain_model_features, jobs, resources=job_resources(config, gpu=gpu)):
        new_records += done["new"]
        costs += [done["cost"]] if done["cost"] else []
    write_json(run_dir / "features" / "tuned-new.json", new_records)
    cost = None
    if costs:
        cost = {k: sum(c[k] for c in costs) for k in costs[0] if k != "model"}
        cost["model"] = costs[0]["model"]
    return {"files": files, "new": relative(run_dir, run_dir / "features" / "tuned-new.json"), "cost": cost}


def stage_scores(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Utility score (Table 3), reward alignment, simulation and MMCS per model, as mean +- spread over seeds
    (`interp.utility.seed_scores`)."""
    from ..interp.features import scoring_summary
    from ..interp.utility import seed_scores

    records = {name: read_json(in_run(run_dir, path)) for name, path in state["features"]["files"].items()}
    within = read_json(in_run(run_dir, state["mmcs"]["file"]))["within"]
    headline, utility = seed_scores(records, within, config.sae.seeds, analysed_layers(config, state),
                                    config.reward.table, config.reward.aggregate)
    # the scorers' pooled summaries and the reward effect's counts, over the first seed's records (as the report's)
    first = f"s{config.sae.seeds[0]}"
    scoring = scoring_summary({m: [r for r in rs if r["sae"] == first] for m, rs in records.items()},
                              config.interp.scorer, config.diff.level, state["features"].get("cost"))
    utility["scoring"] = scoring
    write_json(run_dir / "utility.json", utility)
    return {"headline": headline, "utility": relative(run_dir, run_dir / "utility.json")}
