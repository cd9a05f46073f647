"""The stages of a run as thin adapters: each takes (config, run folder, state), makes one call into its stage's
package with the paths and settings it needs, and returns its outputs (JSON-able, paths relative to the run
folder), which later stages read from `state[stage]`. The analysis itself lives in the stage packages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError, interrupt_point
from ..io import read_json, write_json
from .feature_stages import stage_features, stage_scores
from .jobs import executor_of, job_resources
from .records import analysed_layers, analysed_models, digest, in_run, recorded_model, relative
from .rm_stages import run_reward, stage_inspect_rm, stage_pairs, stage_rm


def _ppo_settings(config: RunConfig):
    # [model] device/dtype and [data] text_column apply to every stage, PPO included.
    return dataclasses.replace(config.rlhf, device=config.model.device, dtype=config.model.dtype,
                               text_column=config.data.text_column)


def stage_base(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """The base model: the spec as given, or with model.base = "tiny" a tiny GPT-NeoX built on the corpus."""
    if config.model.base != "tiny":
        return {"spec": config.model.base}
    from ..data import load_corpus
    from ..models import build_tiny_model, save_model

    texts = load_corpus(config.data.corpus, text_column=config.data.text_column).texts("train")
    model, tokenizer = build_tiny_model(texts, config.tiny)
    return {"dir": relative(run_dir, save_model(model, tokenizer, run_dir / "models" / "base"))}


def stage_rlhf(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """PPO of the base against the reward; with model.tuned, that model's held-out evaluation beside the base's."""
    from ..rlhf import evaluate_models, train_ppo

    out = run_dir / "rlhf"
    ppo = _ppo_settings(config)
    if config.model.tuned:
        # A model tuned elsewhere: no PPO, but the same held-out evaluation of both models.
        evaluate_models(recorded_model(state["base"], run_dir), config.model.tuned, run_reward(config, state, run_dir),
                        config.data.corpus, out, ppo, gold=config.gold.spec)
        return {"spec": config.model.tuned, "trained": False}
    model_dir = train_ppo(recorded_model(state["base"], run_dir), run_reward(config, state, run_dir),
                          config.data.corpus, out, ppo, gold=config.gold.spec)
    return {"dir": relative(run_dir, model_dir), "trained": True}


def stage_placebo(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """The placebo tunes (controls.placebo): per seed of controls.placebo_seeds, the same PPO against the reward's
    table with its values shuffled over its words (that seed's permutation, and its own PPO seed), so "would any PPO
    run of this size change this much?" has an answer with a spread. `dir`/`table`: the first seed's (the placebo
    the SAE stages analyse); `seeds`: every seed's, in placebo/seed{s}/."""
    if not config.controls.placebo:
        return {"spec": None}
    from ..rewards import load_utility_table, parse_spec, shuffled_table, write_table
    from ..rlhf import train_ppo

    kind, arg, options = parse_spec(config.reward.spec)
    table = load_utility_table("vader" if kind == "vader" else arg)
    runs = []
    for seed in config.controls.placebo_seeds:
        folder = run_dir / "placebo" / f"seed{seed}"
        path = write_table(shuffled_table(table, seed=seed), folder / "table.tsv")
        spec = ",".join([f"table:{path.resolve()}", *(f"{k}={v}" for k, v in sorted(options.items()))])
        ppo = dataclasses.replace(_ppo_settings(config), seed=placebo_ppo_seed(config.rlhf.seed, seed))
        model_dir = train_ppo(recorded_model(state["base"], run_dir), spec, config.data.corpus, folder / "ppo", ppo)
        runs.append({"seed": seed, "dir": relative(run_dir, model_dir), "table": relative(run_dir, path),
                     "ppo": relative(run_dir, folder / "ppo")})
    return {"dir": runs[0]["dir"], "table": runs[0]["table"], "seeds": runs}


def placebo_ppo_seed(rlhf_seed: int, placebo_seed: int) -> int:
    """A placebo tune's own PPO seed: neither the real tune's nor another placebo seed's random stream."""
    return int(digest("placebo-ppo", rlhf_seed, placebo_seed)[:8], 16)


def stage_divergence(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Frobenius divergence of every block between base and tuned; the top divergence.top_n blocks."""
    from ..divergence import divergence_from_specs, divergence_spread, plot_divergence, top_layers

    rows = divergence_from_specs(recorded_model(state["base"], run_dir), recorded_model(state["rlhf"], run_dir),
                                 dtype=config.model.dtype)
    top = top_layers(rows, config.divergence.top_n)
    write_json(run_dir / "divergence.json", rows)
    plot_divergence(rows, run_dir / "divergence.png", top_n=config.divergence.top_n)
    return {"top_layers": top, "spread": divergence_spread(rows)}


def stage_diff(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Base and tuned on the same tokens (docs/diff.md); with divergence.rank = causal it picks the analysed blocks
    from its causal ranking (ranked on prompts disjoint from those that steer at them), then steers there."""
    by_parameters = state["divergence"]["top_layers"]
    causal = config.divergence.rank == "causal"
    reward = run_reward(config, state, run_dir)
    result = _diff_in_run(config, run_dir, run_dir / "diff", reward, recorded_model(state["base"], run_dir),
                          recorded_model(state["rlhf"], run_dir), by_parameters,
                          choose_blocks=config.divergence.top_n if causal else None)
    chosen = result["layers"] if causal else by_parameters
    outputs = {"dir": relative(run_dir, run_dir / "diff"), "top_layers": chosen, "rank": config.divergence.rank}
    placebo_dirs = {}
    for run in state["placebo"].get("seeds") or []:  # the same measures for each placebo tune, beside the real one's
        folder = run_dir / "diff" / "placebo" / f"seed{run['seed']}"
        _diff_in_run(config, run_dir, folder, reward, recorded_model(state["base"], run_dir),
                     str(in_run(run_dir, run["dir"])), chosen)
        placebo_dirs[str(run["seed"])] = relative(run_dir, folder)
    if placebo_dirs:
        outputs["placebo_dirs"] = placebo_dirs
    return outputs


def _diff_in_run(config: RunConfig, run_dir: Path, folder: Path, reward: str, base: str, tuned: str, layers: list[int],
                 choose_blocks: int | None = None) -> dict:
    """`diff_models` writing into the run, its models recorded relative to the run folder (as every record of a
    run is), so a moved or copied run still describes itself."""
    from ..diff.run import diff_models

    settings = dataclasses.replace(config.diff, split=config.data.test_split, text_column=config.data.text_column)
    result = diff_models(base, tuned, config.data.corpus, reward, layers, folder, settings,
                         device=config.model.device, dtype=config.model.dtype, choose_blocks=choose_blocks,
                         prompt_min_chars=config.rlhf.prompt_min_chars)
    result.update({k: relative(run_dir, result[k]) for k in ("base", "tuned") if Path(str(result[k])).is_absolute()})
    write_json(folder / "diff.json", result)
    return result


def stage_control(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """A randomly initialised model of the base architecture: what SAEs find without any training."""
    if not config.controls.random_init:
        return {"spec": None}
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import load_model, save_model

    base, tokenizer = load_model(recorded_model(state["base"], run_dir), dtype=config.model.dtype)
    torch.manual_seed(config.model.seed + 1)
    model = AutoModelForCausalLM.from_config(base.config)
    return {"dir": relative(run_dir, save_model(model, tokenizer, run_dir / "models" / "control"))}


def stage_harvest(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """MLP outputs of every analysed model at the analysed blocks, one job per model. A store whose manifest is
    damaged is harvested again from scratch (one with damaged shards resumes: the harvest redoes those shards)."""
    from ..harvest import HarvestConfig
    from ..io import remove_output
    from ..store import manifest_problem

    stores, jobs = {}, []
    models = analysed_models(state, run_dir.absolute())
    # The placebo tunes after the first (which is `placebo`, analysed like every model) are harvested for the
    # decomposition only: no SAEs or explanations of their own.
    extra = {f"placebo-seed{r['seed']}": str(in_run(run_dir.absolute(), r["dir"]))
             for r in (state["placebo"].get("seeds") or [])[1:]}
    placebo_stores = {}
    # Jobs get absolute paths: a Ray worker on another node does not share the driver's working directory.
    for name, spec in {**models, **extra}.items():
        hc = HarvestConfig(
            **dataclasses.asdict(config.harvest), layers=analysed_layers(config, state),
            corpus=config.data.corpus, split=config.data.test_split, device=config.model.device,
            text_column=config.data.text_column, model_dtype=config.model.dtype,
        )
        out = run_dir / "acts" / name
        if out.is_dir() and any(out.iterdir()) and manifest_problem(out):
            remove_output(out)
        jobs.append((spec, hc, str(out.absolute())))
        (placebo_stores if name in extra else stores)[name] = relative(run_dir, out)
    executor_of(state).map(_harvest_job, jobs, resources=job_resources(config, gpu=True))
    seeds = [r["seed"] for r in state["placebo"].get("seeds") or []]
    if not seeds:
        return {"stores": stores}
    # every placebo seed's store, the first seed's being the `placebo` store
    return {"stores": stores, "placebo_stores": {str(s): stores["placebo"] if i == 0 else placebo_stores[f"placebo-seed{s}"]
                                                 for i, s in enumerate(seeds)}}


def _harvest_job(job: tuple) -> None:
    """One model's activations: (model spec, HarvestConfig, store folder)."""
    from ..harvest import harvest

    spec, hc, out = job
    harvest(spec, hc, Path(out))


def _sae_dir(run_dir: Path, model: str, layer: int, size: int, seed: int) -> Path:
    return run_dir / "saes" / model / f"layer{layer}" / f"m{size}-s{seed}"


def _init_seed(seed: int, model: str, layer: int, size: int) -> int:
    return int(digest("sae-init", seed, model, layer, size)[:8], 16)


def stage_saes(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Every (ratio, seed) SAE of every model and analysed block, one job per (model, block)."""
    from ..sae import SAEConfig, SAETraining
    from ..store import ActivationStore

    saes, jobs = [], []
    for name, store_dir in state["harvest"]["stores"].items():
        store = ActivationStore(in_run(run_dir, store_dir))
        for layer in analysed_layers(config, state):
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
                                 "dir": relative(run_dir, dirs[-1])})
            # One job per (model, block): its SAEs share every pass over that block's activations.
            jobs.append((str(in_run(run_dir, store_dir).absolute()), layer, configs, [str(d.absolute()) for d in dirs],
                         len(jobs) + 1))
    executor_of(state).map(_sae_job, jobs, resources=job_resources(config, gpu=True))
    return {"saes": saes}


def _sae_job(job: tuple) -> None:
    """Every (ratio, seed) SAE of one model and block: (store folder, layer, SAEConfigs, SAE folders, unit number)."""
    from ..progress import console
    from ..sae import train_saes
    from ..store import ActivationStore

    # the SAEs' progress lines name their folders (m{size}-s{seed}); this names the model and block they are in
    console.print(f"[dim]saes: {Path(job[0]).name}, block {job[1]}[/dim]")
    store_dir, layer, configs, dirs, unit = job
    train_saes(ActivationStore(Path(store_dir)).source(layer), configs, [Path(d) for d in dirs],
               metadata={"layer": layer})  # cfg.json records its block (`rlhf-lens mmcs` compares like with like)
    interrupt_point("saes", unit)


def stage_mmcs(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """MMCS within and across models and the tuned model's new features (`dictionaries.compare_run_saes`)."""
    from ..dictionaries import compare_run_saes

    result = compare_run_saes(state["saes"]["saes"], list(state["harvest"]["stores"]), analysed_layers(config, state),
                              config.sae.seeds, config.interp.top_k, config.interp.new_feature_threshold,
                              config.interp.new_feature_quantile, root=run_dir)
    write_json(run_dir / "mmcs.json", result)
    return {"file": relative(run_dir, run_dir / "mmcs.json")}


def stage_decompose(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """What tuning changed, feature by feature, per analysed block (`decompose.run.decompose_models`), for the
    tuned model and each placebo tune; the utility of the change signed (`add_signed_utility`)."""
    from ..decompose.run import add_signed_utility, decompose_models
    from ..dictionaries import small_and_large

    layers = analysed_layers(config, state)
    seed = config.sae.seeds[0]
    if config.decompose.site == "residual":  # the residual stores the diff stage saved (diff.save_activations)
        stores = _residual_stores(run_dir, state, layers)
        base_saes = {}  # the run's base SAEs are of the MLP outputs: no shared-dictionary shift at this site
    else:
        stores = {name: in_run(run_dir, path) for name, path in state["harvest"]["stores"].items()}
        base_saes = {layer: small_and_large(state["saes"]["saes"], "base", layer, seed)[0]["dir"] for layer in layers}
    # the base SAE's top features by MMCS: how many of its shifted latents the interpretation stage explained
    top = read_json(in_run(run_dir, state["mmcs"]["file"]))["top"]
    top_features = {layer: [f["feature"] for f in next((t["features"] for t in top if t["model"] == "base"
                                                        and t["layer"] == layer and t["seed"] == seed), [])]
                    for layer in layers}

    def decompose(store: Path, out: Path) -> dict:
        return decompose_models(
            recorded_model(state["base"], run_dir), stores["base"], store, base_saes, layers, out, config.data.corpus,
            run_reward(config, state, run_dir), config.decompose, interp=config.interp, examples=config.examples,
            table=config.reward.table, aggregate=config.reward.aggregate, prompts=config.diff.prompts,
            new_tokens=config.diff.new_tokens, split=config.data.test_split, text_column=config.data.text_column,
            sae_seed=seed, top_features=top_features, root=run_dir, device=config.model.device,
            dtype=config.model.dtype, prompt_min_chars=config.rlhf.prompt_min_chars,
            diff_dir=in_run(run_dir, state["diff"]["dir"]), diff_table=config.diff.table)

    result = decompose(stores["tuned"], run_dir / "decompose")
    add_signed_utility(result, config.reward.table, config.reward.aggregate)
    # Each placebo tune decomposed the same way, in decompose/placebo/seed{s}; decompose.json's `placebo` is the
    # first seed's (shown block by block beside the real tune), `placebo_seeds` every seed's utility of the change.
    placebo_seeds = []
    for placebo_seed, store in (state["harvest"].get("placebo_stores") or {}).items():
        folder = run_dir / "decompose" / "placebo" / f"seed{placebo_seed}"
        placebo = decompose(in_run(run_dir, store), folder)
        add_signed_utility(placebo, config.reward.table, config.reward.aggregate)
        write_json(folder / "decompose.json", placebo)
        if not placebo_seeds:
            result["placebo"] = {k: v for k, v in placebo.items() if k != "placebo"}
        placebo_seeds.append({"seed": int(placebo_seed), "file": relative(run_dir, folder / "decompose.json"),
                              "utility_of_change": placebo["utility_of_change"]})
    if placebo_seeds:
        result["placebo_seeds"] = placebo_seeds
    write_json(run_dir / "decompose" / "decompose.json", result)
    return {"file": relative(run_dir, run_dir / "decompose" / "decompose.json"),
            "utility_of_change": result["utility_of_change"]}


def _residual_stores(run_dir: Path, state: dict, layers: list[int]) -> dict[str, Path]:
    """{"base", "tuned"[, "placebo"]}: the residual-stream stores of the diff folders (diff/acts/...), checked to
    hold every analysed block."""
    from ..store import ActivationStore

    folders = {"tuned": state["diff"]["dir"], "placebo": state["diff"].get("placebo_dir")}
    stores: dict[str, Path] = {}
    for name, folder in folders.items():
        if folder is None:
            continue
        diff = read_json(in_run(run_dir, folder) / "diff.json")
        saved = (diff.get("files") or {}).get("activations")
        if not saved:
            raise UserError("decompose.site = residual needs the residual stores of the diff stage: set "
                            "diff.save_activations = true and rerun the diff stage")
        for side in ("base", "tuned") if name == "tuned" else ("tuned",):
            stores[side if name == "tuned" else name] = in_run(run_dir, folder) / saved[side]
    held = ActivationStore(stores["base"]).layers
    missing = [layer for layer in layers if layer not in held]
    if missing:
        raise UserError(f"decompose.site = residual: the diff stage saved blocks {held}, not block(s) "
                        f"{', '.join(map(str, missing))} the run analyses; set divergence.rank = parameters (the diff "
                        "saves the blocks it analyses) or decompose.site = mlp")
    return stores


def stage_report(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """results.json (`results.collect_results`), rendered as report.html and summary.md."""
    from ..report import write_report
    from .results import collect_results

    write_json(run_dir / "results.json", collect_results(config, run_dir, state))
    html, summary = write_report(run_dir)
    return {"html": relative(run_dir, html), "summary": relative(run_dir, summary)}


STAGE_FUNCTIONS = {
    "base": stage_base, "pairs": stage_pairs, "rm": stage_rm, "rlhf": stage_rlhf, "placebo": stage_placebo, "divergence": stage_divergence,
    "diff": stage_diff, "control": stage_control, "harvest": stage_harvest, "saes": stage_saes, "mmcs": stage_mmcs,
    "decompose": stage_decompose, "features": stage_features, "scores": stage_scores,
    "inspect_rm": stage_inspect_rm, "report": stage_report,
}
