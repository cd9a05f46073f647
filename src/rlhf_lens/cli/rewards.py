"""Commands of rewards and RLHF: tune a model with PPO (`rlhf`), score texts (`reward`), serve a reward over
HTTP (`serve-reward`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..errors import UserError
from ..rlhf.config import PPOConfig, check_config
from ..rules import flag
from ..sections import GoldSection
from ..serve import ServeConfig
from .common import REWARD, app
from .options import Options, takes


@app.command()
@takes(REWARD, Options(PPOConfig, into="config", names={"adaptive_kl": "--adaptive-kl/--fixed-kl",
                                                         "score_query": "--score-query/--score-response"}),
       Options(GoldSection, names={"spec": "--gold"}, helps={"spec": (
           "Gold reward (any reward spec: vader, sentiment, table:FILE, classifier:MODEL, rm:PATH): every held-out "
           "evaluation along the tune (--eval-every) scores the completions by it beside --reward, and gold.json "
           "says whether the tune overoptimised the reward. Empty: none.")}))
def rlhf(
    base: str = typer.Option(..., "--base", help="Base model: a save_pretrained folder, a hub id or smollm2."),
    corpus: str = typer.Option(..., "--corpus", help="Prompt corpus: imdb, pang-lee, pang-lee-reviews, "
                                                      "pang-lee-sentences or a file (train split: prompts; test: eval)."),
    out: Path = typer.Option(..., "--out", help="Output folder (model/, log.jsonl, ppo.png, eval.json, evals.jsonl, gold.json). "
                                                     "Rerun to resume."),
    *,
    reward: str,
    config: PPOConfig,
    gold: str,
) -> None:
    """Fine-tune a causal LM with PPO against a reward (TRL 0.7 semantics, see docs/rlhf.md); with --gold, every
    evaluation (--eval-every) scores the completions by that gold too, and gold.json says whether the tune
    overoptimised the reward."""
    from ..io import read_json
    from ..rlhf import train_ppo

    check_config(config, flag)
    GoldSection(spec=gold).check(lambda name: "--gold")
    model_dir = train_ppo(base, reward, corpus, out, config, gold=gold, gold_key=lambda name: "--gold")
    result = read_json(out / "eval.json")
    b, t = result["base"], result["tuned"]
    typer.echo(f"mean reward on {result['n']} held-out prompts: base {b['mean']:+.3f} (se {b['se']:.3f}, "
               f"{100 * b['positive_frac']:.0f}% positive) -> tuned {t['mean']:+.3f} (se {t['se']:.3f}, "
               f"{100 * t['positive_frac']:.0f}% positive); final KL {result['final_kl']:.3g}")
    if "gold" in result:
        g = result["gold"]
        typer.echo(f"gold ({g['spec']}): base {g['base']['mean']:+.3f} (se {g['base']['se']:.3f}) -> tuned "
                   f"{g['tuned']['mean']:+.3f} (se {g['tuned']['se']:.3f})")
    if (out / "gold.json").is_file():
        typer.echo(read_json(out / "gold.json")["verdict"])
    typer.echo(f"tuned model: {model_dir}")


@app.command("reward")
@takes(REWARD)
def reward_command(
    texts: list[str] = typer.Argument(None, help="Texts to score (or use --file)."),
    file: Path = typer.Option(None, "--file", help="Score each non-empty line of this UTF-8 file ('-': stdin)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of numbers, in input order."),
    device: str = typer.Option("cpu", help="Device for a classifier reward: cpu or cuda."),
    *,
    reward: str,
) -> None:
    """Score texts with a reward: one number per text, in input order."""
    from ..rewards import load_reward

    items = list(texts or [])
    if file is not None:
        if str(file) == "-":
            lines = sys.stdin.read().splitlines()
        elif not file.is_file():
            raise UserError(f"--file {file} does not exist; give a text file with one text per line")
        else:
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise UserError(f"--file {file} is not UTF-8 text") from None
        items += [line for line in lines if line.strip()]
    if not items:
        raise UserError("no text to score; give texts as arguments or --file FILE")
    scorer = load_reward(reward, device=device)
    info = getattr(scorer, "info", {})
    if "test_accuracy" in info:
        typer.echo(f"sentiment classifier: held-out accuracy {info['test_accuracy']:.3f} on {info['n_test']} "
                   f"documents of {info['corpus']}", err=True)
    scores = scorer(items)
    if as_json:
        typer.echo(json.dumps(scores))
    else:
        for score in scores:
            typer.echo(f"{score:.6g}")


@app.command("serve-reward")
@takes(REWARD, Options(ServeConfig, into="config"))
def serve_reward(
    device: str = typer.Option("cpu", help="Device for a classifier reward: cpu or cuda."),
    *,
    reward: str,
    config: ServeConfig,
) -> None:
    """Serve a reward over HTTP for other trainers (OpenRLHF's POST /get_reward; GET /health). See docs/scale.md."""
    from ..serve import serve

    def ready(server) -> None:
        info = getattr(server.reward, "info", {})
        if "test_accuracy" in info:
            typer.echo(f"sentiment classifier: held-out accuracy {info['test_accuracy']:.3f}", err=True)
        # One line, flushed, so a script (or a test) can wait for it.
        print(f"serving {reward} on {server.url}", flush=True)

    serve(reward, config, device=device, ready=ready)
    typer.echo("stopped serving", err=True)
