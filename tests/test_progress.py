"""Progress when output goes to a log file: long steps print a line every few seconds (pretraining, the diff's
steering and ranking, SAE training), transformers' own bars stay out, and SAE lines name their folder and count
against a total they do not pass. Each command runs as a user's would, `rlhf-lens ... > log 2>&1`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_user_error

EVERY = 0.2  # seconds between two progress lines in these logs (RLHF_LENS_PROGRESS_EVERY)
TRANSFORMERS_BARS = ("Loading weights", "Writing model shards", "de-quantizing", "it/s]", "\r")


def _logged(log: Path, *args, every: str = str(EVERY)) -> subprocess.CompletedProcess:
    """`rlhf-lens ARGS >> log 2>&1` with progress on (the tests' session sets RLHF_LENS_QUIET=1); the log's text
    is in `.stdout`."""
    env = {**os.environ, "RLHF_LENS_PROGRESS_EVERY": every}
    env.pop("RLHF_LENS_QUIET")
    with log.open("a") as out:
        result = subprocess.run([sys.executable, "-m", "rlhf_lens", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    return subprocess.CompletedProcess(result.args, result.returncode, log.read_text(), "")


def _seconds(clock: str) -> int:
    h, m, s = (int(x) for x in clock.split(":"))
    return 3600 * h + 60 * m + s


def _task_lines(log: str, name: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(name)]


def test_a_long_step_prints_a_line_every_few_seconds_and_transformers_bars_stay_out(tmp_path, corpus_file):
    log = tmp_path / "log"
    model = tmp_path / "tiny"
    made = _logged(log, "tiny-model", "--out", model, "--corpus", corpus_file, "--layers", "2", "--width", "32",
                   "--vocab-size", "300", "--pretrain-steps", "60")
    assert made.returncode == 0, made.stdout
    loaded = _logged(log, "divergence", model, model)  # loads two models
    assert loaded.returncode == 0, loaded.stdout
    text = loaded.stdout
    lines = _task_lines(text, "pretrain tiny model")
    running = [re.search(r": (\d+)/60 \(\d+%\), (\d+:\d\d:\d\d) elapsed", line) for line in lines[:-1]]
    assert lines and all(running), text
    done = re.search(r": 60/60, done in (\d+:\d\d:\d\d)$", lines[-1])
    assert done, lines[-1]
    # A line every EVERY seconds: at least one per second of the step, with no gap of more than two seconds.
    assert len(running) >= max(1, _seconds(done.group(1))), text
    elapsed = [_seconds(m.group(2)) for m in running] + [_seconds(done.group(1))]
    assert all(0 <= b - a <= 2 for a, b in zip(elapsed, elapsed[1:])), elapsed
    assert [int(m.group(1)) for m in running] == sorted(int(m.group(1)) for m in running)
    for noise in TRANSFORMERS_BARS:
        assert noise not in text, f"{noise!r} in the log:\n{text}"


@pytest.fixture(scope="module")
def changed_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with block 1's MLP output moved: a diff has something to steer by."""
    from rlhf_lens.models import load_model, save_model

    model, tokenizer = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.bias += 0.5 * torch.randn(
            model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return save_model(model, tokenizer, tmp_path_factory.mktemp("changed") / "tuned")


def test_the_diffs_steering_and_ranking_show_progress_in_a_log(tmp_path, tiny_model_dir, changed_model, corpus_file):
    log = tmp_path / "log"
    result = _logged(log, "diff", tiny_model_dir, changed_model, "--corpus", corpus_file, "--reward", "vader",
                     "--layers", "1", "--out", tmp_path / "diff", "--max-docs", "12", "--prompts", "8",
                     "--new-tokens", "6", "--alphas", "0,1,2", "--random-directions", "2", "--null-sets", "50",
                     "--rank-spread", "2", "--rank-random", "1")
    assert result.returncode == 0, result.stdout
    # steering: base and tuned, Δ at α 1 and 2, then 2 random directions at the reported α only; ranking: blocks
    # 0, 1 and 2 (the spread's first and last and the analysed one): the base on the ranking's own prompts, then
    # block 1 patched in and one random direction; blocks 0 and 2's parameters did not change (nothing sampled)
    steering = _task_lines(result.stdout, "diff: steering blocks 1")
    ranking = _task_lines(result.stdout, "diff: causal ranking of blocks 0,1,2")
    assert steering and steering[-1].startswith("diff: steering blocks 1: 6/6, done in"), result.stdout
    assert ranking and ranking[-1].startswith("diff: causal ranking of blocks 0,1,2: 3/3, done in"), result.stdout
    assert _task_lines(result.stdout, "diff: paired forward passes"), result.stdout
    for noise in TRANSFORMERS_BARS:
        assert noise not in result.stdout, f"{noise!r} in the log:\n{result.stdout}"


def test_sae_lines_name_the_folder_and_count_against_the_cap_they_stop_at(tmp_path):
    """Until converged, the cap is in tokens; every epoch ends with a smaller batch, so the run takes more steps than
    max_tokens / batch size (34 here, not 32): the total shown is the step at which it stops."""
    from safetensors.torch import save_file

    acts = tmp_path / "acts.safetensors"
    save_file({"activations": torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))}, str(acts))
    log, out = tmp_path / "log", tmp_path / "saes"
    # 100 rows held out, 900 train: 15 steps an epoch (the last of 4 rows); 2000 tokens: 2 epochs and 4 steps.
    # No evaluation before the cap (eval every 1000 steps), so both stop there.
    result = _logged(log, "train-sae", acts, "--dict-size", "16", "--seed", "3,4", "--out", out, "--arch", "topk",
                     "--k", "4", "--epochs", "0", "--max-tokens", "2000", "--batch-size", "64", "--holdout", "100",
                     "--eval-every", "1000")
    assert result.returncode == 0, result.stdout
    for seed in (3, 4):
        assert json.loads((out / f"m16-s{seed}" / "metrics.json").read_text())["steps"] == 34
        lines = _task_lines(result.stdout, f"SAE m16-s{seed}")
        counts = [re.search(r": (\d+)/(\d+)", line).groups() for line in lines]
        assert lines and all(int(total) == 34 and int(n) <= 34 for n, total in counts), result.stdout
        assert re.search(r": 34/34, done in", lines[-1]), lines[-1]


def test_an_sae_of_a_run_is_named_by_its_folder_not_its_init_seed(tmp_path):
    """A run's SAE m64-s0 starts from an init seed hashed from (seed, model, block, size); its lines say m64-s0."""
    from rlhf_lens.sae.config import SAEConfig
    from rlhf_lens.sae.loop import total_steps
    from rlhf_lens.sae.training_run import TrainingRun

    cfg = SAEConfig(d_in=8, dict_size=16, seed=1077878578, data_seed=0, arch="topk", k=4, epochs=0,
                    max_tokens=2000, batch_size=64)
    assert TrainingRun(cfg, tmp_path / "layer2" / "m16-s0", l1=0.0).label == "SAE m16-s0"
    assert TrainingRun(cfg, None, l1=0.0).label == "SAE m=16 s=1077878578"  # no folder: the seed it was given
    assert total_steps(cfg, rows=900) == 34
    assert total_steps(dataclasses.replace(cfg, epochs=3), rows=900) == 45
    assert total_steps(dataclasses.replace(cfg, max_tokens=0), rows=900) is None  # no cap: no total


def test_a_step_that_ends_short_of_its_total_says_where_it_stopped(capsys):
    from rlhf_lens.progress import LogProgress

    with LogProgress(every=60) as bar:
        done = bar.add_task("finished work", total=3)
        short = bar.add_task("converged early", total=10)
        bar.update(done, advance=3)
        bar.update(short, advance=4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("finished work: 3/3, done in 0:00:0")
    assert lines[1].startswith("converged early: 4/10, stopped after 0:00:0")
    with LogProgress(every=60, disable=True) as bar:  # RLHF_LENS_QUIET=1
        bar.update(bar.add_task("quiet", total=1), advance=1)
    assert capsys.readouterr().err == ""


def test_a_bad_progress_interval_is_one_line(tmp_path, corpus_file):
    result = _logged(tmp_path / "log", "tiny-model", "--out", tmp_path / "tiny", "--corpus", corpus_file,
                     "--layers", "1", "--width", "16", "--vocab-size", "280", "--pretrain-steps", "1", every="soon")
    assert_user_error(subprocess.CompletedProcess(result.args, result.returncode, "", result.stdout),
                      "RLHF_LENS_PROGRESS_EVERY must be a number of seconds > 0 (got 'soon')")
    assert not (tmp_path / "tiny").exists()
