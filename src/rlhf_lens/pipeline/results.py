"""results.json: everything the report shows, gathered from the finished stages in one JSON document
(docs/report.md). `collect_results` is its one writer; the report reads nothing else.

The sections and their shapes (a list of objects, or an object) are `rlhf_lens.report.RESULT_SECTIONS`, which the
report checks results.json against; `collect_results` writes exactly those (plus its title and date).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import RunConfig
from ..interp.features import without_scoring_examples
from ..interp.utility import mean_std
from ..io import read_json
from ..report import RESULT_SECTIONS
from .records import analysed_layers, in_run, recorded_model, relative


def gold_for_report(rlhf_dir: Path) -> dict | None:
    """`ppo.gold`: gold.json's curve and the rows of evals.jsonl without their per-prompt arrays; None for a run
    without evaluations along the tune (older runs, rlhf.eval_every = 0)."""
    if not (rlhf_dir / "gold.json").is_file():
        return None
    evals = rlhf_dir / "evals.jsonl"
    rows = [json.loads(line) for line in evals.read_text().splitlines() if line.strip()] if evals.is_file() else []
    return {"curve": read_json(rlhf_dir / "gold.json"),
            "evals": [{k: v for k, v in row.items() if k != "per_prompt"} for row in rows]}


def collect_results(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Everything the report shows, in one JSON document (docs/report.md)."""
    ppo = None
    rlhf_dir = run_dir / "rlhf"
    if state["rlhf"]["trained"] or (rlhf_dir / "eval.json").is_file():  # external tuned models are evaluated too
        log_file = rlhf_dir / "log.jsonl"
        log = ([json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
               if log_file.is_file() else [])
        ppo = {"log": log, "eval": read_json(rlhf_dir / "eval.json") if (rlhf_dir / "eval.json").is_file() else None,
               "gold": gold_for_report(rlhf_dir)}
    rows = read_json(run_dir / "divergence.json")
    mmcs_result = read_json(in_run(run_dir, state["mmcs"]["file"]))
    sae_rows = []
    for s in state["saes"]["saes"]:
        metrics = read_json(in_run(run_dir, s["dir"]) / "metrics.json")
        sae_rows.append({**{k: s[k] for k in ("model", "layer", "dict_size", "seed")}, "arch": config.sae.arch,
                         "l0": metrics.get("mean_l0"),
                         **{k: metrics.get(k) for k in ("l1", "target_l0", "mse", "fvu", "dead_fraction",
                                                         "tokens_per_s", "warnings", "steps", "stop_reason",
                                                         "converged", "still_improving", "heldout_fvu")},
                         # the held-out loss curve, for the report's small multiples
                         "curve": [{k: c.get(k) for k in ("step", "heldout_loss", "train_loss")}
                                   for c in metrics.get("curve") or []]})
    mmcs_rows = []
    groups: dict[tuple, list[float]] = {}
    for w in mmcs_result["within"]:
        groups.setdefault((w["model"], w["layer"], "within"), []).append(w["mmcs"])
    for a in mmcs_result["across"]:
        groups.setdefault((f"{a['model']}-vs-base", a["layer"], "across"), []).append(a["mmcs"])
    for (model, layer, kind), values in groups.items():
        stats = mean_std(values)
        mmcs_rows.append({"model": model, "layer": layer, "kind": kind, "values": values, "mean": stats["mean"],
                          "std": stats["std"]})
    features = []
    first_seed = f"s{config.sae.seeds[0]}"
    for path in state["features"]["files"].values():
        features += [without_scoring_examples(r) for r in read_json(in_run(run_dir, path)) if r["sae"] == first_seed]
    new_features = [without_scoring_examples(r) for r in read_json(in_run(run_dir, state["features"]["new"]))]
    models = {name: shown_model(state[stage], run_dir) for name, stage in (("base", "base"), ("tuned", "rlhf"),
                                                                            ("control", "control"))}
    results = {
        "title": report_title(config, run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
        "models": models,
        "ppo": ppo,
        "diff": _diff_for_report(run_dir, state),
        "decompose": read_json(in_run(run_dir, state["decompose"]["file"])),
        "placebo": _placebo_for_report(config, run_dir, state),
        "reward_model": _reward_model_for_report(run_dir, state),
        "inspect_rm": _inspect_rm_for_report(run_dir, state),
        "divergence": {"rows": rows, "top_layers": analysed_layers(config, state), "rank": state["diff"]["rank"],
                       "by_parameters": state["divergence"]["top_layers"],
                       "spread": state["divergence"]["spread"]},
        "saes": sae_rows,
        "mmcs": mmcs_rows,
        "features": features,
        "new_features": new_features,
        "new_feature_counts": _new_feature_counts(config, mmcs_result, new_features),
        "utility": {k: v for k, v in read_json(in_run(run_dir, state["scores"]["utility"])).items() if k != "per_seed"},
        "headline": state["scores"]["headline"],
    }
    missing_or_extra = set(results) ^ {"title", "created", *RESULT_SECTIONS}
    assert not missing_or_extra, f"results.json sections differ from report.RESULT_SECTIONS: {missing_or_extra}"
    return results


def _inspect_rm_for_report(run_dir: Path, state: dict) -> dict | None:
    """The inspect_rm stage's inspect_rm.json (its folder's paths relative to the run), or None when it did not
    run."""
    path = (state.get("inspect_rm") or {}).get("record")
    if not path or not in_run(run_dir, path).is_file():
        return None
    record = read_json(in_run(run_dir, path))
    record["dir"] = str(Path(path).parent)
    return record


def _reward_model_for_report(run_dir: Path, state: dict) -> dict | None:
    """The run's own reward model (reward.spec = rm): its pairs' summary and its rm.json and its placebo's, without
    the split's pair indices and the loss curves; None when the run trained none."""
    if not (state.get("rm") or {}).get("dir"):
        return None

    def record(path: Path) -> dict | None:
        if not path.is_file():
            return None
        rm = read_json(path)
        rm["split"] = {k: v for k, v in (rm.get("split") or {}).items() if k not in ("train", "validation", "test")}
        rm["training"] = {k: v for k, v in (rm.get("training") or {}).items() if not k.endswith("losses")}
        return rm

    pairs = state["pairs"]
    rm_dir = in_run(run_dir, state["rm"]["record"]).parent
    return {"file": pairs["file"], "pairs": read_json(in_run(run_dir, pairs["summary"])) if pairs.get("summary") else {},
            "rm": record(rm_dir / "rm.json"), "placebo": record(rm_dir / "placebo" / "rm.json")}


def shown_model(outputs: dict, run_dir: Path) -> str | None:
    """A model as results.json names it: a folder the run saved, relative to the run (so results.json moves with it);
    a local folder the user gave, resolved (relative to the run when inside it), since the path as typed was
    relative to wherever the command ran; a hub id or preset name as given."""
    recorded = recorded_model(outputs)
    if recorded is None or outputs.get("dir"):
        return recorded
    return _model_name(recorded, run_dir)


def _model_name(spec: str, run_dir: Path) -> str:
    local = Path(spec).expanduser()
    return relative(run_dir, local) if local.exists() else spec


def report_title(config: RunConfig, run_dir: Path) -> str:
    """The report's title: the base model, and the tuned one when it was tuned elsewhere (model.tuned)."""
    base = config.model.base if config.model.base == "tiny" else _model_name(config.model.base, run_dir)
    if config.model.tuned:
        return f"rlhf-lens: {base} vs {_model_name(config.model.tuned, run_dir)}, tuned elsewhere"
    return f"rlhf-lens: {base} vs its RLHF-tuned copy"


def _diff_for_report(run_dir: Path, state: dict) -> dict:
    """diff.json as the report shows it (the per-token tensors stay in deltas.safetensors); models saved in the run
    named relative to it, as everywhere in results.json, so a moved run folder still describes itself."""
    return _read_diff(run_dir, state["diff"]["dir"])


def _read_diff(run_dir: Path, folder: str) -> dict:
    return read_json(in_run(run_dir, folder) / "diff.json")


def _placebo_for_report(config: RunConfig, run_dir: Path, state: dict) -> dict | None:
    """The placebo tunes beside the real tune; None when they did not run. `diff`, `utility_of_change`, `table`: the
    first seed's (as a run with one placebo had them); `seeds`: per seed its utility of the change and its KL to
    the base (PPO's final KL, the diff's mean per-token KL); `tuned_kl`: the real tune's; `comparison`: the real
    tune's signed utility of the change against the seeds' (`decompose.run.placebo_comparison`, at diff.level)."""
    from ..decompose.run import placebo_comparison

    dirs = state["diff"].get("placebo_dirs") or {}
    if not dirs:
        return None
    decompose = read_json(in_run(run_dir, state["decompose"]["file"]))
    utilities = {str(p["seed"]): p.get("utility_of_change") for p in decompose.get("placebo_seeds") or []}
    runs = {str(r["seed"]): r for r in state["placebo"].get("seeds") or []}
    seeds = []
    for seed, folder in dirs.items():
        diff = _read_diff(run_dir, folder)
        seeds.append({"seed": int(seed), "table": runs.get(seed, {}).get("table"),
                      "utility_of_change": utilities.get(seed),
                      "kl": {"ppo": _ppo_final_kl(in_run(run_dir, runs[seed]["ppo"])) if seed in runs else None,
                             "diff": ((diff.get("output") or {}).get("kl") or {}).get("mean")}})
    real = (decompose.get("utility_of_change") or {}).get("signed") or {}
    signed = [((s["utility_of_change"] or {}).get("signed") or {}).get("mean") for s in seeds]
    first = seeds[0]
    return {"diff": _read_diff(run_dir, dirs[str(first["seed"])]), "utility_of_change": first["utility_of_change"],
            "table": first["table"], "seeds": seeds,
            "tuned_kl": {"ppo": _ppo_final_kl(run_dir / "rlhf"),
                         "diff": ((_diff_for_report(run_dir, state).get("output") or {}).get("kl") or {}).get("mean")},
            "comparison": placebo_comparison(real.get("mean"), [v for v in signed if v is not None],
                                             config.diff.level)}


def _ppo_final_kl(ppo_dir: Path) -> float | None:
    """A PPO run's final KL to its reference (eval.json's final_kl), or None without one."""
    path = ppo_dir / "eval.json"
    return read_json(path).get("final_kl") if path.is_file() else None


def _new_feature_counts(config: RunConfig, mmcs_result: dict, explained: list[dict]) -> dict:
    """Per block: the threshold and its source, the tuned features below it, and the base seed-0 features below it
    against the other base seeds (the false-positive baseline: what seed noise alone calls new)."""
    per_block = []
    for block in mmcs_result["new_blocks"]:
        null = block["null"] or {}
        per_block.append({"layer": block["layer"], "threshold": block["threshold"],
                          "threshold_source": block["threshold_source"], "found": block["found"],
                          "tuned_n": block["tuned_n"], "baseline": null.get("below"), "baseline_n": null.get("n"),
                          "explained": sum(r["layer"] == block["layer"] for r in explained)})
    return {"seed": config.sae.seeds[0], "base_seeds": config.sae.seeds, "per_block": per_block}
