"""Yes/no answers read from a model's log-probabilities, for the detection and fuzzing scorers.

`YesNo.p_yes` gives, per chat prompt, P(yes) / (P(yes) + P(no)) of the first answer token: never parsed from
generated text, so a small scorer cannot fail by breaking a format. Two back-ends:
- `hf:MODEL`: a local causal LM (`models.load_model`); prompts through its chat template, batched (left
  padding), one forward pass per batch and the LM head on the answer position only;
- `openai`: an OpenAI-compatible server (interp.llm) asked for one token with `logprobs` and `top_logprobs`
  (llama.cpp's server and vLLM return them).
Every answer is cached on disk like the explainer's (`llm.AnswerCache`), so a rerun sends no request.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ..errors import UserError
from .config import LLMConfig
from .llm import AnswerCache, LocalLM, Messages, openai_post

YES_WORDS = ("yes", "Yes", " yes", " Yes", "YES")
NO_WORDS = ("no", "No", " no", " No", "NO")
MIN_MASS = 1e-9
"""Below this probability for both yes and no, the model did not answer yes or no: a failure, not 0.5."""
TOP_LOGPROBS = 20
"""Alternatives asked of a server per answer (OpenAI's maximum)."""
HF_BATCH = 32
"""Prompts per forward pass of a local LM: on 2 shared CPU cores SmolLM2-135M read ~100-token prompts at 0.2, 0.5,
0.6, 0.9, 1.2-1.5 and 1.2 prompts/s at batch 1, 4, 8, 16, 32 and 64 (bench/bench_interp.py --yes-no)."""
READING = "p_yes"
"""The cache key's marker that an answer is a P(yes) reading, not a completion."""

Answer = Callable[[int, "float | None"], None]


def yes_share(yes_mass: float, no_mass: float) -> float | None:
    """P(yes) / (P(yes) + P(no)), or None when neither has any probability to speak of."""
    if yes_mass < MIN_MASS and no_mass < MIN_MASS:
        return None
    return yes_mass / (yes_mass + no_mass)


class YesNo:
    """P(yes) / (P(yes) + P(no)) of a chat prompt's first answer token, from a model's log-probabilities."""

    def __init__(self, model_id: str, params: dict, cache: AnswerCache | None):
        self.model_id = model_id
        """e.g. "hf:smollm2" or "openai:NAME" (also part of the cache key)."""
        self.params = {"reading": READING, **params}
        self.cache = cache
        self.requests = 0
        """Prompts answered by the back-end (not from the cache) so far."""
        self.cached = 0
        """Prompts answered from the disk cache so far."""
        self.failures = 0
        """Prompts with no usable answer (neither yes nor no among the returned tokens)."""
        self.seconds = 0.0
        """Time spent in the back-end."""

    def p_yes(self, prompts: list[Messages], advance: Callable[[int], None] | None = None) -> list[float | None]:
        """One value in [0, 1] per chat prompt (messages [{"role","content"}]), None when failed (counted).
        `advance(n)` is called as answers arrive (for a progress bar)."""
        advance = advance or (lambda n: None)
        keys = [AnswerCache.key(self.model_id, m, self.params) for m in prompts]
        values: dict[str, float | None] = {}
        for key in dict.fromkeys(keys):
            text = self.cache.get(key) if self.cache is not None else None
            if text is not None:
                values[key] = json.loads(text)
        self.cached += sum(k in values for k in keys)
        advance(sum(k in values for k in keys))
        # a prompt asked twice in one call is read once
        todo = list({k: m for k, m in zip(keys, prompts) if k not in values}.items())
        repeats = Counter(keys)

        def answered(i: int, value: float | None) -> None:
            key, messages = todo[i]
            values[key] = value
            if self.cache is not None:
                self.cache.put(key, self.model_id, messages, self.params, json.dumps(value))
            self.requests += repeats[key]
            advance(repeats[key])

        if todo:
            start = time.perf_counter()
            try:
                self.read([m for _, m in todo], answered)
            finally:
                self.seconds += time.perf_counter() - start
        out = [values[k] for k in keys]
        self.failures += sum(v is None for v in out)
        return out

    def counts(self) -> dict:
        """{"requests", "cached", "failures", "seconds"} so far (a run records what its scorers cost)."""
        return {"requests": self.requests, "cached": self.cached, "failures": self.failures,
                "seconds": round(self.seconds, 3)}

    def read(self, prompts: list[Messages], answered: Answer) -> None:
        """The back-end: calls `answered(i, p_yes or None)` once per prompt, as each arrives."""
        raise NotImplementedError


# --- a local Hugging Face causal LM ----------------------------------------------------------


def variant_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """The token ids of the words that the tokenizer writes as one token (deduplicated, in order)."""
    ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    return list(dict.fromkeys(i[0] for i in ids if len(i) == 1))


class LocalYesNo(YesNo):
    """P(yes) from a local causal LM's next-token distribution after the chat template's generation prompt."""

    def __init__(self, spec: str, device: str = "cpu", batch_size: int = HF_BATCH, cache: bool = True):
        self.local = LocalLM(spec, device)
        self.batch_size = max(1, int(batch_size))
        self._ids: tuple[list[int], list[int]] | None = None
        model_id = f"hf:{Path(spec).resolve() if Path(spec).is_dir() else spec}"
        # the answer words are part of the reading, so of its cache key
        super().__init__(model_id, {"yes": list(YES_WORDS), "no": list(NO_WORDS)}, AnswerCache() if cache else None)

    def answer_ids(self) -> tuple[list[int], list[int]]:
        """(yes ids, no ids): the one-token spellings of yes and no in the model's vocabulary."""
        if self._ids is None:
            _, tok = self.local.load()
            yes, no = variant_ids(tok, YES_WORDS), variant_ids(tok, NO_WORDS)
            if not yes or not no:
                raise UserError(f"the tokenizer of {self.local.spec} writes no spelling of "
                                f"{'yes' if not yes else 'no'} as one token, which reading P(yes) needs; set "
                                "interp.scorer_model to another model (e.g. hf:smollm2)")
            self._ids = (yes, no)
        return self._ids

    def read(self, prompts: list[Messages], answered: Answer) -> None:
        import torch

        from ..models import kwarg_names, positions

        model, _ = self.local.load()
        yes, no = self.answer_ids()
        ids = [self.local.prompt_ids(m, 1) for m in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
        # the LM head on the answer position only (a V x T product saved per prompt)
        last_only = {"logits_to_keep": 1} if "logits_to_keep" in kwarg_names(model) else {}
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(ids[i]) for i in rows)
                batch = torch.zeros(len(rows), width, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for r, i in enumerate(rows):
                    batch[r, width - len(ids[i]):] = torch.tensor(ids[i])
                    mask[r, width - len(ids[i]):] = 1
                batch, mask = batch.to(model.device), mask.to(model.device)
                logits = model(input_ids=batch, attention_mask=mask, position_ids=positions(mask), use_cache=False,
                               **last_only).logits[:, -1].float()
                log_probs = torch.log_softmax(logits, -1)
                yes_mass = log_probs[:, yes].logsumexp(-1).exp().tolist()
                no_mass = log_probs[:, no].logsumexp(-1).exp().tolist()
                for r, i in enumerate(rows):
                    answered(i, yes_share(yes_mass[r], no_mass[r]))


# --- an OpenAI-compatible server -------------------------------------------------------------


def answer_logprobs(body: dict, url: str) -> dict[str, float]:
    """{token: logprob} of the first answer token's alternatives in a chat completion.

    Reads OpenAI's shape (choices[0].logprobs.content[0]: token, logprob, top_logprobs [{token, logprob}]) and the
    older completion shape some servers answer chat with (logprobs.top_logprobs[0]: {token: logprob})."""
    try:
        logprobs = body["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UserError(f"{url} did not answer like an OpenAI chat completion (no choices[0]); check "
                        "interp.llm.base_url and interp.llm.model") from None
    found: dict[str, float] = {}
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if isinstance(content, list) and content and isinstance(content[0], dict):
            first = content[0]
            for entry in [first, *(first.get("top_logprobs") or [])]:
                if isinstance(entry, dict) and isinstance(entry.get("token"), str) and entry.get("logprob") is not None:
                    found[entry["token"]] = float(entry["logprob"])
        top = logprobs.get("top_logprobs")
        if not found and isinstance(top, list) and top and isinstance(top[0], dict):
            found = {str(t): float(lp) for t, lp in top[0].items() if lp is not None}
    if not found:
        raise UserError(f"the scorer server at {url} returned no logprobs, and the detection and fuzzing scorers read "
                        "P(yes) from them: point interp.scorer_model = \"openai\" (interp.llm.base_url) at a server "
                        "that returns logprobs (llama.cpp's server, vLLM), set interp.scorer_model = \"hf:smollm2\", "
                        "or score with interp.scorer = [\"simulation\"] only")
    return found


def p_yes_of(logprobs: dict[str, float]) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the tokens that read yes or no once stripped and lower-cased."""
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in logprobs.items():
        word = token.strip().lower()
        if word in mass and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    return yes_share(mass["yes"], mass["no"])


class ServerYesNo(YesNo):
    """P(yes) from an OpenAI-compatible server's `top_logprobs` of a one-token answer, `concurrency` at once."""

    def __init__(self, config: LLMConfig):
        self.post = openai_post(config, what="scorer server")
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.concurrency = max(1, int(config.concurrency))
        self.request = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        super().__init__(f"openai:{config.model}", self.request, AnswerCache() if config.cache else None)

    def ask(self, messages: Messages) -> float | None:
        return p_yes_of(answer_logprobs(self.post(messages, self.request), self.url))

    def read(self, prompts: list[Messages], answered: Answer) -> None:
        if self.concurrency == 1 or len(prompts) == 1:
            for i, m in enumerate(prompts):
                answered(i, self.ask(m))
            return
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.ask, m): i for i, m in enumerate(prompts)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        # a server that fails for good fails once, not once per prompt; the answers so far are cached
                        for f in pending:
                            f.cancel()
                        raise future.exception()
                    answered(futures[future], future.result())


def yes_no_model(spec: str, llm: LLMConfig | None = None, device: str = "cpu") -> YesNo:
    """spec: "hf:MODEL" (a local causal LM via models.load_model; batched forward passes, logits at the answer
    position) or "openai" (llm's OpenAI-compatible server; max_tokens 1, logprobs, top_logprobs)."""
    if spec == "openai":
        if llm is None:
            raise UserError("interp.scorer_model = \"openai\" needs interp.llm (base_url and model of the server)")
        return ServerYesNo(llm)
    if spec.startswith("hf:") and spec[3:].strip():
        return LocalYesNo(spec[3:].strip(), device, cache=llm.cache if llm is not None else True)
    raise UserError(f"unknown interp.scorer_model {spec!r}; use hf:MODEL (a local LM, e.g. hf:smollm2) or openai")
