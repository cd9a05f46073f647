"""The whole pipeline, `rlhf-lens run`, end to end on the `tiny` preset (as CI runs it).

One uninterrupted run is shared by the artifact tests. A copy of it as it stood before its SAE
stage is killed during that stage (RLHF_LENS_INTERRUPT_AFTER) and resumed, and must end with the
same artifacts. Reruns and changed settings run on copies; bad input must fail before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_cli
from rlhf_lens.config import config_toml, load_config, preset_names, preset_text
from rlhf_lens.errors import INTERRUPT_ENV, UserError
from rlhf_lens.pipeline import STAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET = "tiny"
# The tiny preset as it ships; nothing shrunk, so the test runs exactly what CI promises.
RUN_ARGS = ("run", "--preset", PRESET)
MODELS = ("base", "tuned", "control")
# controls.placebo is off in the tiny preset: its stage prints one "placebo: off (...)" line, never its header; so do
# the pairs and rm stages of a run that does not train its reward model.
OFF = {"placebo": "off", "pairs": "off", "rm": "off", "inspect_rm": "off"}
# Keys whose values are wall-clock measurements: they differ between two equal runs.
TIMING_KEYS = {"tokens_per_s", "seconds", "train_seconds", "wall_seconds", "finished", "created"}


@dataclass
class Run:
    out: Path
    stdout: str
    stderr: str


def _run(out: Path, *extra: str, env: dict[str, str] | None = None):
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return run_cli(*RUN_ARGS, *extra, "--out", str(out))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _ok(result, what: str):
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _hashes(root: Path, under: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below `root` (optionally only below the given top-level entries)."""
    # the lock file holds the pid of the last run that held it: not a result
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".rlhf-lens.lock"]
    if under:
        files = [p for p in files if p.relative_to(root).parts[0] in under]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _portable(obj, run_dir: Path):
    """JSON content with the run folder replaced by <RUN> and timing values dropped."""
    if isinstance(obj, dict):
        return {k: _portable(v, run_dir) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_portable(v, run_dir) for v in obj]
    if isinstance(obj, str):
        return obj.replace(str(run_dir.resolve()), "<RUN>").replace(str(run_dir), "<RUN>")
    return obj


def _json(path: Path, run_dir: Path):
    return _portable(json.loads(path.read_text()), run_dir)


def _stage_lines(stderr: str) -> dict[str, str]:
    """stage -> "skipped" | "ran" | "off", from the pipeline's progress lines on stderr."""
    seen = {}
    for line in stderr.splitlines():
        line = line.strip()
        for stage in STAGES:
            if line == f"{stage}: done earlier, skipped":
                seen[stage] = "skipped"
            elif line == stage:
                seen[stage] = "ran"
            elif line.startswith(f"{stage}: off ("):
                seen[stage] = "off"
    return seen


def _sae_dirs(run_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (run_dir / "saes").rglob("cfg.json"))


def _top_layers(run_dir: Path) -> list[int]:
    return json.loads((run_dir / "stages" / "divergence.json").read_text())["outputs"]["top_layers"]


def _config(run_dir: Path) -> dict:
    return tomllib.loads((run_dir / "config.toml").read_text())


# --- the shared runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Run:
    """`rlhf-lens run --preset tiny`, uninterrupted."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    result = _ok(_run(out), "rlhf-lens run --preset tiny")
    return Run(out, result.stdout, result.stderr)


def _copy_run(src: Path, dst: Path, before: str | None = None) -> Path:
    """A copy of a finished run folder; with `before`, as it was when that stage was about to start.

    Stage records name their files relative to the run folder, so a copy reads and writes its own.
    """
    later = set(STAGES[STAGES.index(before):]) if before else set()
    outputs = {"saes": {"saes"}, "mmcs": {"mmcs.json"}, "decompose": {"decompose"}, "features": {"features"},
               "scores": {"utility.json"}, "inspect_rm": {"inspect_rm"},
               "report": {"results.json", "report.html", "summary.md"}}
    assert later <= set(outputs), "only stages from saes on can be dropped"

    def ignore(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == src:
            return {name for stage in later for name in outputs[stage]} & set(names)
        if Path(folder) == src / "stages":
            return {f"{stage}.json" for stage in later} & set(names)
        return set()

    shutil.copytree(src, dst, ignore=ignore)
    return dst


@dataclass
class Resumed:
    killed: object          # the interrupted process
    after_kill: dict        # file hashes right after the interrupt
    resumed: Run
    snapshot: dict          # content of the resumed run's artifacts


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_run) -> Resumed:
    """The tiny run from the SAE stage on, killed after the first (model, block) SAE group, then rerun.

    It starts from a copy of the uninterrupted run as it was before its SAE stage (same command, same
    seed, finished stages recorded), so its SAEs and everything after must equal that run's.
    """
    out = _copy_run(tiny_run.out, tmp_path_factory.mktemp("pipeline-resumed") / "run", before="saes")
    killed = _run(out, env={INTERRUPT_ENV: "saes:1"})
    after_kill = _hashes(out)
    result = _ok(_run(out), "the resumed run")
    resumed = Run(out, result.stdout, result.stderr)
    return Resumed(killed, after_kill, resumed, _artifacts(out))


def _artifacts(run_dir: Path) -> dict:
    """Everything the SAE stage and later wrote, as comparable values (paths made relative)."""
    content: dict = {}
    for sae in _sae_dirs(run_dir):
        rel = str(sae.relative_to(run_dir))
        content[f"{rel}/weights"] = {k: v.clone() for k, v in load_file(sae / "sae_weights.safetensors").items()}
        content[f"{rel}/cfg"] = _json(sae / "cfg.json", run_dir)
        content[f"{rel}/metrics"] = _json(sae / "metrics.json", run_dir)
    content["mmcs.json"] = _json(run_dir / "mmcs.json", run_dir)
    for path in sorted((run_dir / "features").glob("*.json")):
        content[f"features/{path.name}"] = _json(path, run_dir)
    content["utility.json"] = _json(run_dir / "utility.json", run_dir)
    results = _json(run_dir / "results.json", run_dir)
    content["headline"] = results["headline"]
    content["features"] = results["features"]
    return content


# --- artifacts of one run -------------------------------------------------------------------------


def test_run_writes_the_resolved_config_and_a_record_per_stage(tiny_run):
    out = tiny_run.out
    assert tiny_run.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    config = _config(out)
    preset = tomllib.loads(preset_text(PRESET))
    for section, values in preset.items():  # every preset value is in the resolved config, plus all defaults
        for key, value in values.items():
            if isinstance(value, dict):  # a nested section ([decompose.diffsae]): its keys, beside the defaults
                assert {k: config[section][key][k] for k in value} == value, (section, key)
            else:
                assert config[section][key] == value, (section, key)
    assert {"model", "tiny", "data", "reward", "rlhf", "divergence", "harvest", "sae", "interp", "controls"} <= set(config)
    assert _stage_lines(tiny_run.stderr) == {stage: "ran" for stage in STAGES} | OFF
    keys = set()
    for stage in STAGES:
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert record["stage"] == stage
        assert re.fullmatch(r"[0-9a-f]{16}", record["key"])
        assert record["seconds"] >= 0 and record["finished"]
        assert isinstance(record["outputs"], dict)
        keys.add(record["key"])
    assert len(keys) == len(STAGES)


def test_rlhf_and_divergence_artifacts(tiny_run):
    out = tiny_run.out
    config = _config(out)
    assert (out / "rlhf/model/config.json").is_file() and (out / "rlhf/model/model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "rlhf/log.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in log] == list(range(1, config["rlhf"]["steps"] + 1))
    evaluation = json.loads((out / "rlhf/eval.json").read_text())
    for name in ("base", "tuned"):
        assert {"mean", "se", "positive_frac"} <= set(evaluation[name])
    assert evaluation["n"] > 0 and evaluation["examples"]
    assert (out / "rlhf/ppo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = json.loads((out / "divergence.json").read_text())
    assert sorted(r["layer"] for r in rows) == list(range(config["tiny"]["layers"]))
    assert all(r["divergence"] > 0 for r in rows), "PPO moved no block"
    top = _top_layers(out)
    assert len(top) == config["divergence"]["top_n"]
    ranked = sorted(rows, key=lambda r: -r["divergence"])
    assert top == [r["layer"] for r in ranked[: len(top)]]
    assert (out / "divergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_activations_of_base_tuned_and_control_at_the_top_blocks(tiny_run):
    from rlhf_lens.store import ActivationStore

    out = tiny_run.out
    config = _config(out)
    stores = {m: ActivationStore(out / "acts" / m) for m in MODELS}
    for store in stores.values():
        assert sorted(store.layers) == sorted(_top_layers(out))
        assert store.d == config["tiny"]["width"]
        assert store.n_docs == config["harvest"]["max_docs"]
    # The same corpus rows for every model: only the activations differ.
    shards = {m: next(iter(s.iter_shards(_top_layers(out)[0]))) for m, s in stores.items()}
    assert torch.equal(shards["base"].token_ids, shards["tuned"].token_ids)
    assert not torch.equal(shards["base"].acts, shards["tuned"].acts)
    assert not torch.equal(shards["base"].acts, shards["control"].acts)


def test_saes_1x_and_2x_per_model_block_and_seed(tiny_run):
    out = tiny_run.out
    config = _config(out)
    width = config["tiny"]["width"]
    expected = {f"saes/{m}/layer{layer}/m{ratio * width}-s{seed}" for m in MODELS for layer in _top_layers(out)
                for ratio in config["sae"]["dict_ratios"] for seed in config["sae"]["seeds"]}
    assert {str(p.relative_to(out)) for p in _sae_dirs(out)} == expected
    for sae in _sae_dirs(out):
        size = int(re.search(r"/m(\d+)-s\d+$", str(sae)).group(1))
        weights = load_file(sae / "sae_weights.safetensors")
        assert {"W_enc", "b_enc", "W_dec", "b_dec"} <= set(weights)
        assert tuple(weights["W_dec"].shape) == (size, width)
        assert json.loads((sae / "cfg.json").read_text())
        metrics = json.loads((sae / "metrics.json").read_text())
        for key in ("mse", "fvu", "dead_fraction"):
            assert isinstance(metrics[key], (int, float)), (sae, key)


def test_mmcs_within_and_across_models(tiny_run):
    out = tiny_run.out
    config = _config(out)
    result = json.loads((out / "mmcs.json").read_text())
    layers, seeds = _top_layers(out), config["sae"]["seeds"]
    assert {(w["model"], w["layer"], w["seed"]) for w in result["within"]} == {
        (m, layer, s) for m in MODELS for layer in layers for s in seeds}
    assert {(a["model"], a["against"], a["layer"], a["seed"]) for a in result["across"]} == {
        (m, "base", layer, s) for m in ("tuned", "control") for layer in layers for s in seeds}
    for row in result["within"] + result["across"]:
        assert -1.0 <= row["mmcs"] <= 1.0
    for row in result["top"]:
        assert len(row["features"]) == config["interp"]["top_k"]
        cosines = [f["max_cosine"] for f in row["features"]]
        assert cosines == sorted(cosines, reverse=True)


def test_dictionaries_compared_by_mmcs_start_from_different_random_dictionaries(tiny_run):
    """MMCS must measure what training found, not a random start the two dictionaries share.

    Each SAE's initial dictionary is rebuilt from its saved config (initialisation is seeded). Two
    independent random dictionaries of this width score an MMCS far below 1.
    """
    from rlhf_lens.dictionaries import mmcs
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder

    out = tiny_run.out
    result = json.loads((out / "mmcs.json").read_text())
    saes = json.loads((out / "stages" / "saes.json").read_text())["outputs"]["saes"]

    def initial(model: str, layer: int, seed: int, size: int):
        row = next(s for s in saes if (s["model"], s["layer"], s["seed"], s["dict_size"]) == (model, layer, seed, size))
        cfg = json.loads((out / row["dir"] / "cfg.json").read_text())["rlhf_lens"]["config"]
        return SparseAutoencoder(SAEConfig.from_dict(cfg)).dictionary

    shared = []
    for w in result["within"]:
        at_init = mmcs(initial(w["model"], w["layer"], w["seed"], w["small"]),
                       initial(w["model"], w["layer"], w["seed"], w["large"]))
        if at_init > 0.9:
            shared.append(f"within {w['model']} layer {w['layer']} seed {w['seed']}: {at_init:.2f} before training")
    small = min(s["dict_size"] for s in saes)
    for a in result["across"]:
        at_init = mmcs(initial(a["model"], a["layer"], a["seed"], small), initial("base", a["layer"], a["seed"], small))
        if at_init > 0.9:
            shared.append(f"{a['model']} vs base layer {a['layer']} seed {a['seed']}: {at_init:.2f} before training")
    assert not shared, f"{len(shared)} MMCS pairs share their initial dictionary, e.g. {shared[0]}"


def test_features_are_explained_and_scored(tiny_run):
    out = tiny_run.out
    config = _config(out)
    top_k, seeds = config["interp"]["top_k"], config["sae"]["seeds"]
    for model in MODELS:
        records = json.loads((out / "features" / f"{model}.json").read_text())
        groups: dict = {}
        for r in records:
            assert r["model"] == model and r["explainer"] == "offline"
            assert isinstance(r["explanation"], str) and r["explanation"]
            assert -1.0 <= r["score"] <= 1.0
            assert r["examples"] and all(0 <= a <= 10 for e in r["examples"] for a in e["activations"])
            assert isinstance(r["utility"], float) and r["utility"] >= 0
            groups.setdefault((r["layer"], r["sae"]), []).append(r["feature"])
        assert set(groups) == {(layer, f"s{s}") for layer in _top_layers(out) for s in seeds}
        assert all(len(f) == top_k for f in groups.values())
    utility = json.loads((out / "utility.json").read_text())
    assert set(utility["total"]) == set(MODELS)
    assert {b["layer"] for b in utility["per_block"]} == set(_top_layers(out))
    # every score beside its null: the simulation score against other features' explanations, pooled per model
    first = f"s{seeds[0]}"
    for model in MODELS:
        summary = utility["scoring"]["models"][model]["simulation"]
        assert summary["n_features"] == top_k * len(_top_layers(out)) and summary["verdict"]
    # the reward effect of each shown feature (the first seed's): TokenChange's words read through the reward
    for model in MODELS:
        for r in json.loads((out / "features" / f"{model}.json").read_text()):
            if r["sae"] != first:
                assert "reward_effect" not in r
                continue
            effect, change = r["reward_effect"], r["token_change"]
            assert 0 <= effect["q"] <= 1 and effect["claim"] in (None, "raises", "lowers")
            assert change["norm"] > 0 and change["kl"] >= 0 and len(change["tokens"]) <= config["interp"]["output_top"]
            assert all(isinstance(t["utility"], float) for t in change["tokens"] + r["vocab_proj"]["tokens"])
    # and of the decomposition's explained latents (diff-SAE, shifted base-SAE latents), on the base model
    decompose = json.loads((out / "decompose" / "decompose.json").read_text())
    latents = [f for b in decompose["blocks"] for f in (b["diff_sae"].get("features") or [])
               + ((b.get("shift") or {}).get("features") or [])]
    assert latents and all("q" in f["reward_effect"] for f in latents)


def test_new_tuned_features_are_explained_apart_from_the_top_k(tiny_run):
    """The tuned model's most novel features (mmcs.json `new`, first seed) are explained and scored too,
    in their own records: the top-k records, which the headline is computed from, stay as they were."""
    from html import escape

    from rlhf_lens.interp import ExampleConfig, explain_features, get_explainer
    from rlhf_lens.models import load_tokenizer
    from rlhf_lens.rewards import load_utility_table
    from rlhf_lens.sae import SparseAutoencoder
    from rlhf_lens.store import ActivationStore

    out = tiny_run.out
    config = _config(out)
    top_k, first = config["interp"]["top_k"], f"s{config['sae']['seeds'][0]}"
    found = json.loads((out / "mmcs.json").read_text())["new"]
    assert found, "the tiny run found no new tuned feature; this test needs some"
    records = json.loads((out / "features" / "tuned-new.json").read_text())
    for layer in _top_layers(out):
        novel = sorted((r for r in found if r["layer"] == layer), key=lambda r: (r["max_cosine_to_base"], r["feature"]))
        assert [r["feature"] for r in records if r["layer"] == layer] == [r["feature"] for r in novel[:top_k]]
    thresholds = {b["layer"]: b["threshold"] for b in json.loads((out / "mmcs.json").read_text())["new_blocks"]}
    for r in records:
        assert r["new"] is True and r["model"] == "tuned" and r["sae"] == first
        assert r["max_cosine_to_base"] < thresholds[r["layer"]]
        assert isinstance(r["explanation"], str) and r["explanation"] and -1.0 <= r["score"] <= 1.0
        assert isinstance(r["utility"], float) and isinstance(r["sign_share"], float) and r["examples"]

    # The top-k records equal what explaining the top-k alone gives (one block is enough to check).
    tuned = json.loads((out / "features" / "tuned.json").read_text())
    assert not any("new" in r for r in tuned)
    layer = _top_layers(out)[0]
    tops = [t for t in json.loads((out / "mmcs.json").read_text())["top"] if t["model"] == "tuned" and t["layer"] == layer]
    alone = explain_features(
        ActivationStore(out / "acts" / "tuned"), layer,
        {f"s{t['seed']}": SparseAutoencoder.load(out / t["sae"]) for t in tops},
        {f"s{t['seed']}": [f["feature"] for f in t["features"]] for t in tops}, load_tokenizer(str(out / "rlhf" / "model")),
        get_explainer("offline"), ExampleConfig(seed=config["model"]["seed"]), model="tuned",
        max_cosine={f"s{t['seed']}": {f["feature"]: f["max_cosine"] for f in t["features"]} for t in tops},
        table=load_utility_table(config["reward"]["table"]), aggregate=config["reward"]["aggregate"])
    # (the reward effect is read in the stage, after explaining: the first seed's top-k apart from the new ones)
    effect_keys = ("vocab_proj", "token_change", "reward_effect")
    assert all(all(k in r for k in effect_keys) for r in tuned if r["sae"] == first)
    assert [{k: v for k, v in r.items() if k not in effect_keys} for r in tuned if r["layer"] == layer] == \
        json.loads(json.dumps(alone))

    # results.json, the report and summary.md show them with their explanations and scores.
    results = json.loads((out / "results.json").read_text())
    assert [(r["layer"], r["feature"], r["explanation"]) for r in results["new_features"]] == \
        [(r["layer"], r["feature"], r["explanation"]) for r in records]
    html = re.search(r'<section id="new-features">(.*?)</section>', (out / "report.html").read_text(), re.S).group(1)
    assert html.count('<div class="example">') >= len(records) and "rgba(255, 127, 14," in html
    for r in records:
        assert escape(r["explanation"]) in html
    summary = (out / "summary.md").read_text().split("## Features new in the tuned model")[1].split("\n## ")[0]
    rows = [line for line in summary.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(rows) == len(records)
    assert all(len(line.split(" | ")) == 7 for line in rows)  # block .. reward corr, every cell filled
    assert "Explanations with utility-table words" in summary


def test_new_features_are_judged_against_base_seed_noise(tiny_run):
    """The tiny preset leaves interp.new_feature_threshold at 0 (auto) with two SAE seeds: each block's threshold
    is the new_feature_quantile of base seed 0 vs seed 1, the tuned seed-0 features are compared with the same other
    base seeds as the null (leave-one-out), and mmcs.json, results.json, the report and summary.md carry the
    seed-noise baseline beside the tuned count."""
    from rlhf_lens.dictionaries import max_cosine_any, seed_null

    out = tiny_run.out
    config = _config(out)
    seeds, quantile = config["sae"]["seeds"], config["interp"]["new_feature_quantile"]
    assert config["interp"]["new_feature_threshold"] == 0 and len(seeds) > 1
    result = json.loads((out / "mmcs.json").read_text())
    width = min(config["sae"]["dict_ratios"]) * config["tiny"]["width"]
    blocks = {b["layer"]: b for b in result["new_blocks"]}
    assert sorted(blocks) == sorted(_top_layers(out))
    for layer, block in blocks.items():
        bases = [out / f"saes/base/layer{layer}/m{width}-s{s}" for s in seeds]
        null = seed_null(bases).double()
        assert block["threshold"] == pytest.approx(float(torch.quantile(null, quantile)))
        assert block["threshold_source"] == f"auto: {quantile:g} quantile of base seed {seeds[0]} vs seed {seeds[1]}"
        assert block["null"]["below"] == int((null < block["threshold"]).sum()) and block["null"]["n"] == width
        assert block["null"]["p05"] == pytest.approx(float(torch.quantile(null, 0.05)))
        tuned, _, _ = max_cosine_any(out / f"saes/tuned/layer{layer}/m{width}-s{seeds[0]}", bases[1:])
        rows = [r for r in result["new"] if r["layer"] == layer]
        assert block["found"] == len(rows) == int((tuned < block["threshold"]).sum()) and block["tuned_n"] == width
        assert all(r["match_seed"] in seeds and r["max_cosine_to_base"] < block["threshold"] for r in rows)

    counts = json.loads((out / "results.json").read_text())["new_feature_counts"]
    html = re.search(r'<section id="new-features">(.*?)</section>', (out / "report.html").read_text(), re.S).group(1)
    summary = (out / "summary.md").read_text().split("## Features new in the tuned model")[1].split("\n## ")[0]
    for row in counts["per_block"]:
        block = blocks[row["layer"]]
        assert (row["threshold"], row["found"], row["baseline"]) == (block["threshold"], block["found"],
                                                                    block["null"]["below"])
        cells = f"{row['found']} of {width} | {row['baseline']} of {width}"
        assert cells in summary and cells.replace(" | ", "</td><td class=num>") in html
    assert "seed noise" in html and "seed noise" in summary


def test_the_mmcs_key_holds_the_new_feature_settings():
    from rlhf_lens.pipeline import stage_config

    default = stage_config(load_config(preset=PRESET), "mmcs")
    for override in ("interp.new_feature_threshold=0.4", "interp.new_feature_quantile=0.1"):
        assert stage_config(load_config(preset=PRESET, overrides=[override]), "mmcs") != default, override


def test_results_headline_has_every_model_with_its_seed_spread(tiny_run):
    results = json.loads((tiny_run.out / "results.json").read_text())
    n_seeds = len(_config(tiny_run.out)["sae"]["seeds"])
    names = [row["name"] for row in results["headline"]]
    assert {"MMCS (within)", "simulation score", "utility score", "reward alignment"} <= set(names)
    for row in results["headline"]:
        assert row["n_seeds"] == n_seeds and row["verdict"]
        for model in MODELS:
            assert isinstance(row[model]["mean"], float) and isinstance(row[model]["std"], float), (row["name"], model)
            assert len(row[model]["values"]) == n_seeds
    assert results["models"]["control"]  # the random-init control is part of the run
    assert {s["model"] for s in results["saes"]} == set(MODELS)
    for row in results["saes"]:  # the report's SAE table: every metric filled from metrics.json
        for key in ("mse", "fvu", "l0", "dead_fraction"):
            assert isinstance(row[key], (int, float)), f"results.json saes[].{key} is {row[key]!r}"


def test_report_has_every_section_and_the_controls(tiny_run):
    from rlhf_lens.report import NOT_RUN, SECTIONS
    from rlhf_lens.report.format import shown_sections

    html = (tiny_run.out / "report.html").read_text()
    summary = (tiny_run.out / "summary.md").read_text()
    shown = shown_sections(json.loads((tiny_run.out / "results.json").read_text()))
    assert "reward-model" not in shown  # the tiny run's reward is VADER: no section about a reward model
    for sid, title in SECTIONS:
        if sid not in shown:
            assert f'<section id="{sid}">' not in html and f"## {title}" not in summary
            continue
        body = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
        assert body, sid
        if sid != "config":  # summary.md has every table but the config (docs/report.md)
            assert f"## {title}" in summary
        if sid != "new-features":  # the tiny run may find no new features; every other section has content
            assert NOT_RUN not in body.group(1), f"report section {sid} says {NOT_RUN}"
    assert "control" in re.search(r'<section id="headline">(.*?)</section>', html, re.S).group(1)
    # The PPO section shows the last step's reward from rlhf/log.jsonl, not a missing value.
    log = [json.loads(line) for line in (tiny_run.out / "rlhf/log.jsonl").read_text().splitlines() if line.strip()]
    assert f"{len(log)} PPO steps; last step: reward -," not in summary, \
        "report.py reads `reward_mean` from log.jsonl rows, rlhf.py writes `reward`"


# --- rerun, change, resume ----------------------------------------------------------------------


def test_rerunning_the_same_command_skips_every_stage_and_changes_nothing(tiny_run):
    before = _hashes(tiny_run.out)
    result = _ok(_run(tiny_run.out), "the rerun")
    assert _stage_lines(result.stderr) == {stage: "skipped" for stage in STAGES} | OFF
    assert _hashes(tiny_run.out) == before


def test_a_moved_run_folder_is_still_that_run(tiny_run, tmp_path, corpus_file):
    """Records hold paths relative to the run folder: moved, the same command skips every stage in the new place."""
    first = _copy_run(tiny_run.out, tmp_path / "first")
    moved = Path(shutil.move(first, tmp_path / "moved"))
    before = _hashes(moved)
    result = _ok(_run(moved), "the rerun in the moved folder")
    assert _stage_lines(result.stderr) == {stage: "skipped" for stage in STAGES} | OFF
    assert _hashes(moved) == before
    recorded = [*(moved / "stages").glob("*.json"), *(moved / "features").glob("*.json"),
                *(moved / name for name in ("mmcs.json", "utility.json", "results.json", "report.html", "summary.md"))]
    for path in recorded:
        text = path.read_text()
        for old in (tiny_run.out, tiny_run.out.resolve(), first):
            assert str(old) not in text, f"{path.relative_to(moved)} names {old}"
    results = json.loads((moved / "results.json").read_text())
    assert all((moved / results["models"][m]).is_dir() for m in MODELS), results["models"]
    # Still recognised as a run, and another run's settings are still refused there.
    assert_user_error(_run(moved, "--set", f"data.corpus={corpus_file}"), "another run", str(moved))
    assert _hashes(moved) == before


def test_a_killed_run_says_how_to_resume(resumed_run):
    killed = resumed_run.killed
    assert killed.returncode == 130
    assert "Traceback" not in killed.stderr, killed.stderr
    last = killed.stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "rerun" in last, f"last line on stderr: {last!r}"


def test_a_killed_run_keeps_what_it_finished(resumed_run):
    # Finished stages have their records; the interrupted one has a "running" record (so a rerun
    # under the same key resumes it instead of wiping it); nothing after it has one.
    recorded = {Path(p).stem for p in resumed_run.after_kill if p.startswith("stages/")}
    assert recorded == set(STAGES[: STAGES.index("saes") + 1])
    # Exactly the first (model, block) group of SAEs was finished when the run stopped.
    groups = {tuple(Path(p).parts[1:3]) for p in resumed_run.after_kill if p.endswith("sae_weights.safetensors")}
    assert len(groups) == 1
    assert not any(p in resumed_run.after_kill for p in ("mmcs.json", "results.json", "report.html"))


def test_the_resumed_run_skips_what_was_finished(resumed_run):
    lines = _stage_lines(resumed_run.resumed.stderr)
    saes = STAGES.index("saes")
    assert lines == {**{s: "skipped" for s in STAGES[:saes]}, **{s: "ran" for s in STAGES[saes:]}} | OFF


def test_the_resumed_run_equals_an_uninterrupted_one(resumed_run, tiny_run):
    mine, theirs = resumed_run.snapshot, _artifacts(tiny_run.out)
    assert set(mine) == set(theirs)
    for name, value in theirs.items():
        if name.endswith("/weights"):
            assert set(mine[name]) == set(value), name
            for tensor in value:
                assert torch.equal(mine[name][tensor], value[tensor]), f"{name}: {tensor} differs"
        else:
            assert mine[name] == value, f"{name} differs"


def test_changing_a_late_setting_reruns_only_what_depends_on_it(tiny_run, tmp_path):
    """interp.top_k: the features and everything after them run again; earlier stages and files stay."""
    out = _copy_run(tiny_run.out, tmp_path / "run")
    early = ("models", "rlhf", "acts", "saes", "divergence.json", "divergence.png")
    early_files = _hashes(out, early)
    early_records = {s: (out / "stages" / f"{s}.json").read_bytes() for s in STAGES[: STAGES.index("saes") + 1]}
    result = _ok(_run(out, "--set", "interp.top_k=3"), "the run with interp.top_k=3")
    lines = _stage_lines(result.stderr)
    assert all(lines[s] == OFF.get(s, "skipped") for s in early_records), lines
    assert all(lines[s] == "ran" for s in ("features", "scores", "report")), lines
    assert _hashes(out, early) == early_files
    assert {s: (out / "stages" / f"{s}.json").read_bytes() for s in early_records} == early_records
    assert _config(out)["interp"]["top_k"] == 3
    # the new features are capped by interp.top_k too, so they were explained again
    new = json.loads((out / "features" / "tuned-new.json").read_text())
    assert new and all(sum(r["layer"] == layer for r in new) <= 3 for layer in _top_layers(out))
    for model in MODELS:
        groups: dict = {}
        for r in json.loads((out / "features" / f"{model}.json").read_text()):
            groups.setdefault((r["layer"], r["sae"]), []).append(r["feature"])
        assert groups and all(len(f) == 3 for f in groups.values()), \
            f"{model}: {[len(f) for f in groups.values()]} features per SAE after interp.top_k=3"


def test_changing_a_middle_setting_reruns_that_stage_over_its_old_outputs(tiny_run, tmp_path):
    """harvest.max_docs: the stage runs again in the same folder (whose old store has other settings)."""
    out = _copy_run(tiny_run.out, tmp_path / "run")
    before = _hashes(out, ("models", "rlhf", "divergence.json"))
    max_docs = _config(out)["harvest"]["max_docs"] // 2
    result = _run(out, "--set", f"harvest.max_docs={max_docs}")
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
    lines = _stage_lines(result.stderr)
    harvest = STAGES.index("harvest")
    assert lines == {**{s: "skipped" for s in STAGES[:harvest]}, **{s: "ran" for s in STAGES[harvest:]}} | OFF
    assert _hashes(out, ("models", "rlhf", "divergence.json")) == before
    from rlhf_lens.store import ActivationStore

    for model in MODELS:
        assert ActivationStore(out / "acts" / model).n_docs == max_docs


def test_changing_a_diff_setting_reruns_the_diff_not_the_harvest_or_the_saes(tiny_run, tmp_path):
    """diff.alphas: with divergence.rank = "parameters" the diff picks no block, so the diff, what reads it (the
    reward effect of the decompose and features stages, at the diff's coherent strength; the scores of the features)
    and the report run again; the activations, SAEs and MMCS stay as they were."""
    out = _copy_run(tiny_run.out, tmp_path / "run")
    rerun = ("diff", "decompose", "features", "scores", "report")
    kept = tuple(s for s in STAGES if s not in rerun)
    kept_records = {s: (out / "stages" / f"{s}.json").read_bytes() for s in kept}
    kept_files = _hashes(out, ("models", "rlhf", "acts", "saes", "mmcs.json"))
    diff_before = json.loads((out / "diff" / "diff.json").read_text())
    assert _config(out)["divergence"]["rank"] == "parameters"
    result = _ok(_run(out, "--set", "diff.alphas=[0.0, 1.0, 3.0]"), "the run with diff.alphas=[0.0, 1.0, 3.0]")
    lines = _stage_lines(result.stderr)
    assert lines == {s: "ran" if s in rerun else "skipped" for s in STAGES} | OFF, lines
    assert {s: (out / "stages" / f"{s}.json").read_bytes() for s in kept} == kept_records
    assert _hashes(out, ("models", "rlhf", "acts", "saes", "mmcs.json")) == kept_files
    diff_after = json.loads((out / "diff" / "diff.json").read_text())
    assert diff_before["config"]["alphas"] != diff_after["config"]["alphas"] == [0.0, 1.0, 3.0]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["diff"]["alphas"] == [0.0, 1.0, 3.0]
    assert results["diff"]["config"]["alphas"] == [0.0, 1.0, 3.0]


def _changed_keys(*overrides: str, base: tuple[str, ...] = ()) -> set[str]:
    """The stages whose key a change of settings changes (the tiny preset, with `base` overrides on both sides)."""
    from rlhf_lens.pipeline import stage_keys

    before = stage_keys(load_config(preset=PRESET, overrides=list(base)))
    after = stage_keys(load_config(preset=PRESET, overrides=[*base, *overrides]))
    return {stage for stage in STAGES if before[stage] != after[stage]}


def test_a_stage_key_follows_the_stages_it_reads_not_every_stage_before_it():
    # inspect_rm is off in the tiny preset (no RM) and then reads nothing: no change reaches its key
    after = lambda stage: set(STAGES[STAGES.index(stage):]) - {"inspect_rm"}  # noqa: E731
    # the reward effect reads the diff (its coherent strength, null and prompts); without it only the report does
    assert _changed_keys("diff.alphas=[0.0, 1.0]") == {"diff", "decompose", "features", "scores", "report"}
    assert _changed_keys("diff.alphas=[0.0, 1.0]", base=("interp.reward_effect=false",)) == {"diff", "report"}
    assert _changed_keys("sae.lr=0.002") == after("saes")  # the diff (before it) is kept
    assert _changed_keys("harvest.max_docs=60") == after("harvest")
    assert _changed_keys("interp.top_k=3") == after("mmcs")
    assert _changed_keys("reward.aggregate=sum") == {"decompose", "features", "scores", "report"}
    assert _changed_keys("controls.random_init=false") == after("control")  # the control is analysed as the others
    # With divergence.rank = "causal" the diff picks the analysed blocks: what is computed at them follows it.
    at_the_blocks = after("diff") - {"control"}
    assert _changed_keys("divergence.rank=causal") == at_the_blocks
    assert _changed_keys("diff.alphas=[0.0, 1.0]", base=("divergence.rank=causal",)) == at_the_blocks


def test_every_stage_reads_only_stages_before_it_and_every_setting_reaches_a_key():
    import copy

    from rlhf_lens.config import config_keys
    from rlhf_lens.pipeline import STAGE_READS, stage_keys, stage_reads

    assert set(STAGE_READS) == set(STAGES)
    for rank in ("parameters", "causal"):
        config = load_config(preset=PRESET, overrides=[f"divergence.rank={rank}"])
        for stage in STAGES:
            assert all(STAGES.index(read) < STAGES.index(stage) for read in stage_reads(config, stage)), (rank, stage)
    # A setting in no stage's key would leave stale results on a rerun; the report reads (through the stages it
    # reads) every stage, so its key must change with any setting.
    # A setting that only matters behind a switch is checked with the switch on (controls.placebo_seeds: a run
    # with the placebo off keeps its keys, so turning seeds over there reruns nothing).
    # [preferences], [rm] and [inspect_rm] are read only by a run that trains its reward model (reward.spec = rm).
    behind = {"controls.placebo_seeds": ["controls.placebo=true"]}
    trains_rm = ["reward.spec=rm", "gold.spec=vader"]
    for key, _, _ in config_keys():
        switch = trains_rm if key.split(".")[0] in ("preferences", "rm", "inspect_rm") else behind.get(key, [])
        config = load_config(preset=PRESET, overrides=switch)
        report_key = stage_keys(config)["report"]
        *sections, name = key.split(".")  # nested sections too: decompose.diffsae.k
        changed = copy.deepcopy(config)
        holder = changed
        for section in sections:
            holder = getattr(holder, section)
        setattr(holder, name, "<changed>")
        assert stage_keys(changed)["report"] != report_key, key


# --- bad input: a clear error before any work ---------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (("run", "--preset", "no-such-preset"), ("unknown preset", "no-such-preset", "tiny")),
    ((*RUN_ARGS, "--set", "rlhf.nonexistent=1"), ("rlhf.nonexistent",)),
    ((*RUN_ARGS, "--set", "sae.epochs=abc"), ("sae.epochs", "integer")),
    ((*RUN_ARGS, "--set", "model.base=/no/such/dir"), ("/no/such/dir",)),
    ((*RUN_ARGS, "--set", "data.corpus=/no/such.txt"), ("/no/such.txt",)),
    ((*RUN_ARGS, "--set", "interp.new_feature_quantile=1.5"), ("interp.new_feature_quantile", "(0, 1)")),
    ((*RUN_ARGS, "--set", "interp.new_feature_threshold=-0.1"), ("interp.new_feature_threshold", "0: auto")),
    # every one of these used to fail only after PPO, harvest and SAEs had run, naming a CLI flag
    ((*RUN_ARGS, "--set", "interp.explainer=nope"), ("interp.explainer", "offline")),
    ((*RUN_ARGS, "--set", "reward.aggregate=median"), ("reward.aggregate", "mean")),
    ((*RUN_ARGS, "--set", "sae.dict_ratios=[0, 1]"), ("sae.dict_ratios",)),
    ((*RUN_ARGS, "--set", "sae.dict_ratios=[1]"), ("sae.dict_ratios", "two distinct")),
    ((*RUN_ARGS, "--set", "harvest.max_tokens=0"), ("harvest.max_tokens",)),
    ((*RUN_ARGS, "--set", "sae.arch=topk", "--set", "sae.k=0"), ("sae.k", "topk")),
    ((*RUN_ARGS, "--set", "rlhf.device=cuda"), ("rlhf.device", "model.device")),
    ((*RUN_ARGS, "--set", "rlhf.steps=0"), ("rlhf.steps",)),
    ((*RUN_ARGS, "--set", "rlhf.steps=-1"), ("rlhf.steps",)),
    ((*RUN_ARGS, "--set", "diff.split=train"), ("diff.split", "data.test_split")),
    ((*RUN_ARGS, "--set", "decompose.explain_top=-1"), ("decompose.explain_top",)),
    ((*RUN_ARGS, "--set", "controls.placebo=true", "--set", "reward.spec=sentiment"), ("controls.placebo",)),
    ((*RUN_ARGS, "--set", "model.dtype=float8"), ("model.dtype",)),
    ((*RUN_ARGS, "--set", "examples.n_top=0"), ("examples.n_top",)),
])
def test_bad_input_fails_before_any_work(tmp_path, args, fragments):
    out = tmp_path / "run"
    result = run_cli(*args, "--out", str(out))
    assert_user_error(result, *fragments)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"preset": PRESET, "overrides": ["nosection.key=1"]}, "nosection"),
    ({"preset": PRESET, "overrides": ["sae.epochs"]}, "section.key=value"),
    ({"preset": PRESET, "overrides": ["sae.seeds=[0, 'a']"]}, "sae.seeds"),
    ({"preset": PRESET, "overrides": ["controls.random_init=1"]}, "true or false"),
    ({"preset": PRESET, "config_file": "x.toml"}, "not both"),
    ({"config_file": "/no/such/config.toml"}, "/no/such/config.toml"),
])
def test_bad_config_values_are_one_line_errors(kwargs, fragment):
    with pytest.raises(UserError) as error:
        load_config(**kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_folder_holding_another_run_is_refused_untouched(tiny_run, corpus_file):
    before = _hashes(tiny_run.out)
    result = _run(tiny_run.out, "--set", f"data.corpus={corpus_file}")
    assert_user_error(result, "another run", str(tiny_run.out), str(corpus_file))
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert _hashes(tiny_run.out) == before


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert_user_error(run_cli(*RUN_ARGS, "--out", str(out)), "not an rlhf-lens run")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"


def test_a_bad_config_file_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sae]\nepochs = \n")
    assert_user_error(run_cli("run", "--config", str(path), "--out", str(tmp_path / "run")), str(path), "TOML")
    assert not (tmp_path / "run").exists()


# --- presets and --show-config ------------------------------------------------------------------


def test_presets_lists_every_preset_with_a_description():
    result = run_cli("presets", check=True)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(preset_names())
    assert {"demo", "tiny"} <= set(preset_names())
    for name, line in zip(preset_names(), lines):
        assert line.split()[0] == name
        assert len(line.split(maxsplit=1)[1]) > 20, line


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves_to_a_valid_config(name):
    """Each preset's keys exist (including [rlhf] against rlhf.PPOConfig) and its resolved TOML parses."""
    config = tomllib.loads(config_toml(load_config(preset=name)))

    def same(resolved: dict, shipped: dict, where: str) -> None:
        for key, value in shipped.items():
            if isinstance(value, dict):  # a section, or a nested one ([decompose.steer])
                same(resolved[key], value, f"{where}{key}.")
            else:
                assert resolved[key] == value, (name, f"{where}{key}")

    same(config, tomllib.loads(preset_text(name)), "")


def test_keys_lists_every_setting_with_its_docstring():
    from rlhf_lens.config import InterpConfig, field_docs
    from rlhf_lens.rlhf import PPOConfig

    shown = run_cli("run", "--keys", check=True).stdout
    assert f"rlhf.kl_penalty = \"kl\"\n    {field_docs(PPOConfig)['kl_penalty']}" in shown
    assert f"interp.new_feature_quantile = 0.05\n    {field_docs(InterpConfig)['new_feature_quantile']}" in shown
    listed = [line.split(" = ")[0] for line in shown.splitlines() if not line.startswith(" ")]
    assert len(listed) == len(set(listed)) and {"model.base", "sae.seeds", "controls.random_init"} <= set(listed)
    assert all(line.strip() for line in shown.splitlines())  # every key has a help line
    assert_user_error(run_cli("run", "--preset", "tiny"), "--out")


def test_show_config_applies_overrides_and_round_trips(tmp_path):
    args = ("--set", "interp.top_k=3", "--set", "sae.seeds=[4, 5]", "--set", "model.base=smollm2")
    shown = run_cli(*RUN_ARGS, *args, "--show-config", "--out", str(tmp_path / "run"), check=True).stdout
    config = tomllib.loads(shown)
    assert config["interp"]["top_k"] == 3 and config["sae"]["seeds"] == [4, 5] and config["model"]["base"] == "smollm2"
    path = tmp_path / "config.toml"
    path.write_text(shown)
    again = run_cli("run", "--config", str(path), "--show-config", "--out", str(tmp_path / "run"), check=True).stdout
    assert again == shown
    assert not (tmp_path / "run").exists()


def test_a_model_tuned_elsewhere_skips_ppo_but_gets_the_held_out_evaluation(tmp_path, tiny_model_dir, corpus_file):
    """Bring-your-own tuned model (docs/scale.md): rlhf.steps = 0 with model.tuned; the rlhf stage trains nothing
    and still writes eval.json for base and tuned on the same prompts; steps = 0 without model.tuned is refused."""
    from rlhf_lens.pipeline.stages import stage_rlhf

    config = load_config(overrides=[f"model.base={tiny_model_dir}", f"model.tuned={tiny_model_dir}",
                                    f"data.corpus={corpus_file}", "rlhf.steps=0", "rlhf.eval_prompts=8",
                                    "rlhf.batch_size=8", "rlhf.mini_batch_size=8"])
    outputs = stage_rlhf(config, tmp_path, {"base": {"spec": str(tiny_model_dir)}})
    assert outputs == {"spec": str(tiny_model_dir), "trained": False}
    evaluation = json.loads((tmp_path / "rlhf" / "eval.json").read_text())
    assert evaluation["tuned_by"] == "external" and evaluation["steps"] == 0 and evaluation["n"] == 8
    assert evaluation["base"] == evaluation["tuned"]  # the same model, prompts and random streams
    assert not (tmp_path / "rlhf" / "model").exists()
    with pytest.raises(UserError, match="model.tuned"):
        load_config(overrides=["rlhf.steps=0"])


def test_the_placebo_stage_tunes_against_the_same_words_with_shuffled_values(tmp_path, tiny_model_dir, corpus_file):
    """controls.placebo: PPO with the run's settings against the reward's table, values permuted over its words."""
    from rlhf_lens.pipeline.stages import stage_placebo
    from rlhf_lens.rewards import load_utility_table

    table = tmp_path / "four.csv"
    table.write_text("film,1\nmovie,2\nstory,-1\nplot,3\n")
    config = load_config(overrides=[f"model.base={tiny_model_dir}", f"data.corpus={corpus_file}",
                                    f"reward.spec=table:{table},scale=1", "controls.placebo=true", "rlhf.steps=1",
                                    "rlhf.batch_size=8", "rlhf.mini_batch_size=8", "rlhf.eval_prompts=4"])
    outputs = stage_placebo(config, tmp_path, {"base": {"spec": str(tiny_model_dir)}})
    shuffled = load_utility_table(str(tmp_path / outputs["table"]))
    assert set(shuffled) == {"film", "movie", "story", "plot"}
    assert sorted(shuffled.values()) == [-1, 1, 2, 3] and shuffled != load_utility_table(str(table))
    record = json.loads((tmp_path / "placebo" / "seed0" / "ppo" / "config.json").read_text())
    assert record["reward"].startswith("table:") and record["reward"].endswith(",scale=1")
    assert (tmp_path / outputs["dir"] / "config.json").is_file()
    assert stage_placebo(load_config(), tmp_path / "off", {}) == {"spec": None}
    with pytest.raises(UserError, match="controls.placebo"):
        load_config(overrides=["controls.placebo=true", "reward.spec=sentiment"])


def test_paper_presets_keep_the_papers_ppo_schedule_and_sae(tmp_path):
    """Defect 4: TRL 0.7's constant lr without warm-up in the paper presets (the [rlhf] defaults); demo and tiny ask
    for their linear decay explicitly. The paper's SAE: exactly 3 epochs, no held-out rows, b_dec at 0."""
    from rlhf_lens.rlhf import PPOConfig

    assert (PPOConfig().lr_schedule, PPOConfig().warmup_steps) == ("constant", 0)
    for name in preset_names():
        config = load_config(preset=name)
        if name.startswith("pythia"):
            assert (config.rlhf.lr_schedule, config.rlhf.warmup_steps) == ("constant", 0), name
            assert (config.sae.epochs, config.sae.holdout, config.sae.b_dec_init, config.sae.arch) == (3, 0, "zero", "tied")
            assert "not comparable with the paper's Table 3" in preset_text(name).splitlines()[0]
        else:
            assert config.rlhf.lr_schedule == "linear" and config.sae.epochs == 0, name


def test_the_run_harvests_in_the_models_dtype(tmp_path, tiny_model_dir, corpus_file):
    """Defect 5: the harvest of a run loads its models in model.dtype (it used float32 whatever the setting)."""
    from rlhf_lens.pipeline.stages import stage_harvest
    from rlhf_lens.store import ActivationStore

    config = load_config(overrides=[f"model.base={tiny_model_dir}", f"data.corpus={corpus_file}",
                                    "model.dtype=bfloat16", "harvest.max_docs=4", "harvest.max_tokens=16"])
    state = {"base": {"spec": str(tiny_model_dir)}, "rlhf": {"spec": str(tiny_model_dir), "trained": False},
             "placebo": {"spec": None}, "control": {"spec": None}, "divergence": {"top_layers": [1]}}
    outputs = stage_harvest(config, tmp_path, state)
    store = ActivationStore(tmp_path / outputs["stores"]["base"])
    assert store.manifest["model_dtype"] == "bfloat16" and store.n_docs == 4


# --- what a run prints, and what it checks before it skips ------------------------------------------------


def test_a_stage_that_is_off_prints_one_off_line_not_its_header(tiny_run):
    lines = [line.strip() for line in tiny_run.stderr.splitlines()]
    assert "placebo: off (controls.placebo = false)" in lines and "placebo" not in lines
    assert "control" in lines  # controls.random_init is on in the tiny preset: that stage has its header


def test_a_damaged_store_in_a_finished_run_is_redone_by_the_run_command(tiny_run, tmp_path):
    """A shard corrupted and a manifest lost after the run finished (in a copy: its stores name the first run's
    models): `rlhf-lens run`, which skips a finished harvest, checks its stores first, says what it found, and
    redoes the harvest in place with the same bytes, so every later stage stays skipped."""
    out = _copy_run(tiny_run.out, tmp_path / "run")
    before = _hashes(out)
    shard = out / "acts" / "base" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"x" * 32
    shard.write_bytes(bytes(data))
    (out / "acts" / "tuned" / "manifest.json").unlink()

    # with progress on, as a user's log has it (stderr is a pipe here, not a terminal)
    result = _ok(_run(out, env={"RLHF_LENS_QUIET": "0", "RLHF_LENS_PROGRESS_EVERY": "0.2"}), "the run over damaged stores")
    assert f"harvest: {shard}: corrupt or truncated" in result.stderr, result.stderr
    assert "redoing the harvest stage" in result.stderr
    assert re.search(r"^harvest: redoing 1 damaged shard: (\d+)/\1, done in", result.stderr, re.M), result.stderr
    assert re.search(r"^harvest layers [\d,]+: (\d+)/\1, done in", result.stderr, re.M), result.stderr
    assert "Loading weights" not in result.stderr
    assert _stage_lines(result.stderr) == {s: "ran" if s == "harvest" else "skipped" for s in STAGES} | OFF
    after = _hashes(out)
    assert set(after) == set(before)
    changed = {path for path in before if after[path] != before[path]}
    # the harvest's record (its time) and the stores' manifests, which now name this run's models (the harvest ran
    # for every model; on an intact store it only checks it); the shards: the same bytes
    assert changed == {"stages/harvest.json", *(f"acts/{m}/manifest.json" for m in MODELS)}, changed
    for name, model in (("base", "models/base"), ("tuned", "rlhf/model"), ("control", "models/control")):
        manifest = json.loads((out / "acts" / name / "manifest.json").read_text())
        assert manifest["model"] == str((out / model).resolve()) and manifest["complete"], manifest
    # repaired: the next run skips everything
    assert _stage_lines(_ok(_run(out), "the rerun").stderr) == {s: "skipped" for s in STAGES} | OFF
