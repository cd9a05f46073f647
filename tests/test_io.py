"""Never lose a user's files: atomic folders, the run lock, and one-line errors for disk and encoding trouble."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.io import (
    LOCK_FILE,
    MARKER,
    atomic_dir,
    atomic_path,
    check_free_space,
    check_output_dir,
    check_writable,
    read_json,
    read_text_file,
    read_toml,
    remove_output,
    run_lock,
    save_safetensors,
    umask,
    write_text,
)


def user_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"thesis.tex": "\\documentclass{article}", "notes.txt": "do not lose me"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def assert_intact(folder: Path, files: dict[str, str]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (folder / name).read_text() == text


def run_in(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lens", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ})


# --- atomic folders ----------------------------------------------------------------------------


def test_tiny_model_refuses_a_folder_of_user_files(tmp_path, corpus_file):
    out = tmp_path / "mine"
    files = user_files(out)
    result = run_cli("tiny-model", "--corpus", corpus_file, "--out", out, "--layers", "1", "--width", "16")
    assert_user_error(result, str(out), "did not write")
    assert len(result.stderr.strip().splitlines()) == 1
    assert_intact(out, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left either


def test_out_dot_fails_cleanly_and_deletes_nothing(tmp_path, corpus_file):
    files = user_files(tmp_path / "work")
    result = run_in(tmp_path / "work", "tiny-model", "--corpus", corpus_file, "--out", ".", "--layers", "1")
    assert_user_error(result, "current folder")
    assert len(result.stderr.strip().splitlines()) == 1
    assert_intact(tmp_path / "work", files)
    # a parent of the current folder is refused the same way
    result = run_in(tmp_path / "work", "tiny-model", "--corpus", corpus_file, "--out", "..", "--layers", "1")
    assert_user_error(result, "current folder")
    assert_intact(tmp_path / "work", files)


def test_rerunning_replaces_the_tools_own_folder_with_normal_permissions(tmp_path, corpus_file):
    out = tmp_path / "tiny"
    args = ("tiny-model", "--corpus", corpus_file, "--out", out, "--layers", "1", "--width", "16",
            "--heads", "2", "--vocab-size", "280")
    run_cli(*args, check=True)
    assert (out / MARKER).is_file() and (out / "config.json").is_file()
    (out / "stale.bin").write_text("from the first run")
    run_cli(*args, "--seed", "1", check=True)
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_atomic_dir_keeps_the_old_folder_when_the_body_fails(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(ValueError), atomic_dir(out) as staging:
        (staging / "a.txt").write_text("second")
        raise ValueError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_accepts_an_empty_folder_and_legacy_known_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as staging:
        (staging / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "data.csv").write_text("old")
    with atomic_dir(legacy, known_files=["data.csv"]) as staging:
        (staging / "data.csv").write_text("new")
    assert (legacy / "data.csv").read_text() == "new"


def test_a_symlinked_target_is_refused(tmp_path):
    real = tmp_path / "real"
    files = user_files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link") as info:
        with atomic_dir(link):
            raise AssertionError("never reached")
    assert "\n" not in str(info.value)
    assert link.is_symlink()
    assert_intact(real, files)
    with pytest.raises(UserError, match="exists and is not a folder"):
        (tmp_path / "file").write_text("x")
        check_output_dir(tmp_path / "file")


def test_remove_output_refuses_a_symlink(tmp_path):
    real = tmp_path / "real"
    files = user_files(real)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "acts").symlink_to(real, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        remove_output(tmp_path / "run" / "acts")
    assert_intact(real, files)
    (tmp_path / "run" / "mine").mkdir()
    remove_output(tmp_path / "run" / "mine")
    assert not (tmp_path / "run" / "mine").exists()


# --- the run lock ------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from rlhf_lens.io import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_holder_fails_at_once_naming_the_pid(tmp_path):
    run_dir = tmp_path / "run"
    proc = _hold(run_dir)
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match=f"in use by another rlhf-lens process \\(pid {proc.pid}\\)"):
            with run_lock(run_dir):
                raise AssertionError("two holders")
        assert time.monotonic() - start < 2
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = _hold(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / LOCK_FILE).read_text().strip() == str(proc.pid)  # the stale record is still there
    with run_lock(run_dir):
        assert (run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
    with run_lock(run_dir):  # released on exit: this process can take it again
        pass


# --- one-line errors ---------------------------------------------------------------------------


def test_latin1_config_is_one_line(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[data]\ncorpus = "critiques-de-cin\xe9ma.txt"\n'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text \\(byte 0xe9") as info:
        read_toml(config)
    assert str(config) in str(info.value)
    with pytest.raises(UserError, match="not UTF-8"):
        read_text_file(config, "config file")
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(UserError, match="bad.json is not UTF-8"):
        read_json(tmp_path / "bad.json")
    # the CLI, whatever reads it, prints one line and no traceback
    assert_user_error(run_cli("run", "--config", config, "--show-config"), "UTF-8")


def test_read_json_checks_the_top_level_type(tmp_path):
    path = tmp_path / "records.json"
    path.write_text("[1, 2]")
    assert read_json(path, expect=list) == [1, 2]
    with pytest.raises(UserError, match="expected a JSON object at the top level, found list"):
        read_json(path, expect=dict)


def test_main_prints_an_escaped_os_error_as_one_line(monkeypatch, capsys):
    from rlhf_lens import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/acts/shard-00003.safetensors")

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/run/acts/shard-00003.safetensors: no space left on device (ENOSPC)"]

    def bug(*args, **kwargs):
        raise ValueError("a real bug")

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(ValueError, match="a real bug"):  # bugs keep their traceback
        cli.main([])


def test_zero_row_store_is_a_clear_error_and_leaves_no_checkpoint(tmp_path):
    from rlhf_lens.io import write_json

    acts = tmp_path / "acts"
    write_json(acts / "manifest.json", {
        "format": "rlhf-lens.activations", "version": 1, "model": "m", "tokenizer": "t", "corpus": "c",
        "split": "test", "layers": [1], "d": 8, "dtype": "float32", "n_docs": 3, "n_tokens": 0,
        "complete": True, "shards": [{"file": "shard-00000.safetensors", "doc_start": 0, "doc_end": 3,
                                      "n_tokens": 0}]})
    import torch

    save_safetensors(acts / "shard-00000.safetensors", {
        "layer1": torch.zeros(0, 8), "token_ids": torch.zeros(0, dtype=torch.int32),
        "doc": torch.zeros(0, dtype=torch.int64), "pos": torch.zeros(0, dtype=torch.int32)})
    result = run_cli("train-sae", acts, "--layer", "1", "--dict-size", "16", "--out", tmp_path / "sae")
    assert_user_error(result, "no activations", str(acts))
    assert not (tmp_path / "sae").exists()


# --- read-only folders and full disks ------------------------------------------------------------


@pytest.fixture
def mounted(tmp_path):
    """Mount helpers (tmpfs of a given size, read-only bind); skips where `mount` is not allowed."""
    mounts: list[Path] = []

    def mount(*args: str, at: Path) -> Path:
        at.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", *args, str(at)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here ({result.stderr.strip()[:80]})")
        mounts.append(at)
        return at

    yield mount
    for at in reversed(mounts):
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def _read_only(mounted, tmp_path) -> Path:
    src = tmp_path / "ro-src"
    src.mkdir()
    ro = mounted("--bind", str(src), at=tmp_path / "ro")
    result = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("cannot remount read-only here")
    return ro


def test_read_only_output_folder(mounted, tmp_path, corpus_file):
    ro = _read_only(mounted, tmp_path)
    with pytest.raises(UserError, match="read-only") as info:
        check_writable(ro / "run")
    assert str(ro / "run") in str(info.value)
    with pytest.raises(UserError, match="cannot write .*x.json: the file system is read-only"):
        write_text(ro / "x.json", "{}")
    result = run_cli("tiny-model", "--corpus", corpus_file, "--out", ro / "tiny", "--layers", "1")
    assert_user_error(result, "read-only", str(ro))
    assert len(result.stderr.strip().splitlines()) == 1


def test_full_disk_for_real(mounted, tmp_path):
    import torch

    small = mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", at=tmp_path / "small")
    with pytest.raises(UserError, match="shard.safetensors: the disk is full") as info:
        save_safetensors(small / "shard.safetensors", {"x": torch.zeros(64, 1024)})
    assert "\n" not in str(info.value)
    assert list(small.iterdir()) == []  # no partial file
    with pytest.raises(UserError, match="the disk is full"):
        write_text(small / "big.txt", "x" * 200_000)
    with pytest.raises(UserError, match="the disk is full"):
        with atomic_dir(small / "model") as staging:
            (staging / "weights.bin").write_bytes(b"\0" * 200_000)
    assert list(small.iterdir()) == []
    with pytest.raises(UserError, match="needs about 1.0 MiB but its disk has"):
        check_free_space(small / "run", 1 << 20)
    check_free_space(small / "run", 1024)


@pytest.mark.parametrize("raised", [OSError(errno.ENOSPC, "No space left on device"),
                                    RuntimeError("Error while serializing: IoError(Os { code: 28, kind: "
                                                 "StorageFull, message: \"No space left on device\" })")])
def test_full_disk_simulated(monkeypatch, tmp_path, raised):
    import safetensors.torch
    import torch

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise raised

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(UserError, match="cannot write .*w.safetensors") as info:
        save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(3)})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_bugs_as_bugs(tmp_path):
    with pytest.raises(KeyError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []
# --- --help stays fast -------------------------------------------------------------------------


def test_help_does_not_import_torch():
    script = ("import sys, time; t = time.perf_counter(); from rlhf_lens import cli; "
              "print('torch' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ},
                         check=True).stdout.split()
    assert out[0] == "False", "importing rlhf_lens.cli imported torch"
    start = time.perf_counter()
    result = run_cli("--help", check=True)
    assert "tiny-model" in result.stdout
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_latin1_corpus_is_one_line(tmp_path, suffix):
    from rlhf_lens.data import load_corpus

    path = tmp_path / f"critiques{suffix}"
    text = {".txt": "un film tr\xe8s r\xe9ussi\n", ".jsonl": '{"text": "tr\xe8s bien"}\n',
            ".csv": "text\ntr\xe8s bien\n"}[suffix]
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text") as info:
        load_corpus(str(path))
    assert str(path) in str(info.value)
