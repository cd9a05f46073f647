"""Rewards read off a classifier: a Hugging Face sequence classifier's logit (`classifier:MODEL`), and the
offline sentiment classifier (`sentiment[:CORPUS]`), a logistic regression on word 1- and 2-grams fitted and cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from ..errors import UserError, first_line
from .tables import words

SENTIMENT_CORPUS = "pang-lee-sentences"

# --- classifiers ---------------------------------------------------------------------------


class SequenceClassifier:
    """A saved Hugging Face `AutoModelForSequenceClassification` and its tokenizer, scored in batches: the one loader
    of `classifier:MODEL` and `rm:PATH`. Every failure to load is one line naming `what` (the reward kind).

    Batches are padded on the right with the model's own pad id (a last-token-pooling model, GPT or Llama, finds its
    last real token by it; one saved without a pad id gets the tokenizer's, else its eos), so a text scores the same
    alone or in any batch. A text that tokenizes to nothing is read as the single eos token.
    """

    def __init__(self, model_spec: str, what: str, device: str = "cpu", batch_size: int = 32,
                 truncation_side: str | None = None, max_length: int | None = None):
        import torch  # noqa: F401  (fail here, not mid-run, if torch is broken)
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from ..models import quiet_transformers, resolve_device

        quiet_transformers()
        self.device = resolve_device(device)
        local = Path(model_spec).expanduser()
        if model_spec.startswith((".", "/", "~")) and not local.is_dir():
            raise UserError(f"{what} {model_spec} does not exist; give a saved sequence classifier or a hub id")
        source = str(local) if local.is_dir() else model_spec
        try:
            self.config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load a {what} config from {model_spec!r} ({first_line(e)})") from None
        self.architectures = list(getattr(self.config, "architectures", None) or [])
        if not any(a.endswith("ForSequenceClassification") for a in self.architectures):
            raise UserError(f"{model_spec} is not a sequence classifier (architecture "
                            f"{', '.join(self.architectures) or 'unknown'}); give a {what} saved from "
                            "AutoModelForSequenceClassification")
        self.num_labels = int(getattr(self.config, "num_labels", 2))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForSequenceClassification.from_pretrained(source).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"could not load the {what} {model_spec!r} ({first_line(e)})") from None
        tok, model_config = self.tokenizer, self.model.config
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        if model_config.pad_token_id is None:
            model_config.pad_token_id = tok.pad_token_id
        elif model_config.pad_token_id != tok.pad_token_id:
            tok.pad_token_id = model_config.pad_token_id  # the model pools at the last token that is not its pad
        tok.padding_side = "right"  # positions count from the first token, as in training
        if truncation_side is not None:
            tok.truncation_side = truncation_side
        limits = [n for n in (tok.model_max_length, getattr(self.config, "max_position_embeddings", None), max_length)
                  if isinstance(n, int) and 0 < n < 10**6]
        self.max_length = min(limits) if limits else 512
        self.batch_size = batch_size
        self._empty = [tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id]
        # Only what the model's forward takes (a BPE tokenizer may add token_type_ids DistilBERT refuses).
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def logits(self, texts: list[str]) -> list[list[float]]:
        """Every label's logit for each text, in input order."""
        import torch

        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(texts[start:start + self.batch_size], truncation=True, max_length=self.max_length)
            encoded["input_ids"] = [ids or list(self._empty) for ids in encoded["input_ids"]]
            encoded["attention_mask"] = [[1] * len(ids) for ids in encoded["input_ids"]]
            if "token_type_ids" in encoded:
                encoded["token_type_ids"] = [t or [0] for t in encoded["token_type_ids"]]
            batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**{k: v for k, v in batch.items() if k in self._inputs}).logits
            rows += logits.float().tolist()
        return rows


class ClassifierReward:
    """The logit of class `index` of a Hugging Face sequence classifier, scored in batches."""

    def __init__(self, model_spec: str, index: int | str = 1, batch_size: int = 32, device: str = "cpu"):
        self.classifier = SequenceClassifier(model_spec, "classifier", device=device, batch_size=batch_size)
        config = self.classifier.config
        self.index = _class_index(config, index, model_spec)
        self.max_length = self.classifier.max_length
        self.info = {"kind": "classifier", "model": model_spec, "index": self.index,
                     "label": config.id2label.get(self.index, str(self.index)), "max_length": self.max_length}

    def __call__(self, texts: list[str]) -> list[float]:
        return [row[self.index] for row in self.classifier.logits(texts)]


def _class_index(config, index: int | str, spec: str) -> int:
    n = int(getattr(config, "num_labels", 2))
    if isinstance(index, str) and not index.lstrip("-").isdigit():
        by_name = {str(k).lower(): int(v) for k, v in (config.label2id or {}).items()}
        if index.lower() not in by_name:
            raise UserError(f"classifier {spec} has no label {index!r}; its labels: {', '.join(map(str, config.label2id))}")
        return by_name[index.lower()]
    index = int(index)
    if not 0 <= index < n:
        if n == 1:
            raise UserError(f"classifier {spec} has 1 label: a reward model; use rm:{spec}")
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
        from ..data import corpus_fingerprint, load_corpus
        from ..io import cache_dir, write_json

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
