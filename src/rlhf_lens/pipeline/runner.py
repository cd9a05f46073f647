"""The run engine: stage order, keys, the ledger of finished stages, the lock, the checks, and `run`.

Each stage is recorded in `RUN_DIR/stages/<stage>.json` under a key that hashes the stage's own settings
(`stage_config`) and the keys of the stages whose outputs it reads (`STAGE_READS`), so a changed setting
reruns its stage and the stages that read it, directly or through others, and nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ..config import CONFIG_FILE, RunConfig, config_from_dict, config_toml, trains_reward_model, validate
from ..errors import UserError
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
from .jobs import EXECUTOR
from .records import digest, in_run, layers_stage
from .rm_stages import inspect_rm_settings, pairs_settings, rm_settings
from .stages import STAGE_FUNCTIONS

if TYPE_CHECKING:
    from ..executors import Executor

STAGES = ("base", "pairs", "rm", "rlhf", "placebo", "divergence", "diff", "control", "harvest", "saes", "mmcs", "decompose", "features",
          "scores", "inspect_rm", "report")

LAYERS = "layers"
"""In `STAGE_READS`: the stage that picked the analysed blocks (`records.layers_stage`: divergence, or diff with
divergence.rank = "causal")."""

# The stages whose outputs each stage reads (each earlier in STAGES). A stage's key hashes their keys, so it
# runs again when one of them did; the analysed blocks are read from LAYERS, which names the diff stage only
# when it picked them, so a diff-only setting (diff.alphas) does not re-harvest or retrain the SAEs.
STAGE_READS: dict[str, tuple[str, ...]] = {
    "base": (),
    "pairs": ("base",),
    "rm": ("base", "pairs"),
    "rlhf": ("base", "rm"),
    "placebo": ("base",),
    "divergence": ("base", "rlhf"),
    "diff": ("base", "rlhf", "placebo", "divergence"),
    "control": ("base",),
    "harvest": ("base", "rlhf", "placebo", "control", LAYERS),
    "saes": ("harvest", LAYERS),
    "mmcs": ("harvest", "saes", LAYERS),
    "decompose": ("base", "diff", "harvest", "saes", "mmcs", LAYERS),
    "features": ("base", "rlhf", "placebo", "control", "diff", "harvest", "mmcs", LAYERS),
    "scores": ("mmcs", "features", LAYERS),
    "inspect_rm": ("base", "pairs", "rm", "rlhf", "diff", "saes"),
    "report": ("base", "pairs", "rm", "rlhf", "placebo", "divergence", "diff", "control", "saes", "mmcs", "decompose", "features",
               "scores", "inspect_rm"),
}

# The stages a setting turns off, by that setting: such a stage runs and records that it did nothing, and is shown
# as "off" instead of by its header. The pairs and rm stages are off unless the run trains its RM (reward.spec = rm).
OPTIONAL_STAGES = {"placebo": "controls.placebo", "control": "controls.random_init"}
RM_STAGES = ("pairs", "rm", "inspect_rm")

# What each stage writes, relative to the run folder.
STAGE_OUTPUTS = {
    "base": ["models/base"], "pairs": ["pairs"], "rm": ["rm"], "rlhf": ["rlhf"], "placebo": ["placebo"], "divergence": ["divergence.json", "divergence.png"],
    "diff": ["diff"], "control": ["models/control"], "harvest": ["acts"], "saes": ["saes"], "mmcs": ["mmcs.json"],
    "decompose": ["decompose"], "features": ["features"], "scores": ["utility.json"], "inspect_rm": ["inspect_rm"],
    "report": ["results.json", "report.html", "summary.md"],
}


def stage_config(config: RunConfig, stage: str) -> list:
    """The settings `stage` reads itself (settings of the stages it reads from reach its key through theirs)."""
    c = config.to_dict()
    return {
        "base": [c["model"], c["tiny"], c["data"]],
        "pairs": pairs_settings(config),
        "rm": rm_settings(config),
        "rlhf": [c["rlhf"], c["reward"]["spec"], c["gold"]["spec"]],
        "divergence": [c["divergence"]["top_n"]],
        "diff": [c["diff"], c["divergence"], c["reward"]["spec"], c["data"]["test_split"]],
        # placebo_seeds only when the placebo runs: a run with it off keeps its keys
        "placebo": [c["controls"]["placebo"], c["rlhf"], c["reward"]["spec"],
                    *([c["controls"]["placebo_seeds"]] if c["controls"]["placebo"] else [])],
        "control": [c["controls"]["random_init"]],
        "harvest": [c["harvest"], c["data"]["test_split"]],
        "saes": [c["sae"]],
        "mmcs": [c["interp"]["new_feature_threshold"], c["interp"]["new_feature_quantile"], c["interp"]["top_k"]],
        # diff.prompts/new_tokens: the diff-SAE latents are steered on the diff's held-out prompts
        "decompose": [c["decompose"], c["interp"], c["examples"], c["reward"], c["data"]["test_split"],
                      c["diff"]["prompts"], c["diff"]["new_tokens"]],
        # reward.table/aggregate: the feature records (new features' included) carry utility fields
        "features": [c["interp"], c["examples"], c["reward"]["table"], c["reward"]["aggregate"]],
        "scores": [c["reward"]["table"], c["reward"]["aggregate"]],
        "inspect_rm": inspect_rm_settings(config),
        "report": [],
    }[stage]


def stage_reads(config: RunConfig, stage: str) -> list[str]:
    """The stages `stage` reads from under `config` (`STAGE_READS` with LAYERS resolved). inspect_rm reads none when
    it is off, so a change it would read (diff.alphas) does not rerun it to record that it did nothing (pairs and
    rm keep their reads: their keys were recorded so); decompose and features read the diff only for the reward
    effect (interp.reward_effect)."""
    if stage == "inspect_rm" and stage_off(config, stage):
        return []
    reads = STAGE_READS[stage]
    if stage in ("decompose", "features") and not config.interp.reward_effect:
        reads = tuple(r for r in reads if r != "diff")  # the diff is only the reward effect's reading
    return [layers_stage(config) if read == LAYERS else read for read in reads]


def stage_keys(config: RunConfig) -> dict[str, str]:
    """Every stage's key under `config`: its name, its own settings and the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        # With no stage read, or one, this is the hash the keys had when they formed a chain (stage, settings,
        # key before), so runs recorded then keep their base and PPO stages.
        keys[stage] = digest(stage, stage_config(config, stage), *([keys[s] for s in stage_reads(config, stage)] or [""]))
    return keys


def stage_off(config: RunConfig, stage: str) -> str | None:
    """Why `stage` is off when it is (`OPTIONAL_STAGES`, `RM_STAGES`), e.g. "controls.placebo = false", else None."""
    if stage in RM_STAGES:
        return None if trains_reward_model(config) else f"reward.spec = {config.reward.spec}, not rm"
    setting = OPTIONAL_STAGES.get(stage)
    if setting is None:
        return None
    section, key = setting.split(".")
    return None if getattr(getattr(config, section), key) else f"{setting} = false"


def damaged_outputs(stage: str, run_dir: Path, outputs: dict) -> str | None:
    """Why a finished stage's outputs cannot be used as they are, or None. Checked on every resume for the stages
    whose outputs later stages and commands read as activation stores (their manifests and shard headers: cheap);
    a stage whose outputs fail is redone, and redoes only what failed (the harvest rewrites damaged shards)."""
    if stage != "harvest":
        return None
    from ..store import store_problem

    for store in [*outputs["stores"].values(), *(outputs.get("placebo_stores") or {}).values()]:
        problem = store_problem(in_run(run_dir, store))
        if problem:
            return problem
    return None


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
    from ..data import load_corpus, prompt_documents
    from ..models import SMOLLM2, load_tokenizer, smollm2_path
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
                smollm2_path()
            else:
                tokenizer = load_tokenizer(spec)
                if spec == config.model.base:  # a corpus too short for any prompt: one line now, not after PPO loads
                    for split in ("train", config.data.test_split):
                        prompt_documents(corpus, tokenizer, split, config.rlhf.prompt_min_chars,
                                         config.rlhf.prompt_min_tokens)
    if trains_reward_model(config):
        _check_preferences(config)
    elif not config.model.tuned:
        load_reward(config.reward.spec)
    if config.gold.spec:
        try:
            load_reward(config.gold.spec)
        except UserError as e:
            raise UserError(f"gold.spec: {e}") from None
    load_utility_table(config.reward.table)
    if config.diff.table is not None:
        load_utility_table(config.diff.table)
    if config.diff.rank_layers is not None:
        # The blocks the diff ranks would otherwise be checked only after its steering work. The model's config is
        # enough (read only when the blocks are given: a GGUF's takes seconds).
        from ..models import model_depth

        depth = config.tiny.layers if config.model.base == "tiny" else model_depth(config.model.base)
        outside = [b for b in config.diff.rank_layers if b >= depth]
        if outside:
            raise UserError(f"diff.rank_layers names block(s) {outside}, but {config.model.base} has blocks "
                            f"0..{depth - 1}; give blocks in that range, or leave diff.rank_layers unset")


def _check_preferences(config: RunConfig) -> None:
    """A run that trains its RM: the user's pair file reads (every row), or the gold that labels sampled pairs loads."""
    from ..preferences import read_pairs
    from ..rules import in_section

    prefs = config.preferences
    if prefs.file:
        read_pairs(prefs.file, prefs.prompt_key, prefs.chosen_key, prefs.rejected_key, key=in_section("preferences"))


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
    state: dict = {EXECUTOR: executor}
    for stage, key in stage_keys(config).items():
        outputs = ledger.done(stage, key)
        damage = damaged_outputs(stage, run_dir, outputs) if outputs is not None else None
        if damage:
            console.print(f"[yellow]{stage}: {escape(damage)}; redoing the {stage} stage[/yellow]", soft_wrap=True)
        off = stage_off(config, stage)
        # a stage that does nothing is one dim line, whether it runs (to record that) or was recorded earlier
        off_line = f"[dim]{stage}: off ({escape(off)})[/dim]" if off else None
        if outputs is not None and not damage:
            console.print(off_line or f"[dim]{stage}: done earlier, skipped[/dim]")
        else:
            if not ledger.start(stage, key):
                # New settings (or a first run): outputs left by other settings would be refused
                # or, worse, reused by the stage's own resume logic.
                _remove_outputs(run_dir, stage)
            console.print(off_line or f"[bold]{stage}[/bold]")
            start = time.perf_counter()
            outputs = STAGE_FUNCTIONS[stage](config, run_dir, state)
            ledger.finish(stage, key, outputs, time.perf_counter() - start)
        state[stage] = outputs
    return run_dir / "report.html"


def _remove_outputs(run_dir: Path, stage: str) -> None:
    """A stage's own outputs, before it runs under new settings (a symlink among them is refused, not followed)."""
    for rel in STAGE_OUTPUTS[stage]:
        remove_output(run_dir / rel)
