"""Where the independent jobs of a run execute: in this process, or as tasks on a Ray cluster.

A stage hands its jobs to `Executor.map(fn, jobs, resources)` and gets their results back in job
order. `fn` is a top-level function of one plain argument (paths, dicts, dataclasses) that writes its
artifacts into the run folder atomically and returns JSON-able outputs, so it can run in another
process or on another machine that sees the same run folder.

- `LocalExecutor` (`rlhf-lens run --executor local`, the default) calls `fn(job)` for each job in
  order, in this process: exactly what the stages did before executors existed.
- `RayExecutor` (`--executor ray`) submits each job as a Ray task declaring `num_cpus`/`num_gpus`
  (the `resources` the stage asks for), with `max_retries`, so a task whose worker process dies is
  run again; results come back in job order. Ray is an optional extra (`pip install 'rlhf-lens[ray]'`)
  and is imported only here, only when a RayExecutor is made.

Executors do not change results: which one ran a job is not part of any stage key.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

from .errors import UserError, first_line

EXECUTORS = ("local", "ray")

KILL_WORKER_ENV = "RLHF_LENS_KILL_WORKER"
"""Test hook: `FN:PHASE:MARKER` makes the first job of the function named FN kill its own worker
process with SIGKILL (as a crashed or pre-empted worker would), at PHASE `start` (before its work)
or `end` (after its work, before its result is returned), and only while the file MARKER does not
exist (it is created first, so exactly one worker dies). Honoured by RayExecutor's tasks only:
the local executor would kill the driver."""


# Environment variables a job must see as the driver does (rlhf-lens's own, its test hooks included, and
# those of the hub/transformers/tokenizers libraries): passed to every Ray task, on whichever node it runs.
PASSED_ENV_PREFIXES = ("RLHF_LENS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


def passed_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}


PROBE_TIMEOUT = 4.0
"""Seconds the probe of `--ray-address` waits to connect, and again for the answer (Ray itself retries for minutes)."""

# What a gRPC server (Ray's GCS, Ray Client's server) answers first on a cleartext connection: HTTP/2's client
# preface and an empty SETTINGS frame get a SETTINGS frame back (RFC 9113, section 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4  # the frame type, byte 3 of a frame's 9-byte header


def split_ray_address(address: str, given_as: str = "--ray-address") -> tuple[str, int]:
    """HOST and PORT of `HOST:PORT`, `[IPv6]:PORT` or Ray Client's `ray://HOST:PORT`; otherwise a UserError
    naming the address as `given_as` it."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bare_ipv6 = ":" in host and not hostport.startswith("[")  # 1:2::3:6379: where does the port start?
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or bare_ipv6 or \
            any(c in host for c in "/[]@ "):  # a URL (http://...:8265 is the dashboard's), user@host
        auto = ", or auto" if given_as == "--ray-address" else ""
        raise UserError(f"{given_as} {address!r} is not HOST:PORT; give the head node's address that "
                        f"`ray start --head` printed (e.g. 10.0.0.1:6379){auto}")
    return host, int(port)


def check_ray_address(address: str) -> None:
    """Refuse, within seconds, a --ray-address where no Ray cluster answers: malformed, unknown host, nothing
    listening, or a server that does not speak gRPC (a dashboard's port). `auto` is checked where it points
    (RAY_ADDRESS); without it, Ray looks for a cluster on this machine and says itself when there is none."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if target in ("", "auto", "local"):
        return
    given_as = "--ray-address" if target == address else "RAY_ADDRESS (where --ray-address auto points)"
    host, port = split_ray_address(target, given_as)
    named = f"{given_as} {target}"
    fix = "start the cluster there (`ray start --head`), or give the address it printed"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS cluster answers only after a handshake; reaching it is what can be checked
            conn.settimeout(PROBE_TIMEOUT)
            conn.sendall(_HTTP2_PREFACE)
            header = b""
            while len(header) < 9 and (chunk := conn.recv(9 - len(header))):
                header += chunk
    except socket.gaierror as e:
        raise UserError(f"{named}: unknown host {host!r} ({e.strerror}); "
                        f"give the head node's HOST:PORT") from None
    except TimeoutError:
        raise UserError(f"{named}: no answer within {PROBE_TIMEOUT:g} s (a firewall, or a busy "
                        f"server that is not Ray); {fix}") from None
    except OSError as e:
        raise UserError(f"{named}: cannot connect ({e.strerror or first_line(e)}); {fix}") from None
    if len(header) < 9 or header[3] != _HTTP2_SETTINGS:
        raise UserError(f"{named}: the server there is not a Ray cluster (it does not speak gRPC; "
                        f"the dashboard's port?); give the address `ray start --head` printed (port 6379 by default)")


class Executor:
    """Runs independent jobs; `map` returns their results in job order."""

    name = "executor"

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any], resources: dict | None = None) -> list:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a local Ray cluster)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Every job in order, in this process (`resources` is ignored)."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any], resources: dict | None = None) -> list:
        return [fn(job) for job in jobs]


class _Interrupted:
    """What a task returns when its job raised KeyboardInterrupt (the RLHF_LENS_INTERRUPT_AFTER hook)."""

    def __init__(self, message: str):
        self.message = message


def _maybe_kill(fn_name: str, phase: str) -> None:
    target = os.environ.get(KILL_WORKER_ENV, "")
    if not target:
        return
    name, when, marker = target.split(":", 2)
    if name != fn_name or when != phase:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _run_task(fn: Callable[[Any], Any], job: Any, num_cpus: float) -> Any:
    """The body of every Ray task: size torch's thread pool to the CPUs the task declared, run the job."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))
    _maybe_kill(fn.__name__, "start")
    try:
        result = fn(job)
    except KeyboardInterrupt as e:
        return _Interrupted(str(e))
    _maybe_kill(fn.__name__, "end")
    return result


class RayExecutor(Executor):
    """Each job a Ray task with the declared resources, retried when its worker dies.

    With `address` (`--ray-address HOST:PORT`, or "auto") it joins that cluster, probed first by
    `check_ray_address` (in seconds, where Ray would retry for minutes); otherwise it starts
    a local one, which `close` shuts down. When Ray is already initialised in this process (a test,
    a notebook), that connection is used and left open.
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'rlhf-lens[ray]'") from None
        self._ray = ray
        self.address = address or None
        self.max_retries = max_retries
        self._owned = False
        self._task = None
        if self.address:
            self._connect()  # a wrong address fails now, before any work; a local cluster starts when first needed

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            if self.address:
                check_ray_address(self.address)  # in seconds; Ray retries an address that does not answer for minutes
            try:
                # "local": a new cluster for this run, even where `ray start` or RAY_ADDRESS names another.
                ray.init(address=self.address or "local", include_dashboard=False, configure_logging=False,
                         runtime_env={"env_vars": passed_env()})
            except ConnectionError as e:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {first_line(e)}; "
                                f"start it with `ray start --head` or check --ray-address") from None
            self._owned = True
        self._task = ray.remote(_run_task)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any], resources: dict | None = None) -> list:
        if self._task is None:
            self._connect()
        ray = self._ray
        resources = dict(resources or {})
        num_cpus = resources.pop("num_cpus", 1)
        num_gpus = resources.pop("num_gpus", 0)
        task = self._task.options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None,
                                  max_retries=self.max_retries, retry_exceptions=False)
        refs = [task.remote(fn, job, num_cpus) for job in jobs]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        try:
            # As they finish, not in order: a failed or interrupted job stops the stage at once.
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    result = ray.get(ref)
                    if isinstance(result, _Interrupted):
                        raise KeyboardInterrupt(result.message)
                    results[where[ref]] = result
        except ray.exceptions.RayTaskError as e:
            self._cancel(pending)
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise
        except BaseException:
            self._cancel(pending)
            raise
        return results

    def _cancel(self, refs: list) -> None:
        """Stop the tasks still running, so no job of an abandoned stage goes on writing in the run folder."""
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001  (finished or already gone)
                pass

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False


def check_executor(name: str) -> None:
    """Refuse an unknown executor name before any work."""
    if name not in EXECUTORS:
        raise UserError(f"--executor must be one of {', '.join(EXECUTORS)} (got {name!r})")


def make_executor(name: str = "local", ray_address: str | None = None) -> Executor:
    """The executor `rlhf-lens run --executor NAME [--ray-address ADDR]` uses."""
    check_executor(name)
    if ray_address and name != "ray":
        raise UserError("--ray-address needs --executor ray")
    if name == "ray":
        return RayExecutor(address=ray_address)
    return LocalExecutor()
