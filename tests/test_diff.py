"""Model diffing (rlhf_lens.diff): planted changes are found, a self-diff finds nothing, errors are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error, planted_tune, run_cli

PLANTED_BLOCK = 1
PLANT_SCALE = 2.0


def _config(**kw):
    from rlhf_lens.diff.config import DiffConfig

    base = dict(max_docs=24, max_tokens=48, prompts=24, new_tokens=12, alphas=[0.0, 0.25, 0.5, 1.0, 2.0],
                random_directions=4, null_sets=500, top_words=3, rank_spread=3, coherence_kl=0.4)
    base.update(kw)
    return DiffConfig(**base)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    """A copy of the tiny model whose block 1 MLP bias adds a vector pushing 4 chosen words, and a table of them."""
    root = tmp_path_factory.mktemp("planted")
    tuned, _, words = planted_tune(tiny_model_dir, root, PLANT_SCALE, PLANTED_BLOCK)
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    return {"tuned": tuned, "words": words, "table": table, "root": root}


@pytest.fixture(scope="module")
def planted_diff(planted, tiny_model_dir, corpus_file):
    from rlhf_lens.diff.run import diff_models

    return diff_models(str(tiny_model_dir), str(planted["tuned"]), str(corpus_file), f"table:{planted['table']}",
                       [1, 2], planted["root"] / "diff", _config(save_activations=True))


def test_planted_words_are_promoted(planted, planted_diff):
    out = planted_diff["output"]
    assert {t["word"] for t in out["promoted"]} == set(planted["words"])
    # a table of the 3 planted words only (every other utility 0): a weak check beside tests/test_diff_output.py's
    # real-VADER ones
    assert out["promoted_null"]["p"] <= 0.05 and out["promoted_null"]["test"] == "frequency-matched random token sets"
    assert out["verdict"].startswith("tuning promotes reward-laden words")
    assert out["kl"]["mean"] > 0 and len(out["contexts"]) > 0
    ctx = out["contexts"][0]
    assert len(ctx["tokens"]) == len(ctx["kl_per_token"]) and max(ctx["kl_per_token"]) == pytest.approx(ctx["kl"])


def test_planted_delta_sits_at_the_planted_block(planted_diff):
    blocks = {b["layer"]: b for b in planted_diff["blocks"]}
    assert blocks[0]["delta_norm"] == 0
    assert blocks[PLANTED_BLOCK]["delta_norm"] == pytest.approx(PLANT_SCALE, rel=1e-4)
    # the later block carries the change along the residual stream, but adds little of its own
    assert blocks[2]["delta_norm"] > 0.5 * PLANT_SCALE
    assert blocks[2]["own_norm"] < 0.2 * blocks[PLANTED_BLOCK]["own_norm"]


def test_steering_curve_shape(planted, planted_diff):
    """The calibrated steering test is in tests/test_diff_steering.py; here the diff's curves carry its fields."""
    curve = next(c for c in planted_diff["steering"] if c["layer"] == PLANTED_BLOCK)
    assert curve["alpha"] > 0 and curve["random"]["alpha"] == curve["alpha"]
    assert len(curve["random"]["rewards"]) == 4 and curve["test"]["family"] == 2
    assert planted_diff["verdicts"][f"steering_{PLANTED_BLOCK}"] == curve["verdict"]
    # on the scoring prompts (half the unread documents; the other half ranks blocks) 2 of the 3 planted words
    # reach the steered model's top 3, among every word-start token
    assert len({t["word"] for t in curve["promoted"]} & set(planted["words"])) >= 2


def test_causal_ranking_puts_the_planted_block_first(planted_diff):
    from rlhf_lens.diff.ranking import top_blocks

    rows = planted_diff["ranking"]["rows"]
    assert rows[0]["layer"] == PLANTED_BLOCK and rows[0]["beyond"]  # tests/test_diff_ranking.py: the rest
    assert top_blocks(planted_diff, 1) == [PLANTED_BLOCK]


def test_files_written(planted, planted_diff):
    from rlhf_lens.diff.run import load_deltas
    from rlhf_lens.store import ActivationStore

    folder = planted["root"] / "diff"
    on_disk = json.loads((folder / "diff.json").read_text())
    assert on_disk["format"] == "rlhf-lens.diff" and on_disk["verdicts"] == planted_diff["verdicts"]
    tensors = load_deltas(folder)
    assert tensors["delta"].shape == (3, 32) and tensors["own"].shape == (3, 32)
    base, tuned = ActivationStore(folder / "acts" / "base"), ActivationStore(folder / "acts" / "tuned")
    assert base.layers == [1, 2] and base.n_tokens == planted_diff["n_tokens"]
    diff = next(tuned.iter_shards(1)).acts - next(base.iter_shards(1)).acts
    assert torch.allclose(diff.mean(0), tensors["delta"][1], atol=1e-4)


def test_report_section_renders(planted_diff):
    from rlhf_lens.report.diff import diff_html, diff_markdown

    html = diff_html(planted_diff)
    assert "data:image/png;base64," in html and planted_diff["output"]["promoted"][0]["piece"].strip() in html
    md = diff_markdown(planted_diff)
    assert "promotes reward-laden words" in md and "| block |" in md


def test_self_diff_finds_nothing(tiny_model_dir, corpus_file, tmp_path, planted):
    from rlhf_lens.diff.run import diff_models

    result = diff_models(str(tiny_model_dir), str(tiny_model_dir), str(corpus_file), f"table:{planted['table']}",
                         [1], tmp_path / "self", _config(alphas=[0.0, 1.0], null_sets=100))
    assert all(b["delta_norm"] == 0 and b["token_diff_norm"] == 0 for b in result["blocks"])
    assert result["output"]["promoted"] == [] and result["output"]["demoted"] == []
    assert result["output"]["kl"]["max"] == 0
    assert result["output"]["verdict"].startswith("no change")
    assert result["steering"][0]["verdict"].startswith("no change")
    assert result["steering"][0]["lens"]["verdict"].startswith("no change")
    assert result["ranking"]["verdict"].startswith("no block")


def test_cli_diff_end_to_end(tiny_model_dir, corpus_file, tmp_path, planted):
    out = tmp_path / "cli"
    result = run_cli("diff", tiny_model_dir, planted["tuned"], "--corpus", corpus_file, "--reward",
                     f"table:{planted['table']}", "--layers", "1", "--out", out, "--max-docs", "12",
                     "--prompts", "8", "--new-tokens", "6", "--alphas", "0,1", "--random-directions", "2",
                     "--null-sets", "50", "--rank-spread", "0", check=True)
    assert "diff.json" in result.stdout
    written = json.loads((out / "diff.json").read_text())
    assert written["layers"] == [1] and written["n_docs"] == 12 and "verdicts" in written
    assert (out / "deltas.safetensors").is_file()
    # a rerun into its own folder writes it again
    run_cli("diff", tiny_model_dir, planted["tuned"], "--corpus", corpus_file, "--reward", f"table:{planted['table']}",
            "--layers", "1", "--out", out, "--max-docs", "6", "--prompts", "4", "--new-tokens", "4", "--alphas", "0",
            "--random-directions", "1", "--null-sets", "20", "--rank-spread", "0", check=True)
    assert json.loads((out / "diff.json").read_text())["n_docs"] == 6


def test_cli_diff_out_refuses_a_folder_it_did_not_write(tiny_model_dir, corpus_file, tmp_path):
    """Before any work and changing nothing: a folder of the user's files (their own diff.json), `--out .`, a link."""
    args = ("diff", tiny_model_dir, tiny_model_dir, "--corpus", corpus_file, "--reward", "vader", "--layers", "1")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "diff.json").write_text('{"my": "own diff"}')
    (mine / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    assert_user_error(run_cli(*args, "--out", mine), str(mine), "did not write")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    only_json = tmp_path / "only-json"
    only_json.mkdir()
    (only_json / "diff.json").write_text('{"my": "own diff"}')
    assert_user_error(run_cli(*args, "--out", only_json), "did not write")
    assert (only_json / "diff.json").read_text() == '{"my": "own diff"}'
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_user_error(run_cli(*args, "--out", link), "symbolic link")
    assert not (tmp_path / "elsewhere").exists()
    import rlhf_lens

    source = str(Path(rlhf_lens.__file__).resolve().parents[1])  # this checkout, from another working folder
    here = subprocess.run([sys.executable, "-m", "rlhf_lens", *map(str, args), "--out", "."], capture_output=True,
                          text=True, cwd=mine, env={**os.environ, "PYTHONPATH": source})
    assert_user_error(here, "current folder")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before


def test_cli_mismatched_tokenizers_fail_in_one_line(tiny_model_dir, corpus_file, tmp_path):
    from rlhf_lens.models import train_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tok = train_tokenizer([line[::-1] for line in Path(corpus_file).read_text().splitlines()], 280)
    for f in other.glob("tokenizer*"):
        f.unlink()
    tok.save_pretrained(other)
    result = run_cli("diff", tiny_model_dir, other, "--corpus", corpus_file, "--reward", "vader", "--layers", "1",
                     "--out", tmp_path / "out")
    assert_user_error(result, "tokenizers give different tokens")
    assert not (tmp_path / "out").exists()


def test_cli_bad_layers_fail_in_one_line(tiny_model_dir, corpus_file, tmp_path):
    result = run_cli("diff", tiny_model_dir, tiny_model_dir, "--corpus", corpus_file, "--reward", "vader",
                     "--layers", "7", "--out", tmp_path / "out")
    assert_user_error(result, "out of range")


def test_a_ppo_tune_on_a_four_word_table_promotes_those_words(tmp_path, tiny_model_dir, corpus_file):
    """The real thing at tiny scale: PPO against a table of four frequent words, then the diff reads the promoted
    words off the outputs, with no explainer: they are the table's words, far above random token sets."""
    from rlhf_lens.diff.run import diff_models
    from rlhf_lens.rlhf import PPOConfig, train_ppo

    table = tmp_path / "four.csv"
    table.write_text("film,1\nmovie,1\nstory,1\nplot,1\n")
    spec = f"table:{table},scale=1"
    tuned = train_ppo(str(tiny_model_dir), spec, str(corpus_file), tmp_path / "ppo",
                      PPOConfig(steps=12, batch_size=32, mini_batch_size=16, ppo_epochs=4, lr=3e-3, warmup_steps=1,
                                init_kl_coef=0.05, eval_prompts=16))
    result = diff_models(str(tiny_model_dir), str(tuned), str(corpus_file), spec, [2], tmp_path / "diff",
                         _config(top_words=4, prompts=16, alphas=[0.0, 1.0], random_directions=2, rank_spread=1))
    promoted = [t["word"] for t in result["output"]["promoted"]]
    # 12 PPO steps move the two most frequent table words most; the other two share the top 4 with function words
    assert set(promoted[:2]) <= {"film", "movie", "story", "plot"}, promoted
    assert result["output"]["promoted_null"]["p"] <= 0.05, result["output"]["promoted_null"]
