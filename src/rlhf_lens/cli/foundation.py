"""Commands of the foundation: offline data and models (`fetch`, `tiny-model`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from ..models_config import TinyModelConfig
from ..rules import flag
from .common import app
from .options import Options, takes


@app.command()
def fetch(name: str = typer.Argument(..., help="What to fetch: pang-lee (movie reviews) or smollm2 (check it).")) -> None:
    """Fetch an offline source into the user cache (~/.cache/rlhf-lens, or $RLHF_LENS_CACHE)."""
    if name == "pang-lee":
        from ..data import fetch_pang_lee, load_corpus

        folder = fetch_pang_lee()
        corpus = load_corpus("pang-lee")
        typer.echo(f"pang-lee in {folder}: " + ", ".join(f"{s} {len(d)}" for s, d in corpus.splits.items()))
    elif name == "smollm2":
        from ..models import smollm2_path

        folder, gguf = smollm2_path()
        typer.echo(f"smollm2: {folder / gguf}")
    else:
        raise UserError(f"unknown source {name!r}; use pang-lee or smollm2")


@app.command("tiny-model")
@takes(Options(TinyModelConfig, into="config"))
def tiny_model(
    out: Path = typer.Option(..., "--out", help="Folder to save the model and tokenizer in (save_pretrained layout)."),
    corpus: str = typer.Option("pang-lee", help="Corpus name or file to train the BPE tokenizer (and pretrain) on."),
    *,
    config: TinyModelConfig,
) -> None:
    """Build a tiny GPT-NeoX (Pythia architecture) with a BPE tokenizer trained on a corpus."""
    from ..data import load_corpus
    from ..io import check_output_dir, check_writable
    from ..models import build_tiny_model, save_model

    config.check(flag)
    check_output_dir(out)  # a folder of the user's files, a link or `--out .` fails now, not after training
    check_writable(out.absolute().parent)
    model, tokenizer = build_tiny_model(load_corpus(corpus).texts("train"), config)
    save_model(model, tokenizer, out)
    typer.echo(f"tiny GPT-NeoX ({config.layers} blocks, width {config.width}) saved to {out}")
