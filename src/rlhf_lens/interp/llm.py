"""Chat back-ends for LLM explainers: an OpenAI-compatible HTTP API and a local Hugging Face LM.

Both sit behind `ChatClient`, which caches every answer on disk under
`cache_dir()/llm-cache/`, keyed by the sha256 of (model, messages, sampling params), written
atomically as soon as it arrives: a run that dies half way (or an API that goes away)
keeps what it already paid for, and a rerun asks only for what is missing.
"""

from __future__ import annotations

import hashlib
import http.client
import inspect
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from ..errors import UserError
from ..io import cache_dir, write_json
from .config import LLMConfig

Messages = list[dict]
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class AnswerCache:
    """One JSON file per answer, named by the sha256 of the request."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or cache_dir() / "llm-cache"

    @staticmethod
    def key(model: str, messages: Messages, params: dict) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        answer = entry.get("answer") if isinstance(entry, dict) else None
        return answer if isinstance(answer, str) else None

    def put(self, key: str, model: str, messages: Messages, params: dict, answer: str) -> None:
        write_json(self.path(key), {"model": model, "params": params, "messages": messages, "answer": answer})

    def drop(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class ChatClient:
    """Cached, concurrent chat completions over one back-end (`send(messages, params) -> str`)."""

    def __init__(self, model_id: str, send: Callable[[Messages, dict], str], params: dict,
                 concurrency: int = 1, cache: AnswerCache | None = None):
        self.model_id = model_id
        self.send = send
        self.params = params
        self.concurrency = max(1, int(concurrency))
        self.cache = cache
        self.requests = 0
        """Answers fetched from the back-end (not the cache) by this client."""

    def _params(self, max_tokens: int | None) -> dict:
        if max_tokens is None:
            return self.params
        return {**self.params, "max_tokens": min(int(max_tokens), int(self.params["max_tokens"]))}

    def complete(self, messages: Messages, refresh: bool = False, max_tokens: int | None = None,
                 send: Callable[[Messages, dict], str] | None = None, extra: dict | None = None) -> str:
        """One answer; `max_tokens` lowers the configured limit for this request. `send` and `extra`
        (added to the params, so to the cache key) let a back-end answer some requests its own way."""
        params = {**self._params(max_tokens), **(extra or {})}
        key = AnswerCache.key(self.model_id, messages, params)
        if self.cache is not None and not refresh:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        answer = (send or self.send)(messages, params)
        self.requests += 1
        if self.cache is not None:
            self.cache.put(key, self.model_id, messages, params, answer)
        return answer

    def complete_many(self, batch: list[Messages], max_tokens: list[int] | None = None) -> list[str]:
        """Answers in order; each is cached as soon as it arrives, so a failure keeps the others.

        The first request that fails for good cancels those not yet started (an unreachable
        server fails once, not once per request) and its error is raised.
        """
        limits = max_tokens if max_tokens is not None else [None] * len(batch)
        if self.concurrency == 1 or len(batch) <= 1:
            return [self.complete(m, max_tokens=n) for m, n in zip(batch, limits)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self.complete, m, False, n) for m, n in zip(batch, limits)]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                for f in pending:
                    f.cancel()
                raise failed.exception()
            return [f.result() for f in futures]

    def forget(self, messages: Messages, max_tokens: int | None = None, extra: dict | None = None) -> None:
        """Drop a cached answer (one that turned out malformed), so a rerun asks again."""
        if self.cache is not None:
            params = {**self._params(max_tokens), **(extra or {})}
            self.cache.drop(AnswerCache.key(self.model_id, messages, params))


# --- OpenAI-compatible HTTP API --------------------------------------------------------------


OPTIONS_HINT = "--llm-model and --base-url (interp.llm.model and interp.llm.base_url in a run config)"


class _ConnectFailed(OSError):
    """The server did not accept a connection within the connect timeout (or refused it)."""


def _connection_class(http_class: type, connect_timeout: float):
    """`http_class` whose socket connects within `connect_timeout`, then reads with the request's timeout."""

    def make(host, **kwargs):
        conn = http_class(host, **kwargs)
        read_timeout = conn.timeout if conn.timeout is not socket._GLOBAL_DEFAULT_TIMEOUT else None

        def create_connection(address, timeout=None, source_address=None, *args, **kw):
            try:
                sock = socket.create_connection(address, connect_timeout, source_address)
            except TimeoutError:
                raise _ConnectFailed(f"no connection within {connect_timeout:g} s") from None
            except OSError as e:
                raise _ConnectFailed(e.strerror or str(e) or type(e).__name__) from None
            sock.settimeout(read_timeout)
            return sock

        conn._create_connection = create_connection
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def http_open(self, req):
        return self.do_open(_connection_class(http.client.HTTPConnection, self.connect_timeout), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def https_open(self, req):
        return self.do_open(_connection_class(http.client.HTTPSConnection, self.connect_timeout), req,
                            context=self._context)


def is_local_host(host: str | None) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1): plain http never leaves the machine."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def openai_client(config: LLMConfig) -> ChatClient:
    """A client for BASE_URL/chat/completions with retries and backoff (`openai_post`), answering the text."""
    post, url = openai_post(config), config.base_url.rstrip("/") + "/chat/completions"
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    return ChatClient(f"openai:{config.model}", lambda messages, p: _content(post(messages, p), url), params,
                      config.concurrency, AnswerCache() if config.cache else None)


def openai_post(config: LLMConfig, what: str = "explainer API") -> Callable[[Messages, dict], dict]:
    """`post(messages, params)`: the parsed JSON answer of BASE_URL/chat/completions, with retries and backoff.

    Connecting and answering have separate timeouts: a server that does not accept the
    connection within `connect_timeout` fails at once (no retries), so an unreachable
    --base-url is an error within seconds; a slow answer is retried after `timeout`.
    An API key is sent only over https, or over http to this machine. `what` names the server in errors.
    """
    config.check()
    url = config.base_url.rstrip("/") + "/chat/completions"
    parts = urllib.parse.urlsplit(url)
    key = os.environ.get(config.api_key_env, "").strip()
    if not key and "api.openai.com" in url:
        raise UserError(f"set ${config.api_key_env} to your OpenAI API key, or point --base-url at a local "
                        "OpenAI-compatible server")
    if key and parts.scheme == "http" and not is_local_host(parts.hostname):
        raise UserError(f"will not send the API key in ${config.api_key_env} over plain http to {parts.hostname}: "
                        f"use an https:// --base-url (interp.llm.base_url in a run config), or unset "
                        f"${config.api_key_env} (or point --api-key-env at an empty variable) for a server "
                        "that needs no key")
    folder = cache_dir() / "llm-cache" if config.cache else None
    opener = urllib.request.build_opener(_HTTPHandler(config.connect_timeout), _HTTPSHandler(config.connect_timeout))
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"

    def post(messages: Messages, params: dict) -> dict:
        body = json.dumps({"model": config.model, "messages": messages, **params}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = "no answer"
        kept = f"; answers already received are cached in {folder}" if folder else ""
        for attempt in range(config.retries + 1):
            if attempt:
                time.sleep(_delay(config.backoff, attempt, last))
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with opener.open(request, timeout=config.timeout) as response:
                    return _json_body(response.read(), url)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in RETRY_STATUS:
                    raise UserError(f"the {what} at {url} answered HTTP {e.code} ({detail}); check "
                                    f"{OPTIONS_HINT} and ${config.api_key_env}") from None
                last = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().isdigit():
                    last = f"HTTP {e.code}, retry after {min(60, int(retry_after))} s"
            except TimeoutError:
                last = f"no answer within {config.timeout:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, _ConnectFailed):
                    raise UserError(f"cannot connect to the {what} at {where} ({e.reason}); check "
                                    f"--base-url (interp.llm.base_url in a run config) and that the server is "
                                    f"up{kept}") from None
                last = f"{e.reason}" if not isinstance(e.reason, TimeoutError) else "timed out"
            except (ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
        raise UserError(f"could not get an answer from {url} after {config.retries + 1} tries ({last}); check "
                        f"--base-url (interp.llm.base_url in a run config) and that the server is up{kept}")

    return post


def _delay(backoff: float, attempt: int, last: str) -> float:
    if "retry after" in last:
        return float(last.rsplit("retry after ", 1)[1].split()[0])
    return backoff * 2 ** (attempt - 1)


def _json_body(raw: bytes, url: str) -> dict:
    try:
        return dict(json.loads(raw.decode("utf-8")))
    except (ValueError, TypeError):
        raise UserError(f"{url} did not answer with a JSON object like an OpenAI chat completion; check "
                        f"{OPTIONS_HINT}") from None


def _content(body: dict, url: str) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{url} did not answer like an OpenAI chat completion (no choices[0].message.content); "
                        f"check {OPTIONS_HINT}") from None
    if not isinstance(content, str):
        raise UserError(f"{url} answered without text content; check {OPTIONS_HINT}")
    return content


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode("utf-8", "replace")
        message = json.loads(body).get("error", {})
        text = message.get("message") if isinstance(message, dict) else str(message)
    except Exception:  # the body is only for the message: any shape will do
        text = e.reason
    return " ".join(str(text or e.reason).split())[:200]


# --- a local Hugging Face causal LM ----------------------------------------------------------


class LocalLM:
    """A local causal LM (`smollm2`, a folder, or a hub id) answering chat messages, loaded on first use.

    Messages go through the tokenizer's chat template when it has one, else plain
    "System:/User:/Assistant:" turns. `generate` decodes greedily; `fill_values` writes a
    simulation answer under a grammar: the "token<TAB>" part of each line is given, and the
    value is the most likely of 0..10 at that point (greedy decoding restricted to the only
    valid continuations), so the answer is well formed whatever the model's size.
    """

    def __init__(self, spec: str, device: str = "cpu"):
        self.spec = spec
        self.device = device
        self._loaded: tuple | None = None

    def load(self):
        if self._loaded is None:
            from ..models import load_model

            self._loaded = load_model(self.spec, device=self.device)
        return self._loaded

    def prompt_ids(self, messages: Messages, reserve: int) -> list[int]:
        """The prompt's token ids; with a short context (tiny test models) only its end, leaving `reserve`."""
        model, tok = self.load()
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
            ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = [int(i) for i in ids]
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if context and len(ids) > context - reserve:
            ids = ids[-max(1, context - reserve):]
        return ids

    def _room(self, wanted: int) -> int:
        model, _ = self.load()
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        return min(wanted, context // 2) if context else wanted

    def generate(self, messages: Messages, params: dict) -> str:
        import torch

        model, tok = self.load()
        max_new = self._room(int(params["max_tokens"]))
        ids = self.prompt_ids(messages, max_new)
        input_ids = torch.tensor([ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True)

    def fill_values(self, messages: Messages, shown: list[str]) -> str:
        """The simulation answer for the tokens `shown` (as show_token writes them), one value per line."""
        import torch

        model, tok = self.load()

        def encode(text: str) -> list[int]:
            return tok.encode(text, add_special_tokens=False)

        digits = {v: encode(str(v)) for v in range(11)}
        if any(len(digits[v]) != 1 for v in range(10)):
            raise UserError(f"the tokenizer of {self.spec} does not write digits as single tokens, which the hf "
                            "simulator needs; use --explainer openai with a local server instead")
        newline = encode("\n")[-1]
        ids = self.prompt_ids(messages, self._room(sum(len(encode(t)) + 3 for t in shown)))
        lines: list[str] = []
        pending = ids
        past = None
        # transformers 5.x names the KV cache `cache`; earlier versions `past_key_values`
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.inference_mode():
            def step(new: list[int]) -> torch.Tensor:
                nonlocal past
                out = model(input_ids=torch.tensor([new], device=model.device), use_cache=True, **{cache_arg: past})
                past = out[cache_arg]
                return out.logits[0, -1].float()

            for n, token in enumerate(shown):
                logits = step(pending + encode(("\n" if n else "") + token + "\t"))
                scores = {v: float(logits[digits[v][0]]) for v in range(11) if len(digits[v]) == 1}
                value = max(scores, key=lambda v: (scores[v], -v))
                pending = []
                if value == 1 and len(digits[10]) == 2 and digits[10][0] == digits[1][0]:
                    # "10" is "1" then "0": take the 0 if it beats ending the line
                    after_one = step([digits[1][0]])
                    if after_one[digits[10][1]] > after_one[newline]:
                        value, pending = 10, [digits[10][1]]
                else:
                    pending = [digits[value][0]]
                lines.append(f"{token}\t{value}")
        return "\n".join(lines)


def hf_client(local: LocalLM, max_new_tokens: int = 800, cache: bool = True) -> ChatClient:
    """Greedy chat completions from a local causal LM, cached like the API's."""
    spec = local.spec
    model_id = f"hf:{Path(spec).resolve() if Path(spec).is_dir() else spec}"
    return ChatClient(model_id, local.generate, {"max_tokens": max_new_tokens, "greedy": True}, 1,
                      AnswerCache() if cache else None)
