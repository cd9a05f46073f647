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
