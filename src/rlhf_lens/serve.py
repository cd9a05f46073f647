"""Serve a reward over HTTP with OpenRLHF's remote reward-model protocol (docs/scale.md).

POST /get_reward  {"query": [texts...], "prompts": [...], "labels": [...]}  (prompts, labels optional, unused)
              ->  {"rewards": [floats], "scores": [floats], "extra_logs": {NAME: [floats]}}
GET  /health      {"status": "ok", "reward": SPEC, "name": NAME, "info": {...}}   (HEAD: its headers)
Another method on these paths: 405 with an Allow header; another path: 404; errors are {"error": "..."}.

OpenRLHF sends in `query` the full decoded sequence (prompt and response, with its chat
template), so the server scores each query text as is: the same numbers as
`rlhf-lens reward --reward SPEC TEXT...`, because both build the reward with `load_reward`.
Only the standard library: `http.server.ThreadingHTTPServer`.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import UserError, first_line
from .rewards import Reward, load_reward, reward_name

REWARD_PATH = "/get_reward"
HEALTH_PATH = "/health"
ROUTES = {REWARD_PATH: ("POST",), HEALTH_PATH: ("GET", "HEAD")}  # path -> the methods it answers
DRAIN_LIMIT = 256 * 1024 * 1024  # refused bodies up to this size are read and dropped, larger ones reset


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes an unauthenticated server to the network)."""
    port: int = 5000
    """Port to listen on (0: any free port, printed when ready)."""
    batch_size: int = 64
    """Texts of one request are scored in batches of this many."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted (413 beyond)."""
    max_texts: int = 8192
    """Most texts accepted in one request (413 beyond)."""
    request_timeout: float = 60.0
    """Seconds a connection may stay idle while sending its request (a stalled client frees its thread)."""

    def check(self) -> None:
        for name in ("batch_size", "max_body_bytes", "max_texts"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be 0..65535 (got {self.port})")


class RequestError(Exception):
    """A bad request: answered with `status` and a JSON error, and the server goes on."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class RewardServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward; scoring is serialised by a lock (a torch
    classifier is not promised thread-safe), while /health stays answerable during a long batch."""

    daemon_threads = True  # Ctrl-C does not wait for open connections

    def __init__(self, reward: Reward, spec: str, config: ServeConfig):
        self.reward, self.spec, self.config = reward, spec, config
        self.name = reward_name(spec)
        self.score_lock = threading.Lock()
        super().__init__((config.host, config.port), RewardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}{REWARD_PATH}"

    def score(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        with self.score_lock:
            for start in range(0, len(texts), self.config.batch_size):
                batch = texts[start:start + self.config.batch_size]
                out = [float(s) for s in self.reward(batch)]
                if len(out) != len(batch):
                    raise RuntimeError(f"the reward returned {len(out)} scores for {len(batch)} texts")
                scores += out
        if not all(math.isfinite(s) for s in scores):
            raise RuntimeError("the reward returned a non-finite score")  # JSON has no NaN
        return scores


class RewardHandler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"  # keep-alive: a trainer posts batch after batch on one connection
    server_version = "rlhf-lens"

    def setup(self) -> None:
        self.timeout = self.server.config.request_timeout
        super().setup()

    # --- routes ---

    def __getattr__(self, name: str) -> Callable[[], None]:
        # http.server answers a method it has no `do_<METHOD>` for with an HTML 501. Every method comes to
        # `_route` instead, so a known path answers a method it does not serve with 405 and its Allow header.
        if name.startswith("do_"):
            return self._route
        raise AttributeError(name)

    def _route(self) -> None:
        path = self._path()
        if path == REWARD_PATH and self.command == "POST":
            self._get_reward()  # reads its own body
            return
        self._discard_body()
        allowed = ROUTES.get(path)
        if allowed is None:
            self._not_found()
        elif self.command not in allowed:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED,
                       {"error": f"{self.command} is not served at {path}; use {' or '.join(allowed)}"},
                       headers={"Allow": ", ".join(allowed)})
        else:
            self._health()

    def _health(self) -> None:
        s = self.server
        self._send(HTTPStatus.OK, {"status": "ok", "reward": s.spec, "name": s.name,
                                   "info": getattr(s.reward, "info", {}), "endpoint": REWARD_PATH,
                                   "max_texts": s.config.max_texts, "max_body_bytes": s.config.max_body_bytes})

    def _get_reward(self) -> None:
        try:
            texts = self._read_query()
            try:
                rewards = self.server.score(texts)
            except Exception as e:  # noqa: BLE001  (one failed request must not stop the server)
                raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"scoring failed: {first_line(e)}") from None
        except RequestError as e:
            self._send(e.status, {"error": str(e)})
            return
        self._send(HTTPStatus.OK, {"rewards": rewards, "scores": rewards, "extra_logs": {self.server.name: rewards}})

    # --- helpers ---

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _read_query(self) -> list[str]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED if length_text is None else HTTPStatus.BAD_REQUEST,
                               "send a JSON body with a valid Content-Length")
        limit = self.server.config.max_body_bytes
        if length > limit:
            # Read the refused body and throw it away: closing on unread data would reset the
            # connection before the client reads the 413.
            self._drain(length)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"request body of {length} bytes is over the limit of {limit}; send fewer texts per request")
        body = self.rfile.read(length)
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8 JSON ({first_line(e)})") from None
        except RecursionError:  # the decoder recurses once per nested array or object
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               'body nests JSON arrays or objects too deeply; send {"query": [texts...]}') from None
        if not isinstance(data, dict) or "query" not in data:
            raise RequestError(HTTPStatus.BAD_REQUEST, 'expected a JSON object {"query": [texts...]}')
        texts = data["query"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError(HTTPStatus.BAD_REQUEST, '"query" must be a list of strings')
        if len(texts) > self.server.config.max_texts:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"{len(texts)} texts is over the limit of {self.server.config.max_texts} per request")
        prompts = data.get("prompts")
        # OpenRLHF's query already holds the prompt; prompts are only checked, so a mismatched batch is caught.
        if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(texts)):
            raise RequestError(HTTPStatus.BAD_REQUEST, '"prompts", when given, must be a list as long as "query"')
        return texts

    def _discard_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True  # its end is not known without parsing the chunks
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
        else:
            self._drain(length)

    def _drain(self, length: int) -> None:
        """Read and discard `length` bytes in chunks; beyond DRAIN_LIMIT give up and close after replying."""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self._path()!r}; POST {REWARD_PATH} or GET {HEALTH_PATH}"})

    def _send(self, status: HTTPStatus, obj: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the body it leaves out
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # A trainer posts many batches: log only the failures, to stderr.
        if isinstance(code, HTTPStatus):
            code = code.value
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)


def make_server(spec: str, config: ServeConfig | None = None, device: str = "cpu") -> RewardServer:
    """Build the reward (as `rlhf-lens reward` does) and bind the server; call `serve_forever()`."""
    config = config or ServeConfig()
    config.check()
    reward = load_reward(spec, device=device)
    try:
        return RewardServer(reward, spec, config)
    except OSError as e:
        raise UserError(f"cannot listen on {config.host}:{config.port} ({e.strerror or first_line(e)}); "
                        "pick another --port or --host") from None


def serve(spec: str, config: ServeConfig | None = None, device: str = "cpu",
          ready: Callable[[RewardServer], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then close the socket and return."""
    server = make_server(spec, config, device)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the server the same clean way as Ctrl-C

    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()
