"""The whole method in one resumable run.

Stages, each recorded in `RUN_DIR/stages/<stage>.json` with a key that hashes its
config and the keys of the stages it reads from:

    base -> rlhf -> placebo -> divergence -> diff -> control -> harvest -> saes -> mmcs -> decompose
         -> features -> scores -> report

Rerunning the same command skips finished stages (whose key still matches) and resumes
the unfinished one (PPO, harvest and SAE training checkpoint themselves); changing a
stage's config changes its key, so it and every stage after it run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import CONFIG_FILE, RunConfig, config_from_dict, config_toml, validate
from ..errors import INTERRUPT_ENV, UserError, interrupt_point  # noqa: F401  (INTERRUPT_ENV: for tests)
from ..io import (
    LOCK_FILE,
    MARKER,
    check_writable,
    read_json,
    read_toml,
    remove_output,
    run_lock,
    write_json,
    write_text,
)
from ..progress import console

if TYPE_CHECKING:
    from ..executors import Executor

_EXECUTOR = "_executor"  # state[_EXECUTOR]: the run's executor (not a stage; stages read it with `_executor`)
STAGES = ("base", "rlhf", "placebo", "divergence", "diff", "control", "harvest", "saes", "mmcs", "decompose", "features", "scores", "report")
# Test hook: `stage:n` raises KeyboardInterrupt after n units of that stage finished (a killed run).


# --- the run ----------------------------------------------------------------------------------


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rel(run_dir: Path, path: str | os.PathLike) -> str:
    """How a path is recorded: relative to the run folder when inside it, so a moved or copied folder
    still finds its files (read back with `_abs`); a path outside it is recorded absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _abs(run_dir: Path, recorded: str) -> Path:
    """A recorded path in the run folder as it is now (absolute ones, as older runs recorded, stay as they are)."""
    return run_dir / recorded


def _model(outputs: dict, run_dir: Path | None = None) -> str | None:
    """The model a stage recorded: a folder it saved in the run (`dir`, resolved against `run_dir` when given)
    or the spec the user gave (`spec`: a hub id or path, kept as given)."""
    if outputs.get("dir"):
        return str(_abs(run_dir, outputs["dir"])) if run_dir is not None else outputs["dir"]
    return outputs.get("spec")


class Ledger:
    """Which stages finished, under which key, with what outputs."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir / "stages"

    def record(self, stage: str) -> dict | None:
        path = self.dir / f"{stage}.json"
        return read_json(path) if path.is_file() else None

    def done(self, stage: str, key: str) -> dict | None:
        record = self.record(stage)
        if record and record.get("key") == key and record.get("status") == "finished":
            return record["outputs"]
        return None

    def start(self, stage: str, key: str) -> bool:
        """Mark `stage` running under `key`; True if this resumes an unfinished run of the same key."""
        record = self.record(stage)
        resuming = bool(record) and record.get("key") == key
        write_json(self.dir / f"{stage}.json", {"stage": stage, "key": key, "status": "running"})
        return resuming

    def finish(self, stage: str, key: str, outputs: dict, seconds: float) -> None:
        write_json(self.dir / f"{stage}.json", {"stage": stage, "key": key, "status": "finished",
                                                 "seconds": round(seconds, 2),
                                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "outputs": outputs})


def _identity(config: RunConfig) -> dict:
    """What makes a run this run: another value here is another run, not a changed stage."""
    return {"base": config.model.base, "tuned": config.model.tuned, "corpus": config.data.corpus,
            "reward": config.reward.spec}


def check_inputs(config: RunConfig) -> None:
    """Every setting, the corpus, the models and the reward, before anything is written."""
    from ..data import load_corpus
    from ..models import SMOLLM2, load_tokenizer
    from ..rewards import load_reward, load_utility_table

    validate(config)
    corpus = load_corpus(config.data.corpus, text_column=config.data.text_column)
    corpus.documents(config.data.test_split)
    if corpus.held_out:
        console.print(f"[yellow]{config.data.corpus} has one split: PPO prompts come from a seeded 80% of it, "
                      f"the held-out evaluation and the harvest from the other 20%[/yellow]")
    for spec in (config.model.base, config.model.tuned):
        if spec and spec != "tiny":
            if spec == SMOLLM2:
                from ..models import smollm2_path

                smollm2_path()
            else:
                load_tokenizer(spec)
    if not config.model.tuned:
        load_reward(config.reward.spec)
    load_utility_table(config.reward.table)


def check_run_dir(config: RunConfig, run_dir: Path) -> None:
    """The folder is new, empty, or holds this same run (its config.toml names the same models, corpus and
    reward); anything else is refused, untouched."""
    existing = run_dir / CONFIG_FILE
    if existing.is_file():
        try:
            old_identity = _identity(config_from_dict(read_toml(existing, "run config")))
        except UserError:
            raise UserError(f"{existing} is not a readable rlhf-lens config; use another --out") from None
        if old_identity != _identity(config):
            diff = ", ".join(f"{k}: {old_identity[k]!r} -> {v!r}" for k, v in _identity(config).items()
                             if old_identity[k] != v)
            raise UserError(f"{run_dir} holds another run ({diff}); use another --out or delete that folder")
    elif run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise UserError(f"{run_dir} is not a folder this tool can own (a file or a link); use another --out")
    elif run_dir.exists() and any(p.name not in (LOCK_FILE, MARKER) for p in run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not an rlhf-lens run folder; use another --out")


def run(config: RunConfig, run_dir: str | os.PathLike, executor: str | Executor = "local",
        ray_address: str | None = None) -> Path:
    """Run (or resume) every stage; returns the report's path.

    Nothing is written before the inputs and the folder pass their checks; then the folder is locked for the
    whole run (a second run on it stops at once, naming this one's pid) and checked again under the lock.
    `executor` ("local", "ray", or an `executors.Executor`) runs the independent jobs of the harvest, SAE and
    features stages (`executors.py`); it changes where they run, not what they write, so it is no part of any
    stage key. `ray_address` joins an existing Ray cluster instead of starting one.
    """
    from ..executors import Executor, make_executor

    run_dir = Path(run_dir)
    owned = not isinstance(executor, Executor)
    jobs = make_executor(executor, ray_address) if owned else executor  # a bad name or missing Ray: before any work
    try:
        check_inputs(config)
        check_run_dir(config, run_dir)
        check_writable(run_dir, "run folder")
        with run_lock(run_dir):
            return _run_locked(config, run_dir, jobs)
    finally:
        if owned:
            jobs.close()


def _run_locked(config: RunConfig, run_dir: Path, executor: Executor) -> Path:
    check_run_dir(config, run_dir)  # again: another process may have claimed it before the lock
    write_text(run_dir / CONFIG_FILE, config_toml(config))
    ledger = Ledger(run_dir)
    state: dict = {_EXECUTOR: executor}
    key = ""
    for stage in STAGES:
        fn = _STAGE_FUNCTIONS[stage]
        key = _key(stage, _stage_config(config, stage), key)
        outputs = ledger.done(stage, key)
        if outputs is not None:
            console.print(f"[dim]{stage}: done earlier, skipped[/dim]")
        else:
            if not ledger.start(stage, key):
                # New settings (or a first run): outputs left by other settings would be refused
                # or, worse, reused by the stage's own resume logic.
                _remove_outputs(run_dir, stage)
            console.print(f"[bold]{stage}[/bold]")
            start = time.perf_counter()
            outputs = fn(config, run_dir, state)
            ledger.finish(stage, key, outputs, time.perf_counter() - start)
        state[stage] = outputs
    return run_dir / "report.html"


# What each stage writes, relative to the run folder.
STAGE_OUTPUTS = {
    "base": ["models/base"], "rlhf": ["rlhf"], "placebo": ["placebo"], "divergence": ["divergence.json", "divergence.png"], "diff": ["diff"],
    "control": ["models/control"], "harvest": ["acts"], "saes": ["saes"], "mmcs": ["mmcs.json"], "decompose": ["decompose"],
    "features": ["features"], "scores": ["utility.json"], "report": ["results.json", "report.html", "summary.md"],
}


def _remove_outputs(run_dir: Path, stage: str) -> None:
    """A stage's own outputs, before it runs under new settings (a symlink among them is refused, not followed)."""
    for rel in STAGE_OUTPUTS[stage]:
        remove_output(run_dir / rel)


def _stage_config(config: RunConfig, stage: str) -> dict:
    c = config.to_dict()
    return {
        "base": [c["model"], c["tiny"], c["data"]],
        "rlhf": [c["rlhf"], c["reward"]["spec"]],
        "divergence": [c["divergence"]["top_n"]],
        "diff": [c["diff"], c["divergence"], c["reward"]["spec"], c["data"]["test_split"]],
        "placebo": [c["controls"]["placebo"], c["rlhf"], c["reward"]["spec"]],
        "control": [c["controls"]["random_init"]],
        "harvest": [c["harvest"], c["data"]["test_split"]],
        "saes": [c["sae"]],
        "mmcs": [c["interp"]["new_feature_threshold"], c["interp"]["new_feature_quantile"], c["interp"]["top_k"]],
        "decompose": [c["decompose"], c["interp"], c["examples"], c["reward"], c["data"]["test_split"]],
        # reward.table/aggregate: the feature records (new features' included) carry utility fields
        "features": [c["interp"], c["reward"]["table"], c["reward"]["aggregate"]],
        "scores": [c["reward"]["table"], c["reward"]["aggregate"]],
        "report": [],
    }[stage]


# --- stages -----------------------------------------------------------------------------------
# Each takes (config, run_dir, state) and returns its outputs (JSON-able), which later stages
# read from `state[stage]`.


def _stage_base(config: RunConfig, run_dir: Path, state: dict) -> dict:
    if config.model.base != "tiny":
        return {"spec": config.model.base}
    from ..data import load_corpus
    from ..models import build_tiny_model, save_model

    texts = load_corpus(config.data.corpus, text_column=config.data.text_column).texts("train")
    model, tokenizer = build_tiny_model(texts, config.tiny)
    return {"dir": _rel(run_dir, save_model(model, tokenizer, run_dir / "models" / "base"))}


def _stage_rlhf(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..rlhf import evaluate_models, train_ppo

    out = run_dir / "rlhf"
    # [model] device/dtype and [data] text_column apply to every stage, PPO included.
    ppo = dataclasses.replace(config.rlhf, device=config.model.device, dtype=config.model.dtype,
                              text_column=config.data.text_column)
    if config.model.tuned:
        # A model tuned elsewhere: no PPO, but the same held-out evaluation of both models.
        evaluate_models(_model(state["base"], run_dir), config.model.tuned, config.reward.spec, config.data.corpus,
                        out, ppo)
        return {"spec": config.model.tuned, "trained": False}
    model_dir = train_ppo(_model(state["base"], run_dir), config.reward.spec, config.data.corpus, out, ppo)
    return {"dir": _rel(run_dir, model_dir), "trained": True}


def _stage_placebo(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """The placebo tune (controls.placebo): the same PPO against the reward's table with its values shuffled over
    its words, so "would any PPO run of this size change this much?" has an answer."""
    if not config.controls.placebo:
        return {"spec": None}
    from ..diff.placebo import shuffled_table, write_table
    from ..rewards import load_utility_table, parse_spec
    from ..rlhf import train_ppo

    kind, arg, options = parse_spec(config.reward.spec)
    table = shuffled_table(load_utility_table("vader" if kind == "vader" else arg), seed=config.model.seed)
    path = write_table(table, run_dir / "placebo" / "table.tsv")
    spec = ",".join([f"table:{path.resolve()}", *(f"{k}={v}" for k, v in sorted(options.items()))])
    ppo = dataclasses.replace(config.rlhf, device=config.model.device, dtype=config.model.dtype,
                              text_column=config.data.text_column)
    model_dir = train_ppo(_model(state["base"], run_dir), spec, config.data.corpus, run_dir / "placebo" / "ppo", ppo)
    return {"dir": _rel(run_dir, model_dir), "table": _rel(run_dir, path)}


def _stage_divergence(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..divergence import divergence_from_specs, divergence_spread, plot_divergence, top_layers

    rows = divergence_from_specs(_model(state["base"], run_dir), _model(state["rlhf"], run_dir),
                                 dtype=config.model.dtype)
    top = top_layers(rows, config.divergence.top_n)
    write_json(run_dir / "divergence.json", rows)
    plot_divergence(rows, run_dir / "divergence.png", top_n=config.divergence.top_n)
    return {"top_layers": top, "spread": divergence_spread(rows)}


def _stage_diff(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Base and tuned on the same tokens (docs/diff.md); with divergence.rank = causal it picks the analysed blocks."""
    from ..diff.ranking import top_blocks

    by_parameters = state["divergence"]["top_layers"]
    result = _diff_in_run(config, run_dir, run_dir / "diff", _model(state["base"], run_dir),
                          _model(state["rlhf"], run_dir), by_parameters)
    chosen = by_parameters if config.divergence.rank == "parameters" else top_blocks(result, config.divergence.top_n)
    outputs = {"dir": _rel(run_dir, run_dir / "diff"), "top_layers": chosen, "rank": config.divergence.rank}
    placebo = _model(state["placebo"], run_dir)
    if placebo:  # the same measures for the placebo tune, beside the real one's
        _diff_in_run(config, run_dir, run_dir / "diff" / "placebo", _model(state["base"], run_dir), placebo,
                     by_parameters)
        outputs["placebo_dir"] = _rel(run_dir, run_dir / "diff" / "placebo")
    return outputs


def _layers(state: dict) -> list[int]:
    """The analysed blocks: by parameter divergence, or by the diff stage's causal ranking (divergence.rank)."""
    return state["diff"]["top_layers"]


def _stage_control(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """A randomly initialised model of the base architecture: what SAEs find without any training."""
    if not config.controls.random_init:
        return {"spec": None}
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import load_model, save_model

    base, tokenizer = load_model(_model(state["base"], run_dir), dtype=config.model.dtype)
    torch.manual_seed(config.model.seed + 1)
    model = AutoModelForCausalLM.from_config(base.config)
    return {"dir": _rel(run_dir, save_model(model, tokenizer, run_dir / "models" / "control"))}


def _analysed_models(state: dict, run_dir: Path | None = None) -> dict[str, str]:
    """Model name -> spec (see `_model`: folders of the run resolved against `run_dir` when given, else as recorded)."""
    models = {"base": _model(state["base"], run_dir), "tuned": _model(state["rlhf"], run_dir)}
    control = _model(state["control"], run_dir)
    if control:
        models["control"] = control
    placebo = _model(state["placebo"], run_dir)
    if placebo:
        models["placebo"] = placebo
    return models


def _stage_harvest(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..harvest import HarvestConfig

    stores, jobs = {}, []
    # Jobs get absolute paths: a Ray worker on another node does not share the driver's working directory.
    for name, spec in _analysed_models(state, run_dir.absolute()).items():
        hc = HarvestConfig(
            **dataclasses.asdict(config.harvest), layers=_layers(state),
            corpus=config.data.corpus, split=config.data.test_split, device=config.model.device,
            text_column=config.data.text_column, model_dtype=config.model.dtype,
        )
        out = run_dir / "acts" / name
        jobs.append((spec, hc, str(out.absolute())))
        stores[name] = _rel(run_dir, out)
    _executor(state).map(_harvest_job, jobs, resources=_resources(config, gpu=True))
    return {"stores": stores}


def _harvest_job(job: tuple) -> None:
    """One model's activations: (model spec, HarvestConfig, store folder)."""
    from ..harvest import harvest

    spec, hc, out = job
    harvest(spec, hc, Path(out))


def _sae_dir(run_dir: Path, model: str, layer: int, size: int, seed: int) -> Path:
    return run_dir / "saes" / model / f"layer{layer}" / f"m{size}-s{seed}"


def _init_seed(seed: int, model: str, layer: int, size: int) -> int:
    return int(_key("sae-init", seed, model, layer, size)[:8], 16)


def _stage_saes(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..sae import SAEConfig, SAETraining
    from ..store import ActivationStore

    saes, jobs = [], []
    for name, store_dir in state["harvest"]["stores"].items():
        store = ActivationStore(_abs(run_dir, store_dir))
        for layer in _layers(state):
            configs, dirs = [], []
            for ratio in config.sae.dict_ratios:
                for seed in config.sae.seeds:
                    size = ratio * store.d
                    # Every dictionary starts from its own random init: with one init seed for all,
                    # the 2x dictionary's first rows (and base vs tuned) would start identical and
                    # MMCS would partly measure the shared start. Batches follow `seed` alone.
                    configs.append(SAEConfig(
                        **{f.name: getattr(config.sae, f.name) for f in dataclasses.fields(SAETraining)
                           if f.name != "device"},
                        d_in=store.d, dict_size=size, seed=_init_seed(seed, name, layer, size), data_seed=seed,
                        device=config.model.device,
                    ))
                    dirs.append(_sae_dir(run_dir, name, layer, size, seed))
                    saes.append({"model": name, "layer": layer, "dict_size": size, "ratio": ratio, "seed": seed,
                                 "dir": _rel(run_dir, dirs[-1])})
            # One job per (model, block): its SAEs share every pass over that block's activations.
            jobs.append((str(_abs(run_dir, store_dir).absolute()), layer, configs, [str(d.absolute()) for d in dirs],
                         len(jobs) + 1))
    _executor(state).map(_sae_job, jobs, resources=_resources(config, gpu=True))
    return {"saes": saes}


def _sae_job(job: tuple) -> None:
    """Every (ratio, seed) SAE of one model and block: (store folder, layer, SAEConfigs, SAE folders, unit number)."""
    from ..sae import train_saes
    from ..store import ActivationStore

    store_dir, layer, configs, dirs, unit = job
    train_saes(ActivationStore(Path(store_dir)).source(layer), configs, [Path(d) for d in dirs])
    interrupt_point("saes", unit)


def _small_and_large(state: dict, model: str, layer: int, seed: int) -> tuple[dict, dict]:
    rows = [s for s in state["saes"]["saes"] if s["model"] == model and s["layer"] == layer and s["seed"] == seed]
    rows.sort(key=lambda s: s["dict_size"])
    return rows[0], rows[-1]


def _stage_mmcs(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..dictionaries import mmcs, new_in_block, top_features
    from ..sae import SparseAutoencoder

    models = list(state["harvest"]["stores"])
    layers = _layers(state)
    dictionaries: dict[str, object] = {}

    def dictionary(row: dict):
        if row["dir"] not in dictionaries:
            dictionaries[row["dir"]] = SparseAutoencoder.load(_abs(run_dir, row["dir"])).dictionary.detach()
        return dictionaries[row["dir"]]

    within, across, top, new, new_blocks = [], [], [], [], []
    for model in models:
        for layer in layers:
            for seed in config.sae.seeds:
                small, large = _small_and_large(state, model, layer, seed)
                within.append({"model": model, "layer": layer, "seed": seed, "small": small["dict_size"],
                               "large": large["dict_size"], "mmcs": mmcs(dictionary(small), dictionary(large))})
                top.append({"model": model, "layer": layer, "seed": seed, "sae": small["dir"],
                            "features": top_features(dictionary(small), dictionary(large), config.interp.top_k)})
    for other in (m for m in models if m != "base"):
        for layer in layers:
            for seed in config.sae.seeds:
                mine, _ = _small_and_large(state, other, layer, seed)
                base, _ = _small_and_large(state, "base", layer, seed)
                across.append({"model": other, "against": "base", "layer": layer, "seed": seed,
                               "mmcs": mmcs(dictionary(mine), dictionary(base))})
    for layer in layers:
        seed = config.sae.seeds[0]
        tuned = dictionary(_small_and_large(state, "tuned", layer, seed)[0])
        bases = {s: dictionary(_small_and_large(state, "base", layer, s)[0]) for s in config.sae.seeds}
        rows, block = new_in_block(tuned, bases, seed, config.interp.new_feature_threshold,
                                   config.interp.new_feature_quantile)
        new += [{"layer": layer, **row} for row in rows]
        new_blocks.append({"layer": layer, **block, "tuned_seed": seed})
    result = {"within": within, "across": across, "top": top, "new": new, "new_blocks": new_blocks}
    write_json(run_dir / "mmcs.json", result)
    return {"file": _rel(run_dir, run_dir / "mmcs.json")}


def _stage_decompose(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """What tuning changed, feature by feature (docs/diff.md): per analysed block a diff-SAE on the tuned - base
    MLP outputs of the same tokens (top latents by share of |Δ|², explained, scored, steered against random
    directions), the shift of the base SAE's latents between the two models, and optionally a crosscoder."""
    from ..data import load_corpus
    from ..diff.steering import heldout_prompts
    from ..models import load_model
    from ..rewards import load_reward, load_utility_table
    from ..store import ActivationStore

    dc = config.decompose
    stores = {name: ActivationStore(_abs(run_dir, path)) for name, path in state["harvest"]["stores"].items()}
    mmcs_result = read_json(_abs(run_dir, state["mmcs"]["file"]))
    explainer = _explainer(config.interp.explainer, config.interp.base_url, config.interp.llm_model,
                           config.model.device)
    table = load_utility_table(config.reward.table)
    reward = load_reward(config.reward.spec, device=config.model.device)
    base, tokenizer = load_model(_model(state["base"], run_dir), device=config.model.device, dtype=config.model.dtype)
    corpus = load_corpus(config.data.corpus, text_column=config.data.text_column)
    prompts = heldout_prompts(corpus, tokenizer, config.diff.prompts, config.data.test_split, [], dc.seed)
    out = run_dir / "decompose"
    results = {}
    for name in [m for m in ("tuned", "placebo") if m in stores]:
        results[name] = _decompose_model(config, run_dir, state, stores, name, out if name == "tuned" else
                                         out / name, mmcs_result, explainer, table, reward, base, tokenizer, prompts)
    write_json(out / "decompose.json", {**results["tuned"], "placebo": results.get("placebo")})
    return {"file": _rel(run_dir, out / "decompose.json"), "utility_of_change": results["tuned"]["utility_of_change"]}


def _decompose_model(config: RunConfig, run_dir: Path, state: dict, stores: dict, name: str, out: Path,
                     mmcs_result: dict, explainer, table: dict, reward, base, tokenizer, prompts) -> dict:
    """The decompose stage's measures for one tuned model (`name`: tuned, or the placebo tune) against the base."""
    from ..decompose.crosscoder import crosscoder_analysis
    from ..decompose.diffsae import diff_sae, steer_top_latents
    from ..decompose.paired_store import delta_store
    from ..decompose.shift import count_among, shared_dictionary_shift
    from ..interp import explain_features
    from ..sae import SparseAutoencoder

    dc = config.decompose
    seed = config.sae.seeds[0]
    blocks = []
    for layer in _layers(state):
        folder = out / f"layer{layer}"
        delta = delta_store(stores["base"], stores[name], layer, folder / "delta")
        result, saes = diff_sae(delta, layer, dc, out_dir=folder / "diffsae")
        result["steering"] = steer_top_latents(result, saes, base, tokenizer, reward, prompts, dc,
                                               new_tokens=config.diff.new_tokens)
        # Each seed's top latents explained, so the utility of the change comes with a seed spread.
        wanted = {f"s{s.cfg.seed}": [t["latent"] for t in entry["top"][:dc.explain_top]]
                  for s, entry in zip(saes, result["saes"])}
        records = explain_features(delta, layer, {f"s{s.cfg.seed}": s for s in saes}, wanted, tokenizer, explainer,
                                   config.examples, model="diff-sae", table=table, aggregate=config.reward.aggregate)
        result["features"] = [_shown(r) for r in records]
        small, _ = _small_and_large(state, "base", layer, seed)
        sae = SparseAutoencoder.load(_abs(run_dir, small["dir"]))
        shift = shared_dictionary_shift(sae, stores["base"], stores[name], layer, dc)
        top_mmcs = next((t["features"] for t in mmcs_result["top"]
                         if t["model"] == "base" and t["layer"] == layer and t["seed"] == seed), [])
        shift["among_top_mmcs"] = count_among(shift, [f["feature"] for f in top_mmcs])
        shifted = [row["latent"] for row in shift["top"][:dc.explain_top]]
        shift["features"] = [_shown(r) for r in explain_features(
            stores[name], layer, {f"s{seed}": sae}, {f"s{seed}": shifted}, tokenizer, explainer, config.examples,
            model=f"base-sae on {name}", table=table, aggregate=config.reward.aggregate)] if shifted else []
        shift["sae"] = small["dir"]
        block = {"layer": layer, "diff_sae": result, "shift": shift}
        if dc.crosscoder:
            block["crosscoder"], _ = crosscoder_analysis(stores["base"], stores[name], layer, dc,
                                                          out=folder / "crosscoder.safetensors")
        blocks.append(block)
    return {"blocks": blocks, "utility_of_change": _change_utility(blocks)}


def _change_utility(blocks: list[dict]) -> dict:
    """The paper's utility score applied to the explanations of the top diff-SAE latents: per diff-SAE seed, the sum
    over blocks and explained latents of each explanation's utility; mean and spread over seeds."""
    per_seed: dict[str, float] = {}
    for block in blocks:
        for record in block["diff_sae"]["features"]:
            per_seed[record["sae"]] = per_seed.get(record["sae"], 0.0) + float(record.get("utility") or 0.0)
    return {**_mean_std(list(per_seed.values())), "seeds": list(per_seed)}


def _stage_features(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Explain the top-k features of every seed's small SAE, and the tuned model's most novel features."""
    models = _analysed_models(state, run_dir.absolute())
    layers = _layers(state)
    jobs = [(config, str(run_dir.absolute()), state["mmcs"]["file"], name, models[name],
             str(_abs(run_dir, store_dir).absolute()), layers, i * len(layers))
            for i, (name, store_dir) in enumerate(state["harvest"]["stores"].items())]
    explainer_gpu = config.interp.explainer.startswith("hf:")
    files, new_records = {}, []
    for name, (file, new) in zip(state["harvest"]["stores"], _executor(state).map(
            _features_job, jobs, resources=_resources(config, gpu=explainer_gpu))):
        files[name] = file
        new_records += new
    write_json(run_dir / "features" / "tuned-new.json", new_records)
    return {"files": files, "new": _rel(run_dir, run_dir / "features" / "tuned-new.json")}


def _features_job(job: tuple) -> tuple[str, list[dict]]:
    """One model's feature records, every block and seed, written to features/{model}.json; returns that
    file (relative to the run) and the records of the model's most novel features (the tuned model only).
    (config, run folder, mmcs.json as recorded, model name, model spec, store folder, layers, units before it)"""
    from ..interp import explain_features
    from ..models import load_tokenizer
    from ..rewards import load_utility_table
    from ..sae import SparseAutoencoder
    from ..store import ActivationStore

    config, run_dir, mmcs_file, name, model_spec, store_dir, layers, units = job
    run_dir = Path(run_dir)
    mmcs_result = read_json(_abs(run_dir, mmcs_file))
    explainer = _explainer(config.interp.explainer, config.interp.base_url, config.interp.llm_model,
                           config.model.device)
    table = load_utility_table(config.reward.table)
    first = f"s{config.sae.seeds[0]}"  # mmcs.json's `new`: the first seed's tuned dictionary against the base
    new_records = []
    store = ActivationStore(Path(store_dir))
    tokenizer = load_tokenizer(model_spec)
    records = []
    for layer in layers:
        tops = [t for t in mmcs_result["top"] if t["model"] == name and t["layer"] == layer]
        saes = {f"s{t['seed']}": SparseAutoencoder.load(_abs(run_dir, t["sae"])) for t in tops}
        features = {f"s{t['seed']}": [f["feature"] for f in t["features"]] for t in tops}
        cosines = {f"s{t['seed']}": {f["feature"]: f["max_cosine"] for f in t["features"]} for t in tops}
        novel = _most_novel(mmcs_result["new"], layer, config.interp.top_k) if name == "tuned" else []
        # The new features ride along in the first seed's pass (one read of the store, one explainer
        # batch); each feature's examples and explanation do not depend on the others asked for, and
        # the top-k records are split off unchanged, so the headline is computed exactly as before.
        wanted = {**features, first: list(dict.fromkeys(features[first] + [r["feature"] for r in novel]))}
        explained = explain_features(store, layer, saes, wanted, tokenizer, explainer,
                                     config.examples, model=name, max_cosine=cosines,
                                     table=table, aggregate=config.reward.aggregate)
        records += [r for r in explained if r["feature"] in features[r["sae"]]]
        by_feature = {r["feature"]: r for r in explained if r["sae"] == first}
        new_records += [{**by_feature[row["feature"]], "new": True, "max_cosine_to_base": row["max_cosine_to_base"],
                         "match": row["match"]} for row in novel]
        units += 1
        interrupt_point("features", units)
    write_json(run_dir / "features" / f"{name}.json", records)
    return _rel(run_dir, run_dir / "features" / f"{name}.json"), new_records


_EXPLAINERS: dict[tuple, object] = {}


def _explainer(spec: str, base_url: str, llm_model: str, device: str):
    """The run's explainer; an `hf:` one (a local LM, costly to load) is made once per process and shared by its jobs."""
    from ..interp import LLMConfig, get_explainer

    llm = LLMConfig(base_url=base_url, model=llm_model) if base_url else None
    if not spec.startswith("hf:"):
        return get_explainer(spec, llm=llm, device=device)
    key = (spec, base_url, llm_model, device)
    if key not in _EXPLAINERS:
        _EXPLAINERS[key] = get_explainer(spec, llm=llm, device=device)
    return _EXPLAINERS[key]


def _executor(state: dict) -> Executor:
    """The run's executor (`run(executor=...)`); a stage called on its own runs its jobs in this process."""
    from ..executors import LocalExecutor

    return state.get(_EXECUTOR) or LocalExecutor()


def _resources(config: RunConfig, gpu: bool) -> dict:
    """What one job declares to the executor: a CPU, and a GPU when it runs a model on cuda."""
    return {"num_cpus": 1, "num_gpus": 1 if gpu and config.model.device.startswith("cuda") else 0}


def _most_novel(new: list[dict], layer: int, k: int) -> list[dict]:
    """mmcs.json's `new` rows of `layer`, the k farthest from every base feature (lowest max cosine) first."""
    return sorted((r for r in new if r["layer"] == layer), key=lambda r: (r["max_cosine_to_base"], r["feature"]))[:k]


def _mean_std(values: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()) if arr.size else None, "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "values": [float(v) for v in arr], "n": int(arr.size)}


def _stage_scores(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Utility score (Table 3), reward alignment, simulation and MMCS per model, as mean +- spread over seeds."""
    from ..interp import utility_scores
    from ..report.verdict import verdict
    from ..rewards import load_utility_table

    table = load_utility_table(config.reward.table)
    records = {name: read_json(_abs(run_dir, path)) for name, path in state["features"]["files"].items()}
    mmcs_result = read_json(_abs(run_dir, state["mmcs"]["file"]))
    seeds = config.sae.seeds
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = utility_scores({m: [r for r in rs if r["sae"] == f"s{seed}"] for m, rs in records.items()},
                                        table, config.reward.aggregate)
    models = list(records)
    metrics = {
        "MMCS (within)": lambda m, s: _mean([w["mmcs"] for w in mmcs_result["within"]
                                             if w["model"] == m and w["seed"] == s]),
        "simulation score": lambda m, s: per_seed[s]["total"][m]["mean_simulation_score"],
        "utility score": lambda m, s: per_seed[s]["total"][m]["utility"],
        "reward alignment": lambda m, s: per_seed[s]["total"][m]["reward_score"],
    }
    headline = []
    for name, metric in metrics.items():
        row = {"name": name, "n_seeds": len(seeds)}
        for m in models:
            row[m] = _mean_std([metric(m, s) for s in seeds])
        row["verdict"] = verdict(row["base"], row["tuned"])
        headline.append(row)
    layers = _layers(state)
    per_block = []
    for layer in layers:
        entry = {"layer": layer}
        for m in models:
            values = [next(b[m]["utility"] for b in per_seed[s]["blocks"] if b["layer"] == layer) for s in seeds]
            entry[m] = {"utility": _mean(values),
                        "reward_score": _mean([next(b[m]["reward_score"] for b in per_seed[s]["blocks"]
                                                    if b["layer"] == layer) for s in seeds])}
        per_block.append(entry)
    utility = {"aggregate": config.reward.aggregate, "table": config.reward.table, "per_block": per_block,
               "total": {m: {key: next(h for h in headline if h["name"] == name)[m]["mean"]
                             for key, name in (("utility", "utility score"), ("reward_score", "reward alignment"))}
                         for m in models},
               "per_seed": {str(s): per_seed[s] for s in seeds}}
    write_json(run_dir / "utility.json", utility)
    return {"headline": headline, "utility": _rel(run_dir, run_dir / "utility.json")}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _stage_report(config: RunConfig, run_dir: Path, state: dict) -> dict:
    from ..report import write_report

    write_json(run_dir / "results.json", collect_results(config, run_dir, state))
    html, summary = write_report(run_dir)
    return {"html": _rel(run_dir, html), "summary": _rel(run_dir, summary)}


def collect_results(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Everything the report shows, in one JSON document (docs/report.md)."""
    ppo = None
    rlhf_dir = run_dir / "rlhf"
    if state["rlhf"]["trained"] or (rlhf_dir / "eval.json").is_file():  # external tuned models are evaluated too
        log_file = rlhf_dir / "log.jsonl"
        log = ([json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
               if log_file.is_file() else [])
        ppo = {"log": log, "eval": read_json(rlhf_dir / "eval.json") if (rlhf_dir / "eval.json").is_file() else None}
    rows = read_json(run_dir / "divergence.json")
    mmcs_result = read_json(_abs(run_dir, state["mmcs"]["file"]))
    sae_rows = []
    for s in state["saes"]["saes"]:
        metrics = read_json(_abs(run_dir, s["dir"]) / "metrics.json")
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
        stats = _mean_std(values)
        mmcs_rows.append({"model": model, "layer": layer, "kind": kind, "values": values, "mean": stats["mean"],
                          "std": stats["std"]})
    features = []
    first_seed = f"s{config.sae.seeds[0]}"
    for path in state["features"]["files"].values():
        features += [_shown(r) for r in read_json(_abs(run_dir, path)) if r["sae"] == first_seed]
    new_features = [_shown(r) for r in read_json(_abs(run_dir, state["features"]["new"]))]
    models = _analysed_models(state)  # as recorded: run folders relative to it, so results.json moves with it
    return {
        "title": f"rlhf-lens: {config.model.base} vs its RLHF-tuned copy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
        "models": {"base": models["base"], "tuned": models["tuned"], "control": models.get("control")},
        "ppo": ppo,
        "diff": _diff_for_report(run_dir, state),
        "decompose": read_json(_abs(run_dir, state["decompose"]["file"])),
        "placebo": _placebo_for_report(run_dir, state),
        "divergence": {"rows": rows, "top_layers": _layers(state), "rank": state["diff"]["rank"],
                       "by_parameters": state["divergence"]["top_layers"],
                       "spread": state["divergence"]["spread"]},
        "saes": sae_rows,
        "mmcs": mmcs_rows,
        "features": features,
        "new_features": new_features,
        "new_feature_counts": _new_feature_counts(config, mmcs_result, new_features),
        "utility": {k: v for k, v in read_json(_abs(run_dir, state["scores"]["utility"])).items() if k != "per_seed"},
        "headline": state["scores"]["headline"],
    }


def _diff_for_report(run_dir: Path, state: dict) -> dict:
    """diff.json as the report shows it (the per-token tensors stay in deltas.safetensors); models saved in the run
    named relative to it, as everywhere in results.json, so a moved run folder still describes itself."""
    return _read_diff(run_dir, state["diff"]["dir"])


def _read_diff(run_dir: Path, folder: str) -> dict:
    return read_json(_abs(run_dir, folder) / "diff.json")


def _diff_in_run(config: RunConfig, run_dir: Path, folder: Path, base: str, tuned: str, layers: list[int]) -> dict:
    """`diff_models` writing into the run, its models recorded relative to the run folder (as every record of a
    run is), so a moved or copied run still describes itself."""
    from ..diff.run import diff_models

    settings = dataclasses.replace(config.diff, split=config.data.test_split, text_column=config.data.text_column)
    result = diff_models(base, tuned, config.data.corpus, config.reward.spec, layers, folder, settings,
                         device=config.model.device, dtype=config.model.dtype)
    result.update({k: _rel(run_dir, result[k]) for k in ("base", "tuned") if Path(str(result[k])).is_absolute()})
    write_json(folder / "diff.json", result)
    return result


def _placebo_for_report(run_dir: Path, state: dict) -> dict | None:
    """The placebo tune's diff and utility of the change, shown beside the real tune's; None when it did not run."""
    if not state["diff"].get("placebo_dir"):
        return None
    decompose = read_json(_abs(run_dir, state["decompose"]["file"])).get("placebo") or {}
    return {"diff": _read_diff(run_dir, state["diff"]["placebo_dir"]),
            "utility_of_change": decompose.get("utility_of_change"), "table": state["placebo"].get("table")}


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


def _shown(record: dict) -> dict:
    """A feature record as results.json holds it: without the scoring examples (bulky, not shown)."""
    return {k: v for k, v in record.items() if k != "scoring_examples"}


_STAGE_FUNCTIONS = {
    "base": _stage_base, "rlhf": _stage_rlhf, "placebo": _stage_placebo, "divergence": _stage_divergence, "diff": _stage_diff,
    "control": _stage_control,
    "harvest": _stage_harvest, "saes": _stage_saes, "mmcs": _stage_mmcs, "decompose": _stage_decompose, "features": _stage_features,
    "scores": _stage_scores, "report": _stage_report,
}
