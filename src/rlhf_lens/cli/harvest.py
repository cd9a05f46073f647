"""Commands that read the models block by block: which blocks tuning moved (`divergence`) and their MLP
activations over a corpus (`harvest`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..harvest.config import HarvestConfig
from ..rules import flag
from ..sections import DivergenceSection
from .common import app, print_json
from .options import Options, takes


@app.command()
@takes(Options(DivergenceSection, only=("top_n",)))
def divergence(
    base: str = typer.Argument(..., help="Base model: a save_pretrained folder, a hub id or smollm2."),
    tuned: str = typer.Argument(..., help="Tuned model of the same architecture."),
    as_json: bool = typer.Option(False, "--json", help='Print the top-n as JSON: [{"layer": i, "divergence": x}], descending.'),
    plot: Path = typer.Option(None, "--plot", help="Write a bar chart (PNG) of the divergence of every block."),
    detail: bool = typer.Option(False, "--detail", help="Add per-tensor divergences to each block (with --json)."),
    dtype: str = typer.Option("float32", help="Dtype both models are loaded in (the same for both)."),
    device: str = typer.Option("cpu", help="Device to load the models on: cpu or cuda."),
    *,
    top_n: int,
) -> None:
    """Rank blocks by how far tuning moved their parameters (sum of Frobenius norms of base - tuned)."""
    from ..divergence import divergence_from_specs, divergence_spread, plot_divergence, top_layers

    DivergenceSection(top_n=top_n).check(flag)  # before loading two models
    rows = divergence_from_specs(base, tuned, dtype=dtype, device=device, detail=detail)
    chosen = top_layers(rows, top_n)
    if plot is not None:
        plot_divergence(rows, plot, top_n=top_n)
    if as_json:
        print_json(rows[:len(chosen)])
        return
    spread = divergence_spread(rows)
    for row in rows:
        mark = "*" if row["layer"] in chosen else " "
        typer.echo(f"{mark} block {row['layer']:>3}  {row['divergence']:.6g}")
    typer.echo(f"top {len(chosen)}: {','.join(map(str, chosen))}   spread: min {spread['min']:.4g}, "
               f"max {spread['max']:.4g}, std/mean {100 * spread['cv']:.2g}%")


@app.command("harvest")
@takes(Options(HarvestConfig, into="config", required=("layers", "corpus")))
def harvest_command(
    model: str = typer.Argument(..., help="Model to harvest: a save_pretrained folder, a hub id or smollm2."),
    out: Path = typer.Option(..., "--out", help="Folder of the activation store (created; a rerun resumes it)."),
    *,
    config: HarvestConfig,
) -> None:
    """Collect MLP activations of chosen blocks over a corpus split into a sharded activation store."""
    from ..harvest import harvest

    store = harvest(model, config, out)
    typer.echo(f"{store.n_tokens} tokens from {store.n_docs} documents, layers {','.join(map(str, store.layers))} "
               f"(d={store.d}, {store.dtype}), {len(store.manifest['shards'])} shards in {out}")
