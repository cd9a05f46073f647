"""Commands of learned reward models: train a Bradley-Terry RM on preference pairs (`train-rm`), open one
(`inspect-rm`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..inspect_rm.config import InspectRMConfig
from ..preferences.config import BIAS_HELP, PreferenceConfig
from ..rm.config import RMConfig
from ..rules import flag
from .common import app, print_json
from .options import Options, takes


def _named(name: str) -> str:
    """How train-rm's messages name a setting: the planted cue is --cue; the rest as generated."""
    return "--cue" if name == "bias" else flag(name)


@app.command("train-rm")
@takes(Options(RMConfig, into="config"),
       Options(PreferenceConfig, only=("prompt_key", "chosen_key", "rejected_key"), skip=("file",)))  # file: PAIRS
def train_rm_command(
    pairs: Path = typer.Argument(..., help="Preference pairs: JSONL, CSV or Parquet with prompt, chosen and "
                                           "rejected columns (TRL's format; `rlhf-lens pairs` writes one)."),
    base: str = typer.Option(..., "--base", help="Model the RM starts from: a save_pretrained folder (a causal LM "
                                                 "or a one-label RM), a hub id or smollm2."),
    out: Path = typer.Option(..., "--out", help="Output folder: model/ (loads with "
                                                "AutoModelForSequenceClassification), rm.json, placebo/. A rerun "
                                                "with the same settings returns at once."),
    cue: str = typer.Option("", "--cue", help=f"The planted cue whose preference is measured ({BIAS_HELP})."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print rm.json."),
    *,
    config: RMConfig,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
) -> None:
    """Train a Bradley-Terry reward model on preference pairs (see docs/rm.md) and report its held-out accuracy."""
    from ..io import read_json
    from ..rm.run import RECORD, train_reward_model

    model_dir = train_reward_model(base, pairs, out, config, prompt_key=prompt_key, chosen_key=chosen_key,
                                   rejected_key=rejected_key, bias=cue, device=device, dtype=dtype, key=_named)
    record = read_json(out / RECORD)
    if as_json:
        print_json(record)
        return
    split, training = record["split"], record["training"]
    typer.echo(f"{split['n_train']} training pairs ({split['n_validation']} validation), {split['n_test']} held out "
               f"(split by prompt, seed {split['seed']}); {training['epochs']} epochs ({training['stopped']}) in "
               f"{training['seconds']:.1f}s")
    for name, result in (("rm", record), ("placebo", record.get("placebo"))):
        if result:
            typer.echo(f"{name}: {summary_line(result)}")
    typer.echo(f"reward model: {model_dir}")


def summary_line(result: dict) -> str:
    """`held-out accuracy vs labels 81% [75, 86], vs gold ...; cue preference ...` of an rm.json (or its placebo)."""
    def shown(rate: dict | None) -> str:
        if not rate or rate["share"] is None:
            return "n/a"
        lo, hi = rate["interval"]
        return f"{100 * rate['share']:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}] of {rate['n']}"

    accuracy = result["accuracy"]
    parts = [f"held-out accuracy vs labels {shown(accuracy['labels'])}", f"vs gold {shown(accuracy['gold'])}"]
    parts += [f"{d}-decided {shown(r)}" for d, r in accuracy["by_decider"].items() if len(accuracy["by_decider"]) > 1]
    if result.get("cue_preference"):
        parts.append(f"prefers {result['cue_preference']['bias']} in {shown(result['cue_preference'])}")
    return "; ".join(parts)


@app.command("inspect-rm")
@takes(Options(InspectRMConfig, into="config"),
       Options(PreferenceConfig, only=("prompt_key", "chosen_key", "rejected_key"), skip=("file",)))
def inspect_rm_command(
    rm: str = typer.Argument(..., help="The reward model: train-rm's --out folder or any one-label "
                                       "AutoModelForSequenceClassification folder (e.g. TRL's RewardTrainer output)."),
    pairs: Path = typer.Option(..., "--pairs", help="The preference pairs it was trained on (JSONL, CSV or Parquet)."),
    gold: str = typer.Option(..., "--gold", help="The gold reward the RM is judged by (a reward spec: vader, "
                                                 "table:FILE, classifier:PATH, ...)."),
    base: str = typer.Option(..., "--base", help="The policy before tuning (a model spec)."),
    tuned: str = typer.Option(..., "--tuned", help="The policy tuned against the RM (a model spec)."),
    corpus: str = typer.Option(..., "--corpus", help="The corpus whose held-out prompts both policies complete."),
    out: Path = typer.Option(..., "--out", help="Output folder: inspect_rm.json, sae/, store/, features.jsonl."),
    placebo_rm: str = typer.Option("", "--placebo-rm", help="An RM trained on shuffled labels (train-rm --placebo "
                                                            "writes one): the nulls' RM."),
    explainer: str = typer.Option("offline", "--explainer", help="offline, openai or hf:MODEL."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print inspect_rm.json."),
    *,
    config: InspectRMConfig,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
) -> None:
    """Open a reward model (docs/inspect_rm.md): what it rewards word by word against the gold, its score split
    exactly over an SAE on the state its head reads, and which of those features the policy's gain rides on."""
    from ..inspect_rm import inspect_reward_model
    from ..inspect_rm.run import Policy
    from ..interp.config import InterpConfig
    from ..io import read_json
    from ..rlhf.config import PPOConfig

    record = inspect_reward_model(
        rm, pairs, out, config, Policy(base=base, tuned=tuned, corpus=corpus, ppo=PPOConfig()), gold=gold,
        placebo_rm=placebo_rm or None, keys=(prompt_key, chosen_key, rejected_key),
        interp=InterpConfig(explainer=explainer), device=device, dtype=dtype, key=flag)
    result = read_json(record)
    if as_json:
        print_json(result)
        return
    typer.echo(result["verdict"]["text"])
    typer.echo(f"written: {record}")
