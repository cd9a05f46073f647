"""interp.answers: P(yes) read from a tiny real model's logits (batched as one-by-one) and from a real HTTP server's
logprobs (OpenAI's chat-completions JSON on 127.0.0.1), cached, failures counted, no logprobs a one-line error."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import llama_like
from rlhf_lens.errors import UserError
from rlhf_lens.interp import LLMConfig
from rlhf_lens.interp.answers import NO_WORDS, YES_WORDS, LocalYesNo, p_yes_of, yes_no_model

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = [[{"role": "user", "content": "Does the text 'a good film' contain praise? yes or no"}],
           [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Is it bad?"}],
           [{"role": "user", "content": "no"}],
           [{"role": "user", "content": "Yes, the plot of the movie was boring and the music was dull: is it?"}]]


@pytest.fixture(scope="module")
def yes_no_llama(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has a chat template and writes yes and no (some spellings) as one token, with a
    sharpened LM head so that P(yes) differs from prompt to prompt."""
    from transformers import AutoModelForCausalLM

    from rlhf_lens.models import save_model, train_tokenizer

    texts = ["yes no Yes No the movie was good and the plot was bad . yes , no ."] * 20
    tok = train_tokenizer(texts, 300)
    tok.chat_template = TEMPLATE
    tok_dir = tmp_path_factory.mktemp("yes-no-tok")
    tok.save_pretrained(tok_dir)
    folder = llama_like(tok_dir, tmp_path_factory.mktemp("models") / "llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    from transformers import AutoTokenizer

    return save_model(model, AutoTokenizer.from_pretrained(folder), tmp_path_factory.mktemp("models") / "sharp")


def hand_p_yes(folder: Path, messages: list[dict]) -> float:
    """The same model's full forward pass: softmax at the position after the generation prompt, summed over the
    one-token spellings of yes and of no."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|assistant|>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([ids])).logits[0, -1].double().softmax(-1)
    spell = [tok.encode(w, add_special_tokens=False) for w in YES_WORDS + NO_WORDS]
    yes = {s[0] for s in spell[:len(YES_WORDS)] if len(s) == 1}
    no = {s[0] for s in spell[len(YES_WORDS):] if len(s) == 1}
    assert yes and no
    y, n = float(probs[list(yes)].sum()), float(probs[list(no)].sum())
    return y / (y + n)


def test_p_yes_is_the_softmax_at_the_answer_position_and_batches_match_one_by_one(yes_no_llama):
    by_hand = [hand_p_yes(yes_no_llama, m) for m in PROMPTS]
    assert max(by_hand) - min(by_hand) > 0.01  # the readings differ: the comparison below is not 0.5 == 0.5
    batched = LocalYesNo(str(yes_no_llama), batch_size=3, cache=False)
    one_by_one = LocalYesNo(str(yes_no_llama), batch_size=1, cache=False)
    got = batched.p_yes(PROMPTS)
    assert got == pytest.approx(by_hand, abs=1e-5)
    assert one_by_one.p_yes(PROMPTS) == pytest.approx(got, abs=1e-5)
    assert batched.requests == len(PROMPTS) and batched.failures == 0 and batched.seconds > 0


def test_local_readings_are_cached_and_a_prompt_asked_twice_is_read_once(yes_no_llama, monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    first = yes_no_model(f"hf:{yes_no_llama}")
    arrived: list[int] = []
    values = first.p_yes(PROMPTS + PROMPTS[:1], arrived.append)
    assert values[-1] == values[0] and sum(arrived) == len(PROMPTS) + 1
    assert first.requests == len(PROMPTS) + 1 and first.cached == 0
    again = yes_no_model(f"hf:{yes_no_llama}")
    assert again.p_yes(PROMPTS) == values[:-1]
    assert again.requests == 0 and again.cached == len(PROMPTS) and again.local._loaded is None  # never loaded


def test_a_tokenizer_without_one_token_yes_is_a_clear_error(tiny_model_dir):
    reader = yes_no_model(f"hf:{tiny_model_dir}", LLMConfig(cache=False))
    with pytest.raises(UserError, match="interp.scorer_model") as error:
        reader.p_yes(PROMPTS[:1])
    assert "\n" not in str(error.value)


def test_yes_and_no_tokens_are_read_stripped_and_lower_cased():
    assert p_yes_of({" YES": math.log(0.3), "yes\n": math.log(0.3), "No": math.log(0.2), "maybe": 0.0}) \
        == pytest.approx(0.75)
    assert p_yes_of({"maybe": 0.0, "the": -1.0}) is None
    assert p_yes_of({"yes": math.log(1e-12), "no": math.log(1e-11)}) is None  # both below MIN_MASS


def test_an_unknown_scorer_model_is_a_clear_error():
    with pytest.raises(UserError, match="interp.scorer_model"):
        yes_no_model("gpt:4")


# --- a real OpenAI-compatible server on 127.0.0.1 ----------------------------------------------


class LogprobServer:
    """/chat/completions answering one token with the logprobs `answer(messages)` gives ({token: logprob}, or None
    for an answer without logprobs); `old_shape` answers in the completion shape some servers use."""

    def __init__(self, answer, old_shape: bool = False):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                top = answer(body["messages"])
                choice = {"index": 0, "message": {"role": "assistant", "content": next(iter(top or {"x": 0}))},
                          "finish_reason": "length", "logprobs": None}
                if top is not None and old_shape:
                    choice["logprobs"] = {"tokens": [next(iter(top))], "top_logprobs": [top]}
                elif top is not None:
                    first = next(iter(top))
                    choice["logprobs"] = {"content": [{"token": first, "logprob": top[first], "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]}]}
                payload = json.dumps({"object": "chat.completion", "choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def config(self, **overrides) -> LLMConfig:
        return LLMConfig(model="scorer", base_url=self.url, api_key_env="NO_SUCH_KEY_VARIABLE", retries=1,
                         backoff=0.01, timeout=5.0, **overrides)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def planted(messages) -> dict | None:
    """Yes (0.6) over no (0.2) when the prompt says 'good'; only other words when it says 'nothing'."""
    text = messages[-1]["content"]
    if "nothing" in text:
        return {"Maybe": math.log(0.5), "The": math.log(0.2)}
    if "good" in text:
        return {"Yes": math.log(0.6), " no": math.log(0.2), "Maybe": math.log(0.1)}
    return {" No": math.log(0.9), "yes": math.log(0.1)}


@pytest.fixture
def logprob_server(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    server = LogprobServer(planted)
    yield server
    server.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_p_yes_from_a_servers_top_logprobs_in_order_and_cached(logprob_server):
    reader = yes_no_model("openai", logprob_server.config(concurrency=3))
    prompts = [ask(f"good {i}") for i in range(4)] + [ask("bad"), ask("nothing here")]
    arrived: list[int] = []
    values = reader.p_yes(prompts, arrived.append)
    assert values[:4] == pytest.approx([0.75] * 4) and values[4] == pytest.approx(0.1) and values[5] is None
    assert reader.requests == 6 and reader.failures == 1 and sum(arrived) == 6
    body = logprob_server.requests[0]
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["model"] == "scorer" and "reading" not in body
    again = yes_no_model("openai", logprob_server.config())
    assert again.p_yes(prompts) == values
    assert len(logprob_server.requests) == 6 and again.requests == 0 and again.cached == 6 and again.failures == 1


def test_the_completion_shape_of_logprobs_is_read_too(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    server = LogprobServer(planted, old_shape=True)
    try:
        assert yes_no_model("openai", server.config(cache=False)).p_yes([ask("good")]) == pytest.approx([0.75])
    finally:
        server.close()


def test_a_server_without_logprobs_fails_with_one_line_naming_the_option(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "cache"))
    server = LogprobServer(lambda messages: None)
    try:
        reader = yes_no_model("openai", server.config(concurrency=2))
        with pytest.raises(UserError) as error:
            reader.p_yes([ask("good"), ask("bad"), ask("good too")])
    finally:
        server.close()
    message = str(error.value)
    assert "\n" not in message and "interp.scorer_model" in message and "returned no logprobs" in message
    assert server.url in message and 'interp.scorer = ["simulation"]' in message
