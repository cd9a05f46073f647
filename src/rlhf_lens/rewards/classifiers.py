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


class ClassifierReward:
    """The logit of class `index` of a Hugging Face sequence classifier, scored in batches."""

    def __init__(self, model_spec: str, index: int | str = 1, batch_size: int = 32, device: str = "cpu"):
        import torch  # noqa: F401  (fail here, not mid-run, if torch is broken)
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from ..models import quiet_transformers, resolve_device

        quiet_transformers()
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
