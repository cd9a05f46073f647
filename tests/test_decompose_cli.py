"""`rlhf-lens decompose` as a user runs it: harvest both models, train a base SAE, decompose a planted change."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_user_error, plant_direction, run_cli

PLANTED_BLOCK = 1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, corpus_file):
    """Two tuned copies of the tiny model, changed at block 1's MLP: `tuned` scales its output by 1.5 and adds a
    vector aimed at four words (a change that differs from token to token), `constant` only adds the vector (Δ is
    one vector at every token). All three harvested at block 1 on the same tokens; a TopK SAE on the base there."""
    from rlhf_lens.models import load_model, save_model

    model, tok = load_model(str(tiny_model_dir))
    v, words, _ = plant_direction(model, tok, 2.0)
    root = tmp_path_factory.mktemp("decompose-cli")
    mlp = model.gpt_neox.layers[PLANTED_BLOCK].mlp.dense_4h_to_h
    with torch.no_grad():
        mlp.bias += v
    constant = save_model(model, tok, root / "constant")
    with torch.no_grad():
        mlp.weight *= 1.5
    tuned = save_model(model, tok, root / "tuned")
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    for name, spec in (("base", tiny_model_dir), ("tuned", tuned), ("constant", constant)):
        run_cli("harvest", spec, "--out", root / "acts" / name, "--layers", PLANTED_BLOCK, "--corpus", corpus_file,
                "--max-docs", 24, check=True)
    run_cli("train-sae", root / "acts" / "base", "--layer", PLANTED_BLOCK, "--dict-size", 64, "--arch", "topk",
            "--k", 4, "--epochs", 2, "--out", root / "sae", check=True)
    return {"root": root, "tuned": tuned, "table": table, "corpus": corpus_file, "base": tiny_model_dir}


def _decompose(prepared, out, *extra, tuned="tuned"):
    p = prepared
    return run_cli("decompose", p["base"], "--base-acts", p["root"] / "acts" / "base", "--tuned-acts",
                   p["root"] / "acts" / tuned, "--base-sae", f"{PLANTED_BLOCK}={p['root'] / 'sae'}", "--corpus",
                   p["corpus"], "--reward", f"table:{p['table']}", "--table", p["table"], "--out", out,
                   "--diffsae-epochs", 2, "--diffsae-seeds", "0", "--diffsae-k", 2, "--steer-latents", 1,
                   "--steer-random", 2, "--prompts", 8, "--new-tokens", 6, *extra)


def test_decompose_finds_the_planted_change(prepared, tmp_path):
    out = tmp_path / "dec"
    result = _decompose(prepared, out)
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "decompose.json").read_text())
    block = written["blocks"][0]
    assert block["layer"] == PLANTED_BLOCK and written["placebo"] is None
    diff_sae, shift = block["diff_sae"], block["shift"]
    assert diff_sae["top"] and diff_sae["features"] and diff_sae["steering"]["latents"]
    assert all(r["model"] == "diff-sae" and r["explanation"] for r in diff_sae["features"])
    # the MLP output x1.5 (plus a vector): the base SAE's latents read differently on the tuned model's tokens
    assert shift["n_latents"] == 64 and shift["n_shifted"] > 0 and shift["features"]
    assert f"block {PLANTED_BLOCK}:" in result.stdout and "decompose.json" in result.stdout
    again = _decompose(prepared, out)  # a rerun resumes in its own folder (the diff-SAEs are loaded, not retrained)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "decompose.json").read_text())["blocks"] == written["blocks"]


def test_decompose_bad_input_fails_in_one_line_before_any_work(prepared, tmp_path):
    assert_user_error(_decompose(prepared, tmp_path / "a", "--base-sae", "1"), "--base-sae must be BLOCK=FOLDER")
    assert_user_error(_decompose(prepared, tmp_path / "b", "--diffsae-k", 0), "--diffsae-k")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file\n")
    assert_user_error(_decompose(prepared, mine), "did not write")
    assert (mine / "notes.txt").read_text() == "a user's file\n" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_constant_change_leaves_the_diff_sae_nothing_to_explain(prepared, tmp_path):
    """Δ the same vector at every token: the diff-SAE's decoder bias takes all of it, no latent fires; the
    decomposition says so (no latents, no explanations) instead of failing."""
    out = tmp_path / "dec"
    result = _decompose(prepared, out, tuned="constant")
    assert result.returncode == 0, result.stderr
    diff_sae = json.loads((out / "decompose.json").read_text())["blocks"][0]["diff_sae"]
    assert diff_sae["top"] == [] and diff_sae["features"] == []
    assert diff_sae["saes"][0]["mean_l0"] == 0 and diff_sae["mean_delta_norm"] > 0
