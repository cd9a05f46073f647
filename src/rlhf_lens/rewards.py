"""Rewards: a reward is a callable `texts -> list[float]`, one number per text.

A reward spec is `KIND[:ARG][,key=value...]` (see docs/rewards.md):

- `vader`, `table:FILE`: a utility table U (word -> value); reward = clip(sum of U(w) over
  `words(text)` / scale, -clip, +clip), scale 5 and clip 10 by default (the paper's).
  Options: `scale=S`, `clip=C` (or `clip=none`).
- `classifier:MODEL`: the logit of one class of a Hugging Face sequence classifier, with its own
  tokenizer, truncated to its maximum length. Options: `index=N` (default 1) or `label=NAME`,
  `batch_size=N`.
- `sentiment[:CORPUS]`: an offline logistic regression on word 1- and 2-grams, fitted on a
  labelled corpus (default `pang-lee-sentences`) and cached; the reward is its logit (log-odds
  of positive).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from .errors import UserError, first_line

SPEC_HELP = "use vader, table:FILE, classifier:MODEL, sentiment or sentiment:CORPUS"
DEFAULT_SCALE = 5.0
DEFAULT_CLIP = 10.0
SENTIMENT_CORPUS = "pang-lee-sentences"


class Reward(Protocol):
    def __call__(self, texts: list[str]) -> list[float]: ...


# --- words ---------------------------------------------------------------------------------

# Inside a whitespace chunk, words are separated by anything that is not a letter, digit,
# apostrophe or hyphen ("good/bad" -> good, bad; "can't" and "well-made" stay whole).
_SEPARATORS = re.compile(r"[^\w'-]+|_+")
_SENTENCE_END = ".,;!?"


def words(text: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """The words of `text` that a utility table is looked up with (the one tokenisation of rlhf-lens).

    Lower-case; curly apostrophes become '; split on whitespace. A chunk that is itself a
    punctuated entry of the VADER lexicon (emoticons such as ":)", ":-d" or "(:") or of `keep`,
    possibly followed by sentence punctuation (":)." or ":)!"), is one word. Any other chunk is
    cut at characters that are not letters, digits, apostrophes or hyphens, and each piece
    loses leading and trailing apostrophes and hyphens; empty pieces are dropped.
    `keep`: further entries to keep whole (`special_entries(table)` of a user table).
    """
    vader = _vader_special()
    out: list[str] = []
    for chunk in text.lower().replace("\u2019", "'").split():
        trimmed = chunk.rstrip(_SENTENCE_END)
        if chunk in vader or chunk in keep:
            out.append(chunk)
        elif trimmed and (trimmed in vader or trimmed in keep):
            out.append(trimmed)
        else:
            out.extend(_split_chunk(chunk))
    return out


def _split_chunk(chunk: str) -> list[str]:
    return [piece for piece in (p.strip("'-") for p in _SEPARATORS.split(chunk)) if piece]


def special_entries(table: Iterable[str]) -> frozenset[str]:
    """Entries the splitting rule would cut or trim (":)", "(:", "$:"), which `words` keeps whole.

    Entries holding whitespace ("can't stand") are left out: a single word never equals them.
    """
    return frozenset(e for e in table if e and not any(c.isspace() for c in e) and _split_chunk(e) != [e])


@functools.cache
def _vader_special() -> frozenset[str]:
    return special_entries(_cached_vader_dict())


# --- utility tables ------------------------------------------------------------------------


def vader_lexicon_path() -> Path:
    """`vader_lexicon.txt` inside the installed vaderSentiment package (found without importing it)."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or spec.origin is None:
        raise UserError("the vader table needs the vaderSentiment package; run `pip install vaderSentiment`")
    path = Path(spec.origin).parent / "vader_lexicon.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall vaderSentiment")
    return path


def load_utility_table(spec: str) -> dict[str, float]:
    """A utility table word -> value: `vader` (the lexicon's mean valence) or a CSV/TSV/JSON file.

    Words are lower-cased; when two rows give the same word, the later one wins (as
    vaderSentiment's own loader does with the lexicon's few repeated entries).
    """
    if spec == "vader":
        return dict(_cached_vader_dict())
    path = Path(spec[len("table:"):] if spec.startswith("table:") else spec)
    if not path.is_file():
        raise UserError(f"utility table {path} does not exist; give vader or a CSV/TSV/JSON file of word, value")
    return _read_table(path)


@functools.cache
def _cached_vader_dict() -> dict[str, float]:  # callers copy it: the cache must not be mutated
    return _read_table(vader_lexicon_path(), delimiter="\t")


def _read_table(path: Path, delimiter: str | None = None) -> dict[str, float]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the table as UTF-8") from None
    if suffix == ".json":
        rows = _json_rows(path, text)
    else:
        if delimiter is None:
            delimiter = "," if suffix == ".csv" else "\t"
        rows = []
        for n, cells in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1):
            if not cells or not "".join(cells).strip():
                continue
            if len(cells) < 2:
                raise UserError(f"{path}:{n}: expected word{delimiter!r}value, got {delimiter.join(cells)[:60]!r}")
            if n == 1 and re.fullmatch(r"[A-Za-z_ ]+", cells[1].strip()):
                continue  # a header line such as "word,value"
            rows.append((f"{path}:{n}", cells[0], cells[1]))
    table: dict[str, float] = {}
    for where, word, value in rows:
        word = str(word).strip().lower()
        if not word:
            raise UserError(f"{where}: empty word; every row needs a word and a value")
        table[word] = _number(value, where, word)
    if not table:
        raise UserError(f"{path}: the table is empty; give rows of word, value")
    return table


def _json_rows(path: Path, text: str) -> list[tuple[str, object, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give an object word -> value") from None
    if isinstance(data, dict):
        return [(f"{path}: entry {k!r}", k, v) for k, v in data.items()]
    if isinstance(data, list):
        rows = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and "word" in item and "value" in item:
                rows.append((f"{path}: item {i}", item["word"], item["value"]))
            elif isinstance(item, list | tuple) and len(item) == 2:
                rows.append((f"{path}: item {i}", item[0], item[1]))
            else:
                raise UserError(f"{path}: item {i} is not [word, value] or {{\"word\": ..., \"value\": ...}}")
        return rows
    raise UserError(f"{path}: expected a JSON object word -> value or a list of [word, value]")


def _number(value: object, where: str, word: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserError(f"{where}: value of {word!r} is not a number ({value!r}); fix that row")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: value of {word!r} is not a number ({str(value)[:30]!r}); fix that row") from None
    if not math.isfinite(number):
        raise UserError(f"{where}: value of {word!r} is not finite ({value!r}); fix that row")
    return number


class UtilityTableReward:
    """clip(sum of U(w) over the words of a text / scale, -clip, +clip); unknown words count 0."""

    def __init__(self, table: dict[str, float], scale: float = DEFAULT_SCALE, clip: float | None = DEFAULT_CLIP,
                 name: str = "table"):
        if scale <= 0 or (clip is not None and clip <= 0):
            raise UserError(f"reward scale and clip must be positive (got scale={scale}, clip={clip})")
        self.table, self.scale, self.clip = table, float(scale), clip
        self._keep = special_entries(table)
        self.info = {"kind": "table", "table": name, "entries": len(table), "scale": self.scale, "clip": clip}

    def __call__(self, texts: list[str]) -> list[float]:
        return [self.score(text) for text in texts]

    def score(self, text: str) -> float:
        total = sum(self.table.get(w, 0.0) for w in words(text, self._keep)) / self.scale
        return total if self.clip is None else min(max(total, -self.clip), self.clip)


# --- classifiers ---------------------------------------------------------------------------


class ClassifierReward:
    """The logit of class `index` of a Hugging Face sequence classifier, scored in batches."""

    def __init__(self, model_spec: str, index: int | str = 1, batch_size: int = 32, device: str = "cpu"):
        import torch  # noqa: F401  (fail here, not mid-run, if torch is broken)
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from .models import resolve_device

        self.device = resolve_device(device)
        local = Path(model_spec).expanduser()
        if model_spec.startswith((".", "/", "~")) and not local.is_dir():
            raise UserError(f"classifier {model_spec} does not exist; give a saved sequence classifier or a hub id")
        source = str(local) if local.is_dir() else model_spec
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load a classifier config from {model_spec!r} ({first_line(e)})") from None
        architectures = getattr(config, "architectures", None) or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise UserError(f"{model_spec} is not a sequence classifier (architecture {', '.join(architectures) or 'unknown'}); "
                            "give a model saved from AutoModelForSequenceClassification")
        self.index = _class_index(config, index, model_spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForSequenceClassification.from_pretrained(source).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"could not load the classifier {model_spec!r} ({first_line(e)})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        limits = [n for n in (self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 10**6]
        self.max_length = min(limits) if limits else 512
        self.batch_size = batch_size
        # Only what the model's forward takes (a BPE tokenizer may add token_type_ids DistilBERT refuses).
        self._inputs = set(inspect.signature(self.model.forward).parameters)
        self.info = {"kind": "classifier", "model": model_spec, "index": self.index,
                     "label": config.id2label.get(self.index, str(self.index)), "max_length": self.max_length}

    def __call__(self, texts: list[str]) -> list[float]:
        import torch

        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**{k: v for k, v in batch.items() if k in self._inputs}).logits
            scores += logits[:, self.index].float().tolist()
        return scores


def _class_index(config, index: int | str, spec: str) -> int:
    n = int(getattr(config, "num_labels", 2))
    if isinstance(index, str) and not index.lstrip("-").isdigit():
        by_name = {str(k).lower(): int(v) for k, v in (config.label2id or {}).items()}
        if index.lower() not in by_name:
            raise UserError(f"classifier {spec} has no label {index!r}; its labels: {', '.join(map(str, config.label2id))}")
        return by_name[index.lower()]
    index = int(index)
    if not 0 <= index < n:
        raise UserError(f"class index {index} out of range: classifier {spec} has {n} classes (0..{n - 1})")
    return index


# --- the offline sentiment classifier ------------------------------------------------------

SENTIMENT_FORMAT = "rlhf-lens.sentiment"
SENTIMENT_VERSION = 1
SENTIMENT_C = 1.0
SENTIMENT_MIN_COUNT = 2
SENTIMENT_TEST_FRACTION = 0.2


def _ngrams(text: str) -> set[str]:
    tokens = words(text)
    return set(tokens) | {f"{a} {b}" for a, b in zip(tokens, tokens[1:])}


class SentimentReward:
    """Logistic regression on binary word 1- and 2-grams; reward = its logit (log-odds of positive)."""

    def __init__(self, weights: dict[str, float], intercept: float, info: dict):
        self.weights, self.intercept, self.info = weights, intercept, info

    def __call__(self, texts: list[str]) -> list[float]:
        return [self.intercept + sum(self.weights.get(g, 0.0) for g in _ngrams(t)) for t in texts]

    @classmethod
    def fit(cls, corpus_spec: str = SENTIMENT_CORPUS) -> SentimentReward:
        """Fit on the corpus's train split (or cache hit), report held-out accuracy on its test split."""
        from .data import corpus_fingerprint, load_corpus
        from .io import cache_dir, write_json

        corpus = load_corpus(corpus_spec)
        key = hashlib.sha256(f"{corpus_fingerprint(corpus)}|{SENTIMENT_VERSION}|{SENTIMENT_C}|{SENTIMENT_MIN_COUNT}"
                             .encode()).hexdigest()[:16]
        path = cache_dir() / "sentiment" / f"{key}.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                if saved.get("format") == SENTIMENT_FORMAT and saved.get("version") == SENTIMENT_VERSION:
                    return cls(saved["weights"], saved["intercept"], {**saved["info"], "cached": str(path)})
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged cache entry is refitted below
        train, test = _labelled_splits(corpus)
        weights, intercept, accuracy = _fit_logistic(train, test)
        info = {"kind": "sentiment", "corpus": corpus_spec, "n_train": len(train), "n_test": len(test),
                "test_accuracy": accuracy, "features": len(weights)}
        write_json(path, {"format": SENTIMENT_FORMAT, "version": SENTIMENT_VERSION, "info": info,
                          "intercept": intercept, "weights": weights})
        return cls(weights, intercept, {**info, "cached": str(path)})


def _labelled_splits(corpus) -> tuple[list, list]:
    docs = {s: [d for d in corpus.splits[s] if d.label is not None] for s in corpus.splits}
    if "train" in docs and "test" in docs:
        train, test = docs["train"], docs["test"]
    else:  # one split: hold out every 5th labelled document
        every = [d for split in sorted(docs) for d in docs[split]]
        step = round(1 / SENTIMENT_TEST_FRACTION)
        train = [d for i, d in enumerate(every) if i % step]
        test = [d for i, d in enumerate(every) if not i % step]
    if not train or not test or len({d.label for d in train}) < 2:
        raise UserError(f"corpus {corpus.name!r} needs positive and negative labels in its train and test "
                        "splits to fit the sentiment classifier; give a labelled corpus")
    return train, test


def _fit_logistic(train: list, test: list) -> tuple[dict[str, float], float, float]:
    import numpy as np
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    grams = [_ngrams(d.text) for d in train]
    counts: dict[str, int] = {}
    for g in grams:
        for x in g:
            counts[x] = counts.get(x, 0) + 1
    vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= SENTIMENT_MIN_COUNT))}

    def matrix(sets: list[set[str]]):
        rows = [i for i, s in enumerate(sets) for g in s if g in vocab]
        cols = [vocab[g] for s in sets for g in s if g in vocab]
        return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), len(vocab)))

    y = np.array([d.label for d in train])
    model = LogisticRegression(C=SENTIMENT_C, max_iter=2000).fit(matrix(grams), y)
    accuracy = float((model.predict(matrix([_ngrams(d.text) for d in test])) == np.array([d.label for d in test])).mean())
    coef = model.coef_[0]
    weights = {g: float(coef[i]) for g, i in vocab.items() if coef[i] != 0.0}
    return weights, float(model.intercept_[0]), accuracy


# --- specs ---------------------------------------------------------------------------------

_OPTIONS = {"vader": {"scale", "clip"}, "table": {"scale", "clip"}, "classifier": {"index", "label", "batch_size"},
            "sentiment": set()}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """`KIND[:ARG][,key=value...]` -> (kind, arg, options). Trailing `,key=value` parts are options."""
    parts = spec.split(",")
    options: dict[str, str] = {}
    while len(parts) > 1 and re.fullmatch(r"\s*\w+\s*=.*", parts[-1]):
        key, _, value = parts.pop().partition("=")
        options[key.strip()] = value.strip()
    head = ",".join(parts).strip()
    kind, _, arg = head.partition(":")
    if kind not in _OPTIONS or (kind == "vader" and arg) or (kind in ("table", "classifier") and not arg):
        raise UserError(f"unknown reward spec {spec!r}; {SPEC_HELP}")
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
        raise UserError(f"reward {kind} has no option {', '.join(sorted(unknown))} (options: {allowed})")
    return kind, arg, options


def load_reward(spec: str, device: str = "cpu") -> Reward:
    """Build the reward a spec names (see the module doc). Rewards carry `.info` (a JSON-able dict)."""
    kind, arg, options = parse_spec(spec)
    if kind in ("vader", "table"):
        table = load_utility_table("vader" if kind == "vader" else arg)
        clip_text = options.get("clip", str(DEFAULT_CLIP))
        scale = _float_option(options.get("scale", str(DEFAULT_SCALE)), "scale")
        clip = None if clip_text.lower() == "none" else _float_option(clip_text, "clip")
        return UtilityTableReward(table, scale=scale, clip=clip, name="vader" if kind == "vader" else arg)
    if kind == "classifier":
        if "index" in options and "label" in options:
            raise UserError("give the classifier's class as index=N or label=NAME, not both")
        index: int | str = options.get("label", options.get("index", "1"))
        batch_size = int(_float_option(options.get("batch_size", "32"), "batch_size"))
        if batch_size < 1:
            raise UserError(f"classifier batch_size must be at least 1 (got {batch_size})")
        return ClassifierReward(arg, index=index, batch_size=batch_size, device=device)
    return SentimentReward.fit(arg or SENTIMENT_CORPUS)


def _float_option(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"reward option {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"reward option {name}={text!r} is not finite")
    return value


# --- other trainers: what text is scored, names, TRL -------------------------------------------


def scored_texts(prompts: list[str], responses: list[str], score_query: bool = True) -> list[str]:
    """The texts a reward scores for (prompt, response) pairs: prompt + response concatenated as
    decoded text (the paper's, `PPOConfig.score_query`), or the response alone."""
    if len(prompts) != len(responses):
        raise UserError(f"{len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
    return [p + r for p, r in zip(prompts, responses)] if score_query else list(responses)


def reward_name(spec: str) -> str:
    """A Python-identifier name for a reward spec: `rlhf_lens_vader`, `rlhf_lens_table_my_csv`, ...

    Trainers log a reward function under its name (TRL: `rewards/<name>/mean`)."""
    kind, arg, _ = parse_spec(spec)
    tail = Path(arg).name if arg else ""
    return re.sub(r"\W+", "_", f"rlhf_lens_{kind}_{tail}" if tail else f"rlhf_lens_{kind}").strip("_")


def _message_text(item: object) -> str:
    """A plain string as is; a conversation (a list of {"role", "content"} dicts) as its contents
    joined by newlines; a single message dict as its content."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        item = [item]
    if isinstance(item, list) and all(isinstance(m, dict) and "content" in m for m in item):
        return "\n".join(_content_text(m["content"]) for m in item)
    raise UserError(f"expected a string or a list of {{'role', 'content'}} messages, got {type(item).__name__}")


def _content_text(content: object) -> str:
    # Multimodal-style content is a list of parts; only the text parts are scored.
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


class TrlRewardFunc:
    """A reward with TRL's `reward_funcs` signature: `f(prompts, completions, **kwargs) -> list[float]`.

    Scores `scored_texts(prompts, completions, score_query)`: by default prompt + completion, as
    rlhf-lens's own PPO does (the paper's). Conversational prompts and completions (lists of
    {"role", "content"} messages) become their message contents joined by newlines; with
    `score_query` the prompt's messages come first, then a newline, then the completion's.
    A class rather than a closure so trainers can pickle it (the reward is rebuilt on unpickling).
    """

    def __init__(self, spec: str, score_query: bool = True, device: str = "cpu"):
        self.spec, self.score_query, self.device = spec, score_query, device
        self.__name__ = reward_name(spec)  # TRL's get_callable_name reads __name__
        self.reward = load_reward(spec, device=device)

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        responses = [_message_text(c) for c in completions]
        if not self.score_query:
            texts = responses
        else:
            if prompts is None or len(prompts) != len(completions):
                raise UserError("TRL gave a different number of prompts and completions; cannot score prompt + completion")
            conversational = [not isinstance(p, str) for p in prompts]
            # A conversation's messages are separated by newlines, the prompt's last one from the completion too.
            texts = scored_texts([_message_text(p) + ("\n" if conv else "") for p, conv in zip(prompts, conversational)],
                                 responses)
        return [float(s) for s in self.reward(texts)]

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "score_query": self.score_query, "device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["score_query"], state["device"])

    def __repr__(self) -> str:
        return f"trl_reward_func({self.spec!r}, score_query={self.score_query})"


def trl_reward_func(spec: str, score_query: bool = True, device: str = "cpu") -> TrlRewardFunc:
    """A reward spec as a TRL reward function (GRPOTrainer(reward_funcs=[trl_reward_func("vader")]));
    logged by TRL under `rlhf_lens_<kind>`. See TrlRewardFunc for what text is scored."""
    return TrlRewardFunc(spec, score_query=score_query, device=device)
