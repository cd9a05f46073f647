"""Executors (`rlhf-lens run --executor local|ray`): where the harvest, SAE and features jobs run.

The Ray tests start real local Ray clusters (skipped when Ray is not installed). The pipeline test
runs `--preset tiny` (its PPO and pretraining shortened) with the local executor, then the same run
with `--executor ray` from a copy of it taken before the harvest stage (the stages before it do not
use the executor): killed by the interrupt hook after the first SAE job (the driver cancels the
other running SAE task), then resumed with a Ray worker killed (SIGKILL) by the test hook at the end
of an SAE job, which Ray retries. Its artifacts must equal the local run's byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import INTERRUPT_ENV, UserError
from rlhf_lens.executors import KILL_WORKER_ENV, LocalExecutor, RayExecutor, check_ray_address, make_executor
from rlhf_lens.pipeline import STAGE_OUTPUTS, STAGES

TIMING_KEYS = {"tokens_per_s", "seconds", "train_seconds", "wall_seconds", "finished", "created"}


# --- without Ray ----------------------------------------------------------------------------------


def test_local_executor_runs_jobs_in_order_in_this_process():
    seen = []

    def job(x):
        seen.append(x)
        return x * 10

    assert LocalExecutor().map(job, [3, 1, 2], resources={"num_cpus": 4, "num_gpus": 1}) == [30, 10, 20]
    assert seen == [3, 1, 2]


def test_an_unknown_executor_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--executor must be one of local, ray"):
        make_executor("dask")
    out = tmp_path / "run"
    assert_user_error(run_cli("run", "--preset", "tiny", "--executor", "dask", "--out", out), "--executor")
    assert_user_error(run_cli("run", "--preset", "tiny", "--ray-address", "10.0.0.1:6379", "--out", out),
                      "--ray-address needs --executor ray")
    assert not out.exists()


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError) as e:
        make_executor("ray")
    assert str(e.value) == "--executor ray needs Ray: pip install 'rlhf-lens[ray]'"


@pytest.mark.parametrize("address", ["not-an-address", "host:", ":6379", "head:port", "head:70000", "head:0",
                                     "http://10.0.0.1:8265", "user@head:6379", "1:2::3:6379", "a b:6379"])
def test_a_malformed_ray_address_is_refused_by_parsing(address):
    with pytest.raises(UserError) as e:
        check_ray_address(address)
    assert str(e.value).startswith(f"--ray-address {address!r} is not HOST:PORT; give the head node's address")


def test_a_malformed_ray_address_is_one_line_before_any_work(tmp_path):
    pytest.importorskip("ray")  # without Ray the run stops first at "needs Ray"
    out = tmp_path / "run"
    result = run_cli("run", "--preset", "tiny", "--executor", "ray", "--ray-address", "not-an-address", "--out", out)
    assert_user_error(result, "--ray-address 'not-an-address' is not HOST:PORT", "ray start --head")
    assert not out.exists()


class _NotRay(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _listeners() -> Iterator[dict[str, int]]:
    """Ports on 127.0.0.1 where no Ray cluster answers: nothing listening, an HTTP server (a dashboard's port),
    and a listener that accepts and never answers."""
    closed, silent = socket.socket(), socket.socket()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _NotRay)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the connection; nobody reads or writes
        yield {"closed": closed.getsockname()[1], "http": http.server_address[1], "silent": silent.getsockname()[1]}
    finally:
        http.shutdown()
        http.server_close()
        closed.close()
        silent.close()


def test_a_ray_address_where_no_cluster_answers_fails_within_seconds(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    with _listeners() as ports:
        for kind, fragment in [("closed", "cannot connect (Connection refused)"),
                               ("http", "the server there is not a Ray cluster"), ("silent", "no answer within")]:
            address = f"127.0.0.1:{ports[kind]}"
            start = time.perf_counter()
            result = run_cli("run", "--preset", "tiny", "--executor", "ray", "--ray-address", address, "--out", out)
            elapsed = time.perf_counter() - start
            assert_user_error(result, f"--ray-address {address}: {fragment}", "ray start --head")
            assert elapsed < 30, f"{kind}: {elapsed:.0f} s (Ray alone retries for minutes)"
            assert not out.exists()
        # `auto` is checked where RAY_ADDRESS points
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{ports['closed']}")
        with pytest.raises(UserError, match=f"^RAY_ADDRESS .* 127.0.0.1:{ports['closed']}: cannot connect"):
            check_ray_address("auto")
        monkeypatch.setenv("RAY_ADDRESS", "nowhere")
        with pytest.raises(UserError, match="^RAY_ADDRESS .* 'nowhere' is not HOST:PORT"):
            check_ray_address("auto")


# --- Ray ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A 2-CPU local Ray cluster; its workers see the kill hook (set before they start)."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("kill") / "killed"
    saved = os.environ.get(KILL_WORKER_ENV)
    os.environ[KILL_WORKER_ENV] = f"neg:end:{marker}"  # only operator.neg's first job dies
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        yield marker
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop(KILL_WORKER_ENV, None)
        else:
            os.environ[KILL_WORKER_ENV] = saved


def test_ray_executor_returns_results_in_job_order(ray_cluster):
    executor = RayExecutor()
    assert executor.map(abs, [-5, 3, -1, 0, -7], resources={"num_cpus": 1, "num_gpus": 0}) == [5, 3, 1, 0, 7]
    executor.close()  # it joined the fixture's cluster: closing leaves that running
    import ray

    assert ray.is_initialized()


def test_a_running_clusters_address_passes_the_probe(ray_cluster):
    import ray

    gcs = ray.get_runtime_context().gcs_address  # HOST:PORT of this cluster's GCS, as `ray start --head` prints it
    check_ray_address(gcs)
    check_ray_address(f"127.0.0.1:{gcs.rsplit(':', 1)[1]}")  # Ray itself maps the loopback to this node's address
    executor = make_executor("ray", gcs)  # Ray is initialised here: the executor joins this connection
    assert executor.map(abs, [-2]) == [2]
    executor.close()


def test_a_job_whose_worker_dies_is_retried(ray_cluster):
    assert not ray_cluster.exists()
    assert RayExecutor().map(operator.neg, [1, 2, 3], resources={"num_cpus": 1}) == [-1, -2, -3]
    assert ray_cluster.exists(), "no worker was killed"


def test_a_user_error_in_a_job_is_one_line(ray_cluster, tmp_path):
    from rlhf_lens.io import read_json

    with pytest.raises(UserError) as e:
        RayExecutor().map(read_json, [str(tmp_path / "missing.json")])
    assert type(e.value) is UserError and str(e.value) == f"{tmp_path / 'missing.json'}: no such file"


def _run(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return run_cli("run", "--preset", "tiny", *extra, "--out", str(out))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _ok(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _portable(obj, run_dirs: tuple[Path, ...]):
    """JSON content with the run folders replaced by <RUN> and timing values dropped."""
    if isinstance(obj, dict):  # PPO's log times its steps in `*_s` fields
        return {k: _portable(v, run_dirs) for k, v in obj.items() if k not in TIMING_KEYS and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_portable(v, run_dirs) for v in obj]
    if isinstance(obj, str):
        for run_dir in run_dirs:
            obj = obj.replace(str(run_dir.resolve()), "<RUN>").replace(str(run_dir), "<RUN>")
    return obj


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _artifacts(run_dir: Path, copied_from: Path | None = None) -> dict:
    """What the executor's jobs and the stages after them wrote, as comparable values (paths to the run
    folder, or to the folder a copied run came from, as <RUN>)."""
    run_dirs = (run_dir, copied_from) if copied_from else (run_dir,)
    out = {str(p.relative_to(run_dir)): _sha256(p) for pattern in ("saes/**/sae_weights.safetensors",
                                                                   "acts/**/*.safetensors")
           for p in sorted(run_dir.glob(pattern))}
    for pattern in ("saes/**/cfg.json", "saes/**/metrics.json", "features/*.json", "mmcs.json", "utility.json",
                    "results.json"):
        for p in sorted(run_dir.glob(pattern)):
            out[str(p.relative_to(run_dir))] = _portable(json.loads(p.read_text()), run_dirs)
    return out


# The executor runs the harvest, SAE and features jobs; the stages before them are shortened (a less
# pretrained base, 2 PPO steps) to keep the test short. Everything from the harvest on is as the preset ships.
SHORT = ("--set", "tiny.pretrain_steps=10", "--set", "rlhf.steps=2")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("executor-local") / "run"
    _ok(_run(out, *SHORT), "rlhf-lens run --preset tiny")
    return out


def _before_harvest(src: Path, dst: Path) -> Path:
    """A copy of a finished run as it was when its harvest stage was about to start."""
    later = STAGES[STAGES.index("harvest"):]
    dropped = {Path(rel).parts[0] for stage in later for rel in STAGE_OUTPUTS[stage]}
    shutil.copytree(src, dst, ignore=lambda folder, names: (
        dropped & set(names) if Path(folder) == src else
        {f"{stage}.json" for stage in later} & set(names) if Path(folder) == src / "stages" else set()))
    return dst


@pytest.mark.timeout(900)  # two runs of the tiny preset, on a possibly loaded 2-core machine
def test_ray_run_killed_and_resumed_with_a_dead_worker_equals_the_local_run(local_run, tmp_path):
    pytest.importorskip("ray")
    out = _before_harvest(local_run, tmp_path / "run")
    marker = tmp_path / "killed-worker"
    interrupted = _run(out, *SHORT, "--executor", "ray", env={INTERRUPT_ENV: "saes:1"})
    assert interrupted.returncode == 130, interrupted.stderr
    assert "interrupted" in interrupted.stderr and "Traceback" not in interrupted.stderr
    assert json.loads((out / "stages" / "saes.json").read_text())["status"] == "running"

    start = time.perf_counter()
    resumed = _ok(_run(out, *SHORT, "--executor", "ray", env={KILL_WORKER_ENV: f"_sae_job:end:{marker}"}),
                  "the resumed run")
    print(f"ray run from saes on: {time.perf_counter() - start:.1f} s")
    assert marker.exists(), "the hook killed no worker"
    assert "harvest: done earlier, skipped" in resumed.stderr
    mine, local = _artifacts(out, copied_from=local_run), _artifacts(local_run)
    assert mine.keys() == local.keys()
    assert any(k.endswith("sae_weights.safetensors") for k in mine)
    for key in local:
        assert mine[key] == local[key], key


@pytest.mark.timeout(900)  # two runs of the tiny preset, on a possibly loaded 2-core machine
def test_a_second_driver_on_the_same_folder_is_refused(local_run, tmp_path):
    pytest.importorskip("ray")
    out = _before_harvest(local_run, tmp_path / "run")
    slow = ("--set", "sae.epochs=200")  # the first driver is still training SAEs when the second one starts
    first = subprocess.Popen([sys.executable, "-m", "rlhf_lens", "run", "--preset", "tiny", *SHORT, *slow,
                              "--executor", "ray", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=(tmp_path / "first.log").open("w"))
    try:
        deadline = time.time() + 120
        while not (out / "stages" / "harvest.json").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert first.poll() is None, "the first driver ended before the second could start"
        second = _run(out, *SHORT, *slow, "--executor", "ray")
        assert first.poll() is None, "the first driver ended while the second one ran"
        assert_user_error(second)
    finally:
        first.send_signal(signal.SIGINT)  # as Ctrl-C: the driver shuts down the Ray cluster it started
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
