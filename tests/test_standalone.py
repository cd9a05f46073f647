"""The project stands alone: what its files point to is in the clone, and the benchmarks' anchors come from it.

The rule, applied to every file `git ls-files` lists that is UTF-8 text, this file excepted (it spells out
the patterns it forbids, in its rule and in the cases that show the rule biting):

1. **No absolute path of a development machine.** No path that starts with `/work/`, `/tmp/`, `/var/tmp/`,
   `/root/`, `/home/`, `/Users/` or `/opt/`. A path starts at the beginning of a line or after a character
   that cannot be part of a name (space, quote, backtick, bracket, `=`, `:`, `,`, `/`), so `src/work/` or
   a web address's `.../tmp/...` segment is not one, while `file:///opt/...` is. System paths present on
   every Linux machine (`/usr/bin/env`, `/dev/null`, `/proc/self/status`) and placeholders a reader
   replaces (`/path/to/model`, `/data/run/...`, `/mnt/nfs/...`, `~/.cache/...`) are allowed.
2. **No relative path that climbs out of the repository.** The project writes its paths relative to the
   repository root (`docs/sae.md`, `bench/bench_sae.py`), so a path that starts with `../` names something
   beside the clone (such as the development machine's `../shared` folder). `..` inside a path
   (`docs/../README.md`) and a shell's `$(dirname "$0")/..` are not at a path's start and are allowed.
3. **No folder named `shared/` at a path's start**: the development machine keeps design notes and
   benchmark scripts in such a folder beside the repository; a user's clone has none.
4. **No Python file climbs out by `__file__`**: `Path(__file__).resolve().parents[N]` with N above the
   file's folder depth (for `bench/x.py`, `parents[1]` is the repository root and `parents[2]` beside it).
5. **Every page named exists.** A Markdown page written without a folder or under `docs/` (`sae.md`,
   `docs/sae.md`) is a tracked `docs/<name>.md` or `<name>.md` at the root. The one exception is
   `summary.md`, the Markdown report every run writes. Names under another folder (`runs/demo/summary.md`)
   are outputs, not pages, and are not checked.

The anchors: `make anchors` is the one command that builds their venvs, from pins in bench/, and each runner
says in one line how to get its venv when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_user_error

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
PATH_START = r"(?<![\w.~-])"
"""A path starts where the character before it cannot be part of a name (rule 1; `/` may precede it)."""
RULES = {
    "an absolute path of a development machine": re.compile(
        PATH_START + r"/(?:work|tmp|var/tmp|root|home|Users|opt)/"),
    "a relative path out of the repository": re.compile(r"(?<![\w./~-])\.\./"),
    "the development machine's shared/ folder": re.compile(r"(?<![\w./~-])shared/"),
}
FILE_PARENTS = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
PAGE = re.compile(r"(?<![\w./~-])((?:docs/)?)([\w-]+)\.md\b")
OUTPUT_PAGES = {"summary.md"}
"""Markdown files the tool writes (not pages of the repository)."""


def tracked_texts() -> dict[str, str]:
    """Path -> text of every tracked UTF-8 text file but this one."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the rule reads `git ls-files`")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    texts = {}
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or name == THIS or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def outside_paths(text: str) -> list[str]:
    """`rule: line` for every line of text that breaks rule 1, 2 or 3."""
    found = []
    for line in text.splitlines():
        for rule, pattern in RULES.items():
            if pattern.search(line):
                found.append(f"{rule}: {line.strip()[:160]}")
    return found


def climbs_out(name: str, text: str) -> list[str]:
    """Lines of a Python file `name` that take a `__file__` parent above the repository root (rule 4)."""
    if not name.endswith(".py"):
        return []
    depth = len(Path(name).parts) - 1
    return [line.strip() for line in text.splitlines()
            if any(int(n) > depth for n in FILE_PARENTS.findall(line))]


def missing_pages(text: str, tracked: set[str]) -> list[str]:
    """The page names in text that are neither a tracked docs/<name>.md nor <name>.md at the root (rule 5)."""
    missing = []
    for match in PAGE.finditer(text):
        name = f"{match.group(2)}.md"
        if name in OUTPUT_PAGES and not match.group(1):
            continue
        if f"docs/{name}" not in tracked and (match.group(1) or name not in tracked):
            missing.append(match.group(0))
    return missing


def test_the_rule_catches_paths_outside_and_allows_placeholders():
    bad = ["see `/work/shared/design.md`", "ANCHORS_VENV=/tmp/anchors python", "runs ../shared/anchors",
           'Path("/root/.cache/x")', "file:///opt/pypi/simple", "--out /tmp/dacts", "in shared/anchors/README.md",
           "/home/me/rlhf", "ROOT.parent / '../x'"]
    good = ["`/path/to/model`", "/data/run/acts/shard-00003.safetensors", "--out /mnt/nfs/run",
            "#!/usr/bin/env python3", "~/.cache/rlhf-lens", "src/work/x", "https://example.org/tmp/x",
            'cd "$(dirname "$0")/.."', "docs/../README.md", "the crosscoder's shared latents"]
    assert [line for line in bad if not outside_paths(line)] == []
    assert [line for line in good if outside_paths(line)] == []
    beside = 'ANCHORS = Path(__file__).resolve().parents[2] / "shared"'
    assert climbs_out("bench/x.py", beside) == [beside]
    assert climbs_out("src/rlhf_lens/sae/x.py", beside) == []
    assert climbs_out("bench/x.py", "ROOT = Path(__file__).resolve().parents[1]") == []
    tracked = {"docs/sae.md", "README.md"}
    assert missing_pages("`sae.md`, docs/sae.md, README.md, runs/demo/summary.md, summary.md", tracked) == []
    assert missing_pages("see design.md and docs/corpora.md", tracked) == ["design.md", "docs/corpora.md"]


def test_no_tracked_file_points_outside_the_repository():
    texts = tracked_texts()
    assert len(texts) > 50, "git ls-files listed too few files: is this the repository?"
    tracked = set(texts) | {THIS}
    problems = [f"{name}: {problem}" for name, text in sorted(texts.items()) for problem in outside_paths(text)]
    problems += [f"{name}: a path above the repository root: {line}"
                 for name, text in sorted(texts.items()) for line in climbs_out(name, text)]
    problems += [f"{name}: names {page}, which the repository does not have"
                 for name, text in sorted(texts.items()) for page in missing_pages(text, tracked)]
    assert problems == [], "\n".join(problems)


def test_make_anchors_builds_both_venvs_from_pins_in_the_repository():
    if shutil.which("make") is None:
        pytest.skip("no make")
    plan = subprocess.run(["make", "-n", "anchors"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for pins in ("bench/anchors-saelens.txt", "bench/anchors-trl.txt"):
        assert f"-r {pins}" in plan, plan
        lines = [line.strip() for line in (ROOT / pins).read_text().splitlines()]
        assert "torch==2.13.0" in lines, pins  # the CPU build, as .venv pins it
    assert "sae-lens==" in (ROOT / "bench/anchors-saelens.txt").read_text()
    assert "trl==0.11.4" in (ROOT / "bench/anchors-trl.txt").read_text()
    assert "make anchors" in (ROOT / "docs/anchors.md").read_text()


def run_bench(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("script, variable, args", [
    ("anchor_saelens.py", "RLHF_LENS_ANCHORS_VENV", ["--acts", "acts.safetensors"]),
    ("anchor_trl_ppo.py", "RLHF_LENS_ANCHORS_TRL_VENV", ["model"]),
])
def test_an_anchor_without_its_venv_says_to_run_make_anchors(tmp_path, script, variable, args):
    env = {**os.environ, variable: str(tmp_path / "absent")}
    result = run_bench(script, *args, env=env)
    assert_user_error(result, "make anchors", str(tmp_path / "absent"))
    help_text = run_bench(script, "--help", env=env)  # --help needs no venv
    assert help_text.returncode == 0 and "usage:" in help_text.stdout, help_text.stderr


def test_an_anchor_reexecutes_itself_in_its_venv(tmp_path):
    """A venv without the anchor's libraries: the runner re-executes there, then names what is missing."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = run_bench("anchor_saelens.py", "--acts", "acts.safetensors",
                       env={**os.environ, "RLHF_LENS_ANCHORS_VENV": str(venv)})
    assert_user_error(result, "sae_lens", "not installed in", str(venv), "make anchors")


def test_the_gemm_bound_anchor_runs_with_torch_alone():
    result = run_bench("anchor_gemm_bound.py", "--d", "8", "--dict", "16", "--batch", "32", "--seconds", "0.2",
                       "--threads", "1")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"FIGURE gemm_bound_m16_tokens_per_s=([0-9.]+) tokens/s", last)
    assert found and float(found.group(1)) > 0, result.stdout
    assert result.stdout.count("INFO gemm ") == 5
