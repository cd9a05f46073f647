"""The stages of a run that trains its own reward model (reward.spec = rm): `pairs` (preference pairs sampled
from the base and labelled by gold.spec, or the user's preferences.file read where it is) and `rm` (a
Bradley-Terry reward model trained on them). Off in any other run: they record that they did nothing."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..config import RunConfig, trains_reward_model
from ..preferences.run import SAMPLING_FIELDS
from ..rules import in_section
from .records import in_run, recorded_model, relative


def pairs_settings(config: RunConfig) -> list:
    """What the pairs stage reads: nothing when off; the user's file by path and content; else the sampling and
    labelling settings and the gold."""
    if not trains_reward_model(config):
        return [False]
    prefs = dataclasses.asdict(config.preferences)
    if config.preferences.file:
        path = Path(config.preferences.file).expanduser()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return [prefs, content]
    sampling = {k: getattr(config.rlhf, k) for k in SAMPLING_FIELDS}  # PPO's prompt rule and sampler
    return [prefs, config.gold.spec, sampling]


def rm_settings(config: RunConfig) -> list:
    """What the rm stage reads itself: nothing when off; [rm] and the planted bias it measures."""
    if not trains_reward_model(config):
        return [False]
    return [dataclasses.asdict(config.rm), config.preferences.bias]


def stage_pairs(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """The preference pairs: the user's file (preferences.file, read where it is, never copied or changed), or
    pairs sampled from the base model on the corpus and labelled by gold.spec (`preferences.make_pairs`)."""
    if not trains_reward_model(config):
        return {"file": None}
    from ..preferences import make_pairs, read_pairs

    prefs = config.preferences
    if prefs.file:
        read_pairs(prefs.file, prefs.prompt_key, prefs.chosen_key, prefs.rejected_key, key=in_section("preferences"))
        return {"file": relative(run_dir, Path(prefs.file).expanduser()), "sampled": False}
    sampling = dataclasses.replace(config.rlhf, device=config.model.device, dtype=config.model.dtype,
                                   text_column=config.data.text_column)
    path = make_pairs(recorded_model(state["base"], run_dir), config.data.corpus, config.gold.spec,
                      run_dir / "pairs", prefs, sampling=sampling, key=in_section("preferences"))
    return {"file": relative(run_dir, path), "sampled": True, "summary": relative(run_dir, path.parent / "pairs.json")}


def stage_rm(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """The run's reward model, Bradley-Terry on the pairs (`rm.train_reward_model`), and its placebo (rm.placebo)."""
    if not trains_reward_model(config):
        return {"dir": None}
    from ..rm import train_reward_model

    prefs, pairs = config.preferences, state["pairs"]
    keys = (prefs.prompt_key, prefs.chosen_key, prefs.rejected_key) if not pairs["sampled"] else \
        ("prompt", "chosen", "rejected")
    model_dir = train_reward_model(
        recorded_model(state["base"], run_dir), in_run(run_dir, pairs["file"]), run_dir / "rm", config.rm,
        prompt_key=keys[0], chosen_key=keys[1], rejected_key=keys[2], bias=prefs.bias, device=config.model.device,
        dtype=config.model.dtype, key=in_section("rm"))
    outputs = {"dir": relative(run_dir, model_dir), "record": relative(run_dir, run_dir / "rm" / "rm.json")}
    if config.rm.placebo:
        outputs["placebo_dir"] = relative(run_dir, run_dir / "rm" / "placebo" / "model")
    return outputs


def run_reward(config: RunConfig, state: dict, run_dir: Path) -> str:
    """The reward spec the run's stages load: reward.spec, or for the run's own reward model (reward.spec = rm)
    rm:FOLDER of the model the rm stage trained."""
    if trains_reward_model(config):
        return f"rm:{in_run(run_dir, state['rm']['dir'])}"
    return config.reward.spec


def inspect_rm_settings(config: RunConfig) -> list:
    """What the inspect_rm stage reads itself: nothing when off; [inspect_rm], the gold, how explanations are made
    and the policy's held-out sampling."""
    if not trains_reward_model(config):
        return [False]
    c = config.to_dict()
    return [c["inspect_rm"], c["gold"]["spec"], c["interp"], c["examples"], c["rlhf"], c["data"]]


def stage_inspect_rm(config: RunConfig, run_dir: Path, state: dict) -> dict:
    """Open the run's reward model (`inspect_rm.inspect_reward_model`): its token scan, its score split over an SAE
    on the state its head reads, the policy's gain split over that SAE's features, the feedback probe on the
    policy's own dictionaries (tuned and base, the smallest of seed 0 at each analysed block) and a verdict."""
    if not trains_reward_model(config):
        return {"record": None}
    from ..inspect_rm import inspect_reward_model
    from ..inspect_rm.run import Policy
    from ..io import read_json

    prefs, pairs = config.preferences, state["pairs"]
    keys = (prefs.prompt_key, prefs.chosen_key, prefs.rejected_key) if not pairs["sampled"] else \
        ("prompt", "chosen", "rejected")
    diff_json = run_dir / state["diff"]["dir"] / "diff.json" if (state.get("diff") or {}).get("dir") else None
    promoted = None
    if diff_json is not None and diff_json.is_file():
        promoted = [t["word"] for t in ((read_json(diff_json).get("output") or {}).get("promoted") or [])]
    policy = Policy(base=recorded_model(state["base"], run_dir), tuned=recorded_model(state["rlhf"], run_dir),
                    corpus=config.data.corpus,
                    ppo=dataclasses.replace(config.rlhf, text_column=config.data.text_column),
                    dictionaries=_probe_dictionaries(run_dir, state), promoted=promoted)
    placebo = in_run(run_dir, state["rm"]["placebo_dir"]) if state["rm"].get("placebo_dir") else None
    record = inspect_reward_model(
        str(in_run(run_dir, state["rm"]["dir"])), in_run(run_dir, pairs["file"]), run_dir / "inspect_rm",
        config.inspect_rm, policy, gold=config.gold.spec, placebo_rm=str(placebo) if placebo else None, keys=keys,
        interp=config.interp, examples=config.examples, device=config.model.device, dtype=config.model.dtype,
        key=in_section("inspect_rm"))
    return {"record": relative(run_dir, record)}


def _probe_dictionaries(run_dir: Path, state: dict) -> dict[str, tuple[int, str]] | None:
    """The feedback probe's dictionaries: per analysed block the tuned and base models' smallest SAE of the first
    seed (`tuned-L19`, `base-L19`, ...); None when the run trained no SAEs."""
    saes = (state.get("saes") or {}).get("saes") or []
    if not saes:
        return None
    first_seed = min(s["seed"] for s in saes)
    chosen: dict[str, tuple[int, str]] = {}
    for sae in sorted(saes, key=lambda s: (s["model"], s["layer"], s["dict_size"])):
        name = f"{sae['model']}-L{sae['layer']}"
        if sae["model"] in ("base", "tuned") and sae["seed"] == first_seed and name not in chosen:
            chosen[name] = (int(sae["layer"]), str(in_run(run_dir, sae["dir"])))
    return chosen or None
