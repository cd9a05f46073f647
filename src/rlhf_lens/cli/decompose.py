"""The decomposition of what tuning changed (`decompose`): a diff-SAE on the tuned - base activations of the same
tokens, the shift of a base SAE's latents, optionally a crosscoder (rlhf_lens.decompose, docs/diff.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..decompose.config import DecomposeConfig, check_decompose_config
from ..diff.config import DiffConfig
from ..errors import UserError
from ..harvest.config import HarvestConfig
from ..interp.config import ExampleConfig, InterpConfig, LLMConfig, check_aggregate
from ..rules import flag
from .common import REWARD, app
from .interp import EXPLAINER, UTILITY
from .options import Options, parse_ints, takes


def parse_block_folders(items: list[str]) -> dict[int, str]:
    """['19=saes/l19', '21=saes/l21'] -> {19: 'saes/l19', 21: 'saes/l21'}, with a clear error."""
    folders: dict[int, str] = {}
    for item in items:
        block, sep, folder = item.partition("=")
        if not sep or not block.strip().isdigit() or not folder.strip():
            raise UserError(f"--base-sae must be BLOCK=FOLDER, e.g. 19=saes/base/layer19/m576-s0 (got {item!r})")
        if int(block) in folders:
            raise UserError(f"--base-sae names block {int(block)} twice; give one SAE folder per block")
        folders[int(block)] = folder.strip()
    return folders


@app.command("decompose")
@takes(REWARD, Options(DecomposeConfig, into="config"), Options(DiffConfig, only=("prompts", "new_tokens")),
       *EXPLAINER,
       Options(ExampleConfig, into="examples", names={"seed": "--examples-seed"}),
       Options(HarvestConfig, only=("split",), helps={"split": "Corpus split the steering prompts come from."}),
       UTILITY)
def decompose_command(
    base: str = typer.Argument(..., help="Base model (steered by the top latents): a save_pretrained folder, a hub "
                                         "id or smollm2."),
    base_acts: Path = typer.Option(..., "--base-acts", help="Activation store of the base model (`rlhf-lens harvest`)."),
    tuned_acts: Path = typer.Option(..., "--tuned-acts", help="Activation store of the tuned model on the same tokens "
                                                              "(the same corpus, split and harvest settings)."),
    base_sae: list[str] = typer.Option(..., "--base-sae", help="BLOCK=FOLDER: an SAE trained on the base model's "
                                                               "activations at that block (repeat per block)."),
    corpus: str = typer.Option(..., "--corpus", help="Corpus the held-out steering prompts come from."),
    out: Path = typer.Option(..., "--out", help="Folder for decompose.json and the diff-SAEs (docs/diff.md)."),
    layers: str = typer.Option("", "--layers", help="Blocks to decompose, e.g. 19,21 (default: every --base-sae block)."),
    text_column: str = typer.Option("text", "--text-column", help="Text column of a file corpus."),
    placebo_acts: Path = typer.Option(None, "--placebo-acts", help="Activation store of a placebo tune, decomposed "
                                                                   "the same way beside the tuned model."),
    device: str = typer.Option("cpu", help="Device for the models and SAEs: cpu or cuda."),
    dtype: str = typer.Option("float32", help="Dtype the base model is loaded in."),
    *,
    reward: str,
    config: DecomposeConfig,
    prompts: int,
    new_tokens: int,
    explainer: str,
    llm: LLMConfig,
    examples: ExampleConfig,
    split: str,
    table: str,
    aggregate: str,
) -> None:
    """Decompose what tuning changed, feature by feature: diff-SAE latents (explained, scored, steered against random
    directions), the shift of a base SAE's latents, optionally a crosscoder."""
    from ..decompose.run import DECOMPOSE_JSON, decompose_models
    from ..interp.config import check_explainer
    from ..io import MARKER, check_output_dir, write_text

    check_decompose_config(config, flag)
    check_aggregate(aggregate, flag)
    check_explainer(explainer, flag)
    examples.check(flag)
    base_saes = parse_block_folders(base_sae)
    blocks = parse_ints(layers) if layers.strip() else sorted(base_saes)
    for path, what in ((base_acts, "--base-acts"), (tuned_acts, "--tuned-acts"), (placebo_acts, "--placebo-acts"),
                       *((Path(folder), f"--base-sae {block}=") for block, folder in base_saes.items())):
        if path is not None and not Path(path).is_dir():
            raise UserError(f"{what} {path}: no such folder")
    target = check_output_dir(out)  # a folder of the user's files, a link or `--out .` fails now, not after training
    target.mkdir(parents=True, exist_ok=True)
    write_text(target / MARKER, "written by rlhf-lens decompose: a rerun resumes here\n")
    result = decompose_models(
        base, base_acts, tuned_acts, base_saes, blocks, target, corpus, reward, config,
        interp=InterpConfig(explainer=explainer, llm=llm), examples=examples, table=table, aggregate=aggregate,
        prompts=prompts, new_tokens=new_tokens, split=split, text_column=text_column, placebo_store=placebo_acts,
        device=device, dtype=dtype)
    for block in result["blocks"]:
        shift = block["shift"]
        explained = "; ".join(f"{r['feature']}: {r['explanation']}" for r in block["diff_sae"]["features"][:3])
        shifted = (f"{shift['n_shifted']} of {shift['n_latents']} base-SAE latents shift (q <= {shift['level']:g})"
                   if shift else "no base SAE, no shift")
        typer.echo(f"block {block['layer']}: {shifted}; top diff-SAE latents: {explained or 'none explained'}")
    change = result["utility_of_change"]
    if change.get("mean") is not None:
        typer.echo(f"utility of the change: {change['mean']:.3g} ± {change['std']:.2g} ({change['n']} seeds)")
    typer.echo(f"written: {target / DECOMPOSE_JSON}")
