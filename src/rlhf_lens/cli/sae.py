"""Commands of sparse autoencoders and their dictionaries: train them (`train-sae`), compare two (`mmcs`), and
check them on planted ground truth (`synthetic`, `recovery`)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..config import doc
from ..errors import UserError
from ..interp.config import InterpConfig
from ..sae.config import CFG_FILE, SAEConfig
from ..synthetic import SyntheticConfig
from .common import app, print_json
from .options import Options, build, takes


@app.command("train-sae")
@takes(Options(SAEConfig, into="settings", skip=("d_in",), lists=("dict_size", "seed"), required=("dict_size",),
               helps={"dict_size": doc(SAEConfig, "dict_size") + " Comma-separated sizes (e.g. 512,1024) train "
                                                                  "together in one pass.",
                      "seed": doc(SAEConfig, "seed") + " Comma-separated seeds train together."}))
def train_sae_command(
    acts: Path = typer.Argument(..., help="Activations: a safetensors file with key 'activations' [n, d], or an activation store folder (with --layer)."),
    out: Path = typer.Option(..., "--out", help="SAE folder (cfg.json, sae_weights.safetensors, metrics.json); with several sizes or seeds, the parent of OUT/m{size}-s{seed}. A rerun resumes."),
    layer: int = typer.Option(None, "--layer", help="Layer to read from an activation store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics of each SAE as JSON."),
    *,
    settings: dict,
) -> None:
    """Train sparse autoencoders (default: the paper's tied ReLU SAE) on stored activations."""
    from ..sae import open_source, train_saes

    sizes, seeds = settings["dict_size"], settings["seed"]
    if not sizes or not seeds:
        raise UserError("--dict-size and --seed need at least one integer each")
    source = open_source(acts, layer)
    configs = [build(SAEConfig, settings, d_in=source.d, dict_size=size, seed=s) for size in sizes for s in seeds]
    single = len(configs) == 1
    out_dirs = [out] if single else [out / f"m{c.dict_size}-s{c.seed}" for c in configs]
    saes = train_saes(source, configs, out_dirs, metadata={"source": str(acts), "layer": layer})
    rows = [{"sae": str(path), **sae.metrics} for path, sae in zip(out_dirs, saes)]
    if as_json:
        print_json(rows if not single else rows[0])
        return
    for m in rows:
        typer.echo(f"{m['sae']}: mse {m['mse']:.4g}  fvu {m['fvu']:.3f}  L0 {m['mean_l0']:.1f}  dead {100 * m['dead_fraction']:.0f}%"
                   + (f"  l1 {m['l1']:.3g}" if m.get("l1") is not None else "")
                   + (f"  {m['tokens_per_s']:.0f} tokens/s" if m.get("tokens_per_s") else "")
                   + f"  {m['steps']} steps, stopped: {m['stop_reason']}"
                   + ("" if m.get("converged") else " (not converged)"))


@app.command("mmcs")
@takes(Options(InterpConfig, only=("top_k",), helps={
    "top_k": "How many features of SAE_A with the highest max cosine to list (the paper: 10)."}))
def mmcs_command(
    sae_a: Path = typer.Argument(..., help="SAE folder whose features are scored (paper: the small dictionary; across models: the tuned one)."),
    sae_b: Path = typer.Argument(..., help="SAE folder searched for each feature's best match (the large dictionary, or the base model's)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"mmcs": x, "top_features": [{"feature": i, "max_cosine": c, "match": j}, ...]}.'),
    hungarian: bool = typer.Option(False, "--hungarian", help="Add a one-to-one (Hungarian) matching of the two dictionaries."),
    new_below: float = typer.Option(None, "--new-below", help="List features of SAE_A whose max cosine is below this (no close counterpart in SAE_B), e.g. 0.7."),
    allow_different_layers: bool = typer.Option(False, "--allow-different-layers", help="Compare SAEs whose cfg.json record different blocks (refused otherwise: features of different blocks are not the same kind of thing); a warning is printed."),
    *,
    top_k: int,
) -> None:
    """Mean max cosine similarity of SAE_A's features against SAE_B, and the best-matched features."""
    from ..dictionaries import compare
    from ..progress import console

    block_a, block_b = recorded_block(sae_a), recorded_block(sae_b)
    if block_a is not None and block_b is not None and block_a != block_b:
        what = f"{sae_a} encodes block {block_a} and {sae_b} block {block_b} (their cfg.json)"
        if not allow_different_layers:
            raise UserError(f"{what}: MMCS compares dictionaries of the same block; give SAEs of one block, or "
                            "--allow-different-layers to compare them anyway")
        console.print(f"[yellow]warning: {what}; comparing them as --allow-different-layers asks[/yellow]")
    result = compare(sae_a, sae_b, top_k=top_k, hungarian=hungarian, new_below=new_below)
    if as_json:
        print_json(result)
        return
    typer.echo(f"MMCS {result['mmcs']:.4f}  ({result['size_a']} features of {sae_a} vs {result['size_b']} of {sae_b}, d={result['d']})")
    for row in result["top_features"]:
        typer.echo(f"  feature {row['feature']:>6}  max cosine {row['max_cosine']:.4f}  match {row['match']}")
    if hungarian:
        typer.echo(f"one-to-one matching: mean cosine {result['hungarian']['mean_cosine']:.4f} over {len(result['hungarian']['pairs'])} pairs")
    if new_below is not None:
        new = result["new_features"]
        typer.echo(f"{len(new)} features of {sae_a} with max cosine < {new_below:g}"
                   + (": " + ", ".join(str(r["feature"]) for r in new[:50]) + (" ..." if len(new) > 50 else "") if new else ""))


BLOCK_NAME = re.compile(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)\.")
"""A block in a hook name (SAELens: blocks.3.hook_mlp_out; model paths: gpt_neox.layers.3.mlp)."""


def recorded_block(sae_dir: Path) -> int | None:
    """The block whose activations an SAE folder's cfg.json says it was trained on: `metadata.layer` (train-sae,
    a run's SAEs), SAELens's `hook_layer`, or the block in its `hook_name`; None when it does not say."""
    from ..io import read_json

    path = Path(sae_dir) / CFG_FILE
    if not path.is_file():
        return None  # not an SAE folder: `compare` says so
    cfg = read_json(path)
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for value in (metadata.get("layer"), cfg.get("hook_layer"), metadata.get("hook_layer")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    for name in (metadata.get("hook_name"), cfg.get("hook_name")):
        found = BLOCK_NAME.search(name) if isinstance(name, str) else None
        if found:
            return int(found.group(1))
    return None


@app.command("synthetic")
@takes(Options(SyntheticConfig, into="config"))
def synthetic_command(
    out: Path = typer.Option(..., "--out", help="safetensors file to write: activations [n, d] and ground_truth [F, d]."),
    *,
    config: SyntheticConfig,
) -> None:
    """Write activations made from known sparse feature directions in superposition (a ground-truth check for SAEs)."""
    from ..synthetic import write_synthetic

    write_synthetic(config, out)
    typer.echo(f"{config.n} rows of width {config.d} from {config.features} features (true mean L0 "
               f"{config.features * config.sparsity:.2f}) in {out}")


@app.command("recovery")
def recovery_command(
    sae_dir: Path = typer.Argument(..., help="SAE folder (the small dictionary when --with is given)."),
    ground_truth: Path = typer.Argument(..., help="File written by `rlhf-lens synthetic` (key ground_truth [F, d])."),
    with_: Path = typer.Option(None, "--with", help="Second SAE folder (the large dictionary): also report how many top-MMCS features are true directions."),
    threshold: float = typer.Option(0.9, "--threshold", help="Cosine at which a true direction counts as recovered."),
    top_k: int = typer.Option(10, "--top-k", help="Top-MMCS features to check (with --with)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """How many known feature directions an SAE recovers, and how real its top-MMCS features are."""
    from ..synthetic import recovery

    report = recovery(sae_dir, ground_truth, pair=with_, threshold=threshold, top_k=top_k)
    if as_json:
        print_json(report)
        return
    for key in ("dictionary", "pair"):
        if key in report:
            r = report[key]
            typer.echo(f"{r['sae']}: recovers {r['recovered']}/{report['ground_truth_features']} true directions "
                       f"(cos >= {threshold:g}), mean best cosine {r['gt_mmcs']:.3f}")
    if "top_features" in report:
        real = sum(row["real"] for row in report["top_features"])
        typer.echo(f"MMCS {report['mmcs']:.4f}; top-{len(report['top_features'])} features: {real} are true directions")
