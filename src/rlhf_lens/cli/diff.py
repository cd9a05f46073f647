"""The model diff on the same tokens (`diff`): what tuning promotes, read through the reward, checked by
steering (rlhf_lens.diff, docs/diff.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..diff.config import DiffConfig, check_config
from ..rules import flag
from .common import REWARD, app
from .options import Options, parse_ints, takes


@app.command("diff")
@takes(REWARD, Options(DiffConfig, into="config", names={"whole_words": "--whole-words/--any-tokens"}))
def diff_command(
    base: str = typer.Argument(..., help="Base model: a save_pretrained folder, a hub id or smollm2."),
    tuned: str = typer.Argument(..., help="Tuned model of the same architecture and tokenizer."),
    corpus: str = typer.Option(..., "--corpus", help="Corpus name or file the models are compared on."),
    out: Path = typer.Option(..., "--out", help="Folder for diff.json and deltas.safetensors (docs/diff.md)."),
    layers: str = typer.Option("", "--layers", help="Blocks to analyse (steering curve, logit lens), e.g. 1,2 "
                                                    "(default: the last block)."),
    device: str = typer.Option("cpu", help="Device for both models: cpu or cuda."),
    dtype: str = typer.Option("float32", help="Dtype both models are loaded in (the same for both)."),
    *,
    reward: str,
    config: DiffConfig,
) -> None:
    """Compare base and tuned on the same tokens: what tuning promotes, read through the reward, checked by steering."""
    from ..diff.run import DIFF_JSON, diff_models
    from ..io import atomic_dir

    check_config(config, flag)
    chosen = parse_ints(layers) if layers.strip() else None
    # Refused at once, untouched: a folder of the user's files (their own diff.json among them), a link, `--out .`.
    # The diff is written beside it and takes its place when it is complete (a folder this command wrote is replaced).
    with atomic_dir(out) as staging:
        result = diff_models(base, tuned, corpus, reward, chosen, staging, config, device=device, dtype=dtype)
    for name, verdict in result["verdicts"].items():
        typer.echo(f"{name}: {verdict}")
    words = ", ".join(t["word"] for t in result["output"]["promoted"][:10]) or "none"
    typer.echo(f"promoted: {words}")
    typer.echo(f"written: {Path(out) / DIFF_JSON} ({result['seconds']['total']:.1f} s)")
