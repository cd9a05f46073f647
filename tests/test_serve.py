"""serve-reward (a real subprocess speaking OpenRLHF's protocol) and trl_reward_func (TRL's reward_funcs)."""

from __future__ import annotations

import http.client
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.rewards import load_reward, reward_name, scored_texts, trl_reward_func

TEXTS = ["Good great :) LOL", "bad bad terrible movie", "love " * 30, "nothing here at all", "<3 xd",
         "I can\u2019t STAND it :) but it was GOOD!!", "meh", "the worst, the WORST film"]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    ready_line: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(server: Server, obj) -> tuple[int, dict]:
    return _request(server.base + "/get_reward", json.dumps(obj).encode())


def _start(*args: str, timeout: float = 90.0) -> Server:
    """Start `rlhf-lens serve-reward` on a free port and wait until /health answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_lens", "serve-reward", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve-reward exited with {proc.returncode}:\n{proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return Server(proc, port, proc.stdout.readline().strip())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    _stop(proc)
    raise AssertionError("serve-reward did not answer /health in time")


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C (SIGINT), as a user would; kill only if it does not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, err


@pytest.fixture(scope="module")
def vader_server() -> Iterator[Server]:
    # Small limits and batches, so the tests exercise them with small requests.
    server = _start("--reward", "vader", "--batch-size", "3", "--max-texts", "20", "--max-body-bytes", "4000")
    try:
        yield server
    finally:
        _stop(server.proc)


def test_served_rewards_equal_the_reward_command(vader_server):
    assert vader_server.ready_line == f"serving vader on http://127.0.0.1:{vader_server.port}/get_reward"
    expected = json.loads(run_cli("reward", "--reward", "vader", *TEXTS, "--json", check=True).stdout)
    status, body = _post(vader_server, {"query": TEXTS, "prompts": [""] * len(TEXTS)})  # 8 texts: 3 batches of 3
    assert status == 200
    assert body["rewards"] == expected  # exactly: the same reward construction, floats round-trip through JSON
    assert body["scores"] == expected and body["extra_logs"] == {"rlhf_lens_vader": expected}
    # prompts and labels are optional; an empty batch is an empty answer
    assert _post(vader_server, {"query": TEXTS[:2], "labels": None}) == (200, {**body, "rewards": expected[:2],
                                                                               "scores": expected[:2],
                                                                               "extra_logs": {"rlhf_lens_vader": expected[:2]}})
    assert _post(vader_server, {"query": []})[1]["rewards"] == []


def test_health(vader_server):
    status, body = _request(vader_server.base + "/health")
    assert status == 200 and body["status"] == "ok" and body["reward"] == "vader"
    assert body["name"] == "rlhf_lens_vader" and body["info"]["kind"] == "table" and body["max_texts"] == 20


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", '"query"'),
    (b'{"prompts": ["a"]}', '"query"'),
    (b'{"query": "one text"}', "list of strings"),
    (b'{"query": ["a", 3]}', "list of strings"),
    (b'{"query": ["a", "b"], "prompts": ["a"]}', "as long as"),
])
def test_malformed_requests_get_400_and_the_server_goes_on(vader_server, body, fragment):
    status, answer = _request(vader_server.base + "/get_reward", body)
    assert status == 400 and fragment in answer["error"]
    assert _post(vader_server, {"query": ["good"]}) == (200, {"rewards": [0.38], "scores": [0.38],
                                                              "extra_logs": {"rlhf_lens_vader": [0.38]}})


def test_oversized_requests_get_413_and_the_server_goes_on(vader_server):
    status, answer = _post(vader_server, {"query": ["good"] * 21})  # over --max-texts 20
    assert status == 413 and "limit of 20" in answer["error"]
    status, answer = _post(vader_server, {"query": ["good " * 1000]})  # over --max-body-bytes 4000
    assert status == 413 and "limit of 4000" in answer["error"]
    # on one kept-alive connection: a refused body is read and dropped, and the next request is served
    conn = http.client.HTTPConnection("127.0.0.1", vader_server.port, timeout=30)
    try:
        conn.request("POST", "/get_reward", body=b"x" * 5000, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413 and "error" in json.loads(response.read())
        conn.request("POST", "/get_reward", body=json.dumps({"query": ["good"]}))
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["rewards"] == [0.38]
    finally:
        conn.close()
    assert _post(vader_server, {"query": TEXTS})[0] == 200


def test_deeply_nested_json_gets_400_and_the_server_goes_on():
    server = _start("--reward", "vader")  # the default --max-body-bytes: the 200 kB bodies are read and parsed
    try:
        deep_arrays = b"[" * 100_000 + b"]" * 100_000
        deep_objects = b'{"query": ' + b'{"a": ' * 100_000 + b"0" + b"}" * 100_001
        for body in (deep_arrays, deep_objects):
            status, answer = _request(server.base + "/get_reward", body)
            assert status == 400 and "nests JSON" in answer["error"] and "\n" not in answer["error"]
            assert _post(server, {"query": ["good"]})[1]["rewards"] == [0.38]
    finally:
        rc, err = _stop(server.proc)
    assert rc == 0 and "Recursion" not in err and "Traceback" not in err, err


def test_a_known_path_with_another_method_gets_405_with_allow(vader_server):
    # One kept-alive connection throughout: each refused request's body is read, so the next one is served.
    conn = http.client.HTTPConnection("127.0.0.1", vader_server.port, timeout=30)
    try:
        for method, path, allow in [("GET", "/get_reward", "POST"), ("PUT", "/get_reward", "POST"),
                                    ("DELETE", "/get_reward", "POST"), ("PATCH", "/get_reward?x=1", "POST"),
                                    ("OPTIONS", "/get_reward", "POST"), ("BREW", "/get_reward", "POST"),
                                    ("POST", "/health", "GET, HEAD"), ("PUT", "/health", "GET, HEAD")]:
            conn.request(method, path, body=None if method == "GET" else b'{"query": ["good"]}')
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 405 and response.getheader("Allow") == allow, (method, path)
            assert answer["error"].startswith(f"{method} is not served at {path.split('?')[0]}; use ")
        conn.request("HEAD", "/get_reward")  # a HEAD answer: the status and headers, no body
        response = conn.getresponse()
        assert response.status == 405 and response.getheader("Allow") == "POST" and response.read() == b""
        conn.request("HEAD", "/health")
        response = conn.getresponse()
        assert response.status == 200 and int(response.getheader("Content-Length")) > 0 and response.read() == b""
        conn.request("POST", "/get_reward", body=json.dumps({"query": ["good"]}))
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["rewards"] == [0.38]
    finally:
        conn.close()


def test_unknown_paths_get_404(vader_server):
    for method, url, body in [("GET", "/nope", None), ("GET", "/health/x", None), ("POST", "/reward", b'{"query": []}'),
                              ("PUT", "/nope", b"{}"), ("DELETE", "/get_reward/x", None)]:
        status, answer = _request(vader_server.base + url, body, method=method)
        assert status == 404 and "/get_reward" in answer["error"], (method, url)
    assert _request(vader_server.base + "/health")[0] == 200


def test_a_table_reward_is_served_and_ctrl_c_stops_cleanly(tmp_path):
    table = tmp_path / "words.csv"
    table.write_text("word,value\ngood,2\nbad,-1.5\n:-)),3\n")
    spec = f"table:{table},scale=2,clip=none"
    texts = ["good good good :-)) bad", "nothing", "BAD."]
    expected = json.loads(run_cli("reward", "--reward", spec, *texts, "--json", check=True).stdout)
    assert expected == [3.75, 0.0, -0.75]  # (6 + 3 - 1.5) / 2
    server = _start("--reward", spec)
    try:
        status, body = _post(server, {"query": texts})
        assert status == 200 and body["rewards"] == expected and list(body["extra_logs"]) == ["rlhf_lens_table_words_csv"]
    finally:
        rc, err = _stop(server.proc)
    assert rc == 0 and "stopped serving" in err and "Traceback" not in err


def test_serve_reward_refuses_bad_settings():
    for args, fragment in [(["--reward", "nope"], "unknown reward spec"), (["--reward", "vader", "--port", "70000"], "--port"),
                           (["--reward", "vader", "--max-texts", "0"], "--max-texts")]:
        result = run_cli("serve-reward", *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr and fragment in result.stderr
    with socket.socket() as taken:  # a port in use: one clear line
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve-reward", "--reward", "vader", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr


# --- trl_reward_func ---------------------------------------------------------------------------


def test_trl_reward_func_on_plain_and_conversational_inputs():
    reward = load_reward("vader")
    func = trl_reward_func("vader")
    assert func.__name__ == "rlhf_lens_vader"
    prompts, completions = ["The film was ", "I thought it "], ["great :) and fun", "was bad"]
    # plain strings: prompt + completion, as rlhf-lens's PPO scores them (score_query, the paper's)
    assert func(prompts=prompts, completions=completions, completion_ids=[[1], [2]], trainer_state=None) == \
        reward([p + c for p, c in zip(prompts, completions)])
    assert trl_reward_func("vader", score_query=False)(prompts, completions) == reward(completions)
    # conversational: message contents joined by newlines, the prompt's before the completion's
    conv_prompts = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Review a good film."}],
                    [{"role": "user", "content": "Say something sad."}]]
    conv_completions = [[{"role": "assistant", "content": "A wonderful film :)"}],
                        [{"role": "assistant", "content": "I hate goodbyes"}]]
    assert func(conv_prompts, conv_completions) == reward(["Be kind.\nReview a good film.\nA wonderful film :)",
                                                           "Say something sad.\nI hate goodbyes"])
    assert trl_reward_func("vader", score_query=False)(conv_prompts, conv_completions) == \
        reward(["A wonderful film :)", "I hate goodbyes"])
    assert func(prompts, completions) != func(prompts, completions[::-1])  # order is kept
    # picklable (a trainer may send it to workers), and rebuilt with the same name and numbers
    again = pickle.loads(pickle.dumps(func))
    assert again.__name__ == func.__name__ and again(prompts, completions) == func(prompts, completions)
    with pytest.raises(UserError, match="messages"):
        func(prompts, [3, 4])


def test_reward_names_and_scored_texts(tmp_path):
    assert reward_name("vader,scale=2") == "rlhf_lens_vader" and reward_name("sentiment") == "rlhf_lens_sentiment"
    assert reward_name(f"table:{tmp_path}/my-words.csv") == "rlhf_lens_table_my_words_csv"
    assert reward_name("classifier:lvwerra/distilbert-imdb,index=1") == "rlhf_lens_classifier_distilbert_imdb"
    assert scored_texts(["a ", "b "], ["x", "y"]) == ["a x", "b y"] and scored_texts(["a"], ["x"], False) == ["x"]
    with pytest.raises(UserError, match="one prompt per response"):
        scored_texts(["a"], ["x", "y"])


def test_trl_grpo_logs_our_reward(tiny_model_dir, tmp_path):
    """Two GRPO steps of TRL on the tiny GPT-NeoX, on CPU, with our reward as a TRL reward function."""
    pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[dev]' pins it)")
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    func = trl_reward_func("vader")
    inner, seen = func.reward, []

    def recording(texts: list[str]) -> list[float]:
        scores = inner(texts)
        seen.append((list(texts), scores))
        return scores

    func.reward = recording
    prompts = ["the movie was", "this film is", "the plot", "the actor"]
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
                      save_strategy="no", seed=0, learning_rate=1e-4, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[func], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}),
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    trainer.train()
    steps = [row for row in trainer.state.log_history if "rewards/rlhf_lens_vader/mean" in row]
    assert len(steps) == 2 and len(seen) == 2
    for row, (texts, scores) in zip(steps, seen):
        assert all(any(t.startswith(p) for p in prompts) for t in texts)  # prompt + completion was scored
        assert row["rewards/rlhf_lens_vader/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
