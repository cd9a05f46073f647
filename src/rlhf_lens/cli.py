"""The `rlhf-lens` command line: one command per stage, plus `run` for all of them.

Commands only parse options and compose stage functions; stages never import this module.
Stage modules are imported inside each command so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import __version__
from .config import doc
from .errors import UserError
from .models import TinyModelConfig

app = typer.Typer(
    help="What did RLHF teach this model, and did it learn the reward it was given?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlhf-lens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """rlhf-lens: PPO, layer divergence, sparse autoencoders, MMCS, explanations, utility scores."""


def parse_ints(text: str, what: str = "layers") -> list[int]:
    """'3,4,5' -> [3, 4, 5], with a clear error."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated integers, e.g. 3,4,5 (got {text!r})") from None


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


# --- foundation: data and models ------------------------------------------------------------


@app.command()
def fetch(name: str = typer.Argument(..., help="What to fetch: pang-lee (movie reviews) or smollm2 (check it).")) -> None:
    """Fetch an offline source into the user cache (~/.cache/rlhf-lens, or $RLHF_LENS_CACHE)."""
    if name == "pang-lee":
        from .data import fetch_pang_lee, load_corpus

        folder = fetch_pang_lee()
        corpus = load_corpus("pang-lee")
        typer.echo(f"pang-lee in {folder}: " + ", ".join(f"{s} {len(d)}" for s, d in corpus.splits.items()))
    elif name == "smollm2":
        from .models import smollm2_path

        folder, gguf = smollm2_path()
        typer.echo(f"smollm2: {folder / gguf}")
    else:
        raise UserError(f"unknown source {name!r}; use pang-lee or smollm2")


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Option(..., "--out", help="Folder to save the model and tokenizer in (save_pretrained layout)."),
    corpus: str = typer.Option("pang-lee", help="Corpus name or file to train the BPE tokenizer (and pretrain) on."),
    layers: int = typer.Option(TinyModelConfig.layers, help=doc(TinyModelConfig, "layers")),
    width: int = typer.Option(TinyModelConfig.width, help=doc(TinyModelConfig, "width")),
    heads: int = typer.Option(TinyModelConfig.heads, help=doc(TinyModelConfig, "heads")),
    vocab_size: int = typer.Option(TinyModelConfig.vocab_size, help=doc(TinyModelConfig, "vocab_size")),
    pretrain_steps: int = typer.Option(TinyModelConfig.pretrain_steps, help=doc(TinyModelConfig, "pretrain_steps")),
    seed: int = typer.Option(TinyModelConfig.seed, help=doc(TinyModelConfig, "seed")),
) -> None:
    """Build a tiny GPT-NeoX (Pythia architecture) with a BPE tokenizer trained on a corpus."""
    from .data import load_corpus
    from .models import build_tiny_model, save_model

    config = TinyModelConfig(layers=layers, width=width, heads=heads, vocab_size=vocab_size,
                             pretrain_steps=pretrain_steps, seed=seed)
    model, tokenizer = build_tiny_model(load_corpus(corpus).texts("train"), config)
    save_model(model, tokenizer, out)
    typer.echo(f"tiny GPT-NeoX ({layers} blocks, width {width}) saved to {out}")


# --- rewards and RLHF (rewards.py, rlhf.py) ----------------------------------------------------
# [section: rlhf]

# --- divergence and harvest (divergence.py, harvest.py, store.py) -------------------------------
# [section: harvest]

# --- sparse autoencoders and dictionaries (sae.py, dictionaries.py, synthetic.py) ---------------
# [section: sae]

# --- explanations and utility scores (interp/) ------------------------------------------------
# [section: interp]

# --- the whole pipeline (pipeline.py, report.py) ------------------------------------------------
# [section: pipeline]


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2, without a traceback."""
    try:
        app(args=argv, prog_name="rlhf-lens")
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
