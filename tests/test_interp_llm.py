"""interp: the openai back-end against a real HTTP server on 127.0.0.1 (answers, errors, retries, cache)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_lens.errors import UserError
from rlhf_lens.interp import LLMConfig, get_explainer
from rlhf_lens.interp.llm import AnswerCache


class ScriptedServer:
    """An OpenAI-compatible /chat/completions endpoint answering from a script.

    Each script entry is (status, content, delay_s); when the script runs out, `default` answers
    (a function of the request's messages).
    """

    def __init__(self):
        self.script: list[tuple[int, str, float]] = []
        self.requests: list[dict] = []
        self.default = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if server.script:
                    status, content, delay = server.script.pop(0)
                else:
                    status, content, delay = 200, server.default(body["messages"]), 0.0
                if delay:
                    time.sleep(delay)
                payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                           if status == 200 else json.dumps({"error": {"message": content}})).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def echo_simulation(messages) -> str:
    """A well-behaved simulator: every token shown gets 10 if it contains 'good', else 0."""
    user = messages[-1]["content"]
    if "Tokens:" not in user:
        return "Positive words such as good."
    lines = user.split("<start>\n", 1)[1].rsplit("\n<end>", 1)[0].split("\n")
    return "\n".join(f"{t}\t{10 if 'good' in t else 0}" for t in lines)


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    s = ScriptedServer()
    s.default = echo_simulation
    yield s
    s.close()


def make(server, **overrides):
    config = LLMConfig(model="test-model", base_url=server.url, api_key_env="TEST_LLM_KEY", backoff=0.01,
                       retries=3, timeout=5.0, concurrency=2)
    for key, value in overrides.items():
        setattr(config, key, value)
    return get_explainer("openai", config)


RECORDS = [["The", " good", " film"], ["so", " good"]]
ACTS = [[0, 10, 1], [0, 9]]


def test_explain_and_simulate_through_the_api(server):
    explainer = make(server)
    assert explainer.capabilities.network and explainer.capabilities.parallel
    assert explainer.explain_many([("3", RECORDS, ACTS)]) == ["Positive words such as good."]
    sims = explainer.simulate_many([("good things", [["a", " good"], ["bad", "\n", "x"]])])
    assert sims == [[[0.0, 10.0], [0.0, 0.0, 0.0]]]
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "test-model" and first["body"]["temperature"] == 0.0
    assert first["body"]["max_tokens"] == 100  # an explanation is one sentence
    # The two simulation requests run concurrently, so their order on the server is not fixed.
    room = sorted(r["body"]["max_tokens"] for r in server.requests[1:])
    assert room == [40 + 2 * 4 + len(" good") // 2, 40 + 3 * 4 + len("bad") // 2]
    assert first["body"]["messages"][0]["role"] == "system"


def test_cached_answers_make_a_second_run_send_no_request(server):
    make(server).explain_many([("3", RECORDS, ACTS)])
    make(server).simulate_many([("good things", RECORDS)])
    sent = len(server.requests)
    again = make(server)
    assert again.explain_many([("3", RECORDS, ACTS)]) == ["Positive words such as good."]
    assert again.simulate_many([("good things", RECORDS)]) == [[[0.0, 10.0, 0.0], [0.0, 10.0]]]
    assert len(server.requests) == sent
    assert again.client.requests == 0


def test_429_and_500_are_retried_until_success(server):
    server.script = [(429, "slow down", 0.0), (500, "oops", 0.0)]
    assert make(server).explain_many([("3", RECORDS, ACTS)]) == ["Positive words such as good."]
    assert len(server.requests) == 3


def test_a_timeout_is_retried(server):
    server.script = [(200, "too late", 1.5)]
    assert make(server, timeout=0.5).explain_many([("3", RECORDS, ACTS)]) == ["Positive words such as good."]
    assert len(server.requests) == 2


def test_persistent_errors_give_a_clear_error_naming_the_url(server):
    server.script = [(503, "down", 0.0)] * 10
    with pytest.raises(UserError, match="could not get an answer from http://127.0.0.1") as info:
        make(server, retries=2).explain_many([("3", RECORDS, ACTS)])
    assert "HTTP 503" in str(info.value) and len(server.requests) == 3


def test_a_client_error_is_not_retried(server):
    server.script = [(401, "bad key", 0.0)]
    with pytest.raises(UserError, match="HTTP 401 \\(bad key\\)") as info:
        make(server).explain_many([("3", RECORDS, ACTS)])
    assert len(server.requests) == 1
    message = str(info.value)
    for name in ("--llm-model", "--base-url", "interp.llm.model", "interp.llm.base_url", "$TEST_LLM_KEY"):
        assert name in message
    assert "--explainer-model" not in message


def test_malformed_simulation_is_retried_once_then_recorded_as_failed_and_not_cached(server):
    server.script = [(200, "The\t0\ngood\t10", 0.0), (200, "The\t0\ngood\tten\nfilm\t0", 0.0)]
    explainer = make(server)
    # a second bad answer is a failed simulation (None), not the end of the stage; the next record goes on
    assert explainer.simulate_many([("good things", [RECORDS[0]])]) == [[None]]
    assert len(server.requests) == 2
    # nothing malformed stays in the cache: a rerun asks again (and now gets a good answer)
    assert explainer.simulate_many([("good things", [RECORDS[0]])]) == [[[0.0, 10.0, 0.0]]]
    assert len(server.requests) == 3


def test_malformed_then_good_answer_succeeds(server):
    server.script = [(200, "nonsense", 0.0)]
    assert make(server).simulate_many([("good things", [RECORDS[0]])]) == [[[0.0, 10.0, 0.0]]]


def test_unreachable_api_keeps_cached_answers(server, tmp_path):
    explainer = make(server)
    explainer.explain_many([("3", RECORDS, ACTS)])
    url = server.url
    server.close()
    cache = AnswerCache(tmp_path / "cache" / "llm-cache")
    kept = sorted(cache.folder.rglob("*.json"))
    assert len(kept) == 1
    config = LLMConfig(model="test-model", base_url=url, api_key_env="TEST_LLM_KEY", backoff=0.01, retries=1,
                       timeout=2.0)
    down = get_explainer("openai", config)
    assert down.explain_many([("3", RECORDS, ACTS)]) == ["Positive words such as good."]  # from the cache
    with pytest.raises(UserError, match=f"cannot connect to the explainer API at {url[7:].split('/')[0]}"):
        down.explain_many([("4", RECORDS, ACTS)])
    assert sorted(cache.folder.rglob("*.json")) == kept


def test_openai_without_a_key_for_the_real_api_is_a_user_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="set \\$OPENAI_API_KEY"):
        get_explainer("openai", LLMConfig())
    with pytest.raises(UserError, match="--base-url must start with http"):
        get_explainer("openai", LLMConfig(base_url="localhost:8000"))


def test_a_failing_server_fails_once_not_once_per_request(server):
    server.script = [(503, "down", 0.0)] * 100
    explainer = make(server, retries=2, concurrency=2)
    jobs = [(f"explanation {i}", [["a", " good"]]) for i in range(10)]
    with pytest.raises(UserError, match="could not get an answer"):
        explainer.simulate_many(jobs)
    assert len(server.requests) < 15  # 10 requests x 3 tries = 30 without cancelling the pending ones


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_fails_at_once_without_retries(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    port = _closed_port()
    config = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_SUCH_KEY_VAR",
                       retries=5, backoff=1.0)  # retried, this would take 1+2+4+8+16 s
    start = time.monotonic()
    with pytest.raises(UserError, match=f"cannot connect to the explainer API at 127.0.0.1:{port}") as info:
        get_explainer("openai", config).explain_many([("3", RECORDS, ACTS)])
    assert time.monotonic() - start < 3
    assert "--base-url" in str(info.value) and "interp.llm.base_url" in str(info.value)


def test_a_server_that_never_accepts_fails_within_the_connect_timeout(monkeypatch, tmp_path):
    """A listening socket whose accept queue is full: SYNs go unanswered, like an unreachable host."""
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        config = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_SUCH_KEY_VAR",
                           timeout=60.0, connect_timeout=0.5, retries=5, backoff=1.0, concurrency=2)
        start = time.monotonic()
        with pytest.raises(UserError, match="no connection within 0.5 s"):
            get_explainer("openai", config).simulate_many([(f"e{i}", [["a"]]) for i in range(4)])
        assert time.monotonic() - start < 5  # not timeout (60 s), not retries x connect timeout
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def test_an_api_key_is_never_sent_over_plain_http_to_another_host(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret")
    for url in ("http://example.com/v1", "http://10.0.0.5:8000/v1", "http://my-llm.lan/v1"):
        with pytest.raises(UserError, match="will not send the API key in \\$TEST_LLM_KEY over plain http"):
            get_explainer("openai", LLMConfig(base_url=url, api_key_env="TEST_LLM_KEY"))
    # https anywhere, and plain http to this machine, are fine (creating a client sends nothing)
    for url in ("https://example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1",
                "http://[::1]:8000/v1", "http://127.0.0.2:8000/v1"):
        get_explainer("openai", LLMConfig(base_url=url, api_key_env="TEST_LLM_KEY"))
    # without a key, plain http to another host is allowed (nothing secret to leak)
    monkeypatch.delenv("TEST_LLM_KEY")
    get_explainer("openai", LLMConfig(base_url="http://10.0.0.5:8000/v1", api_key_env="TEST_LLM_KEY"))
