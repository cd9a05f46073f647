import json

import pytest
import torch

from conftest import assert_user_error, run_cli
from rlhf_lens.errors import UserError
from rlhf_lens.rewards import (
    ClassifierReward,
    load_reward,
    load_utility_table,
    special_entries,
    vader_lexicon_path,
    words,
)


def _lexicon_by_hand() -> dict[str, float]:
    """The VADER lexicon parsed here, independently: token TAB mean ..., lower-cased, later rows win."""
    table = {}
    for line in vader_lexicon_path().read_bytes().decode("utf-8").split("\r\n"):
        if line.strip():
            token, mean = line.split("\t")[:2]
            table[token.lower()] = float(mean)
    return table


# --- words -------------------------------------------------------------------------------------


def test_words_keeps_contractions_and_emoticons():
    assert words("I can\u2019t STAND it :) but it was GOOD!! (great)") == [
        "i", "can't", "stand", "it", ":)", "but", "it", "was", "good", "great"]
    # an emoticon followed by sentence punctuation, upper-case emoticons, inner separators, hyphens
    assert words("fine :). wow :-D good/bad well-made -- 'fun' 10/10") == [
        "fine", ":)", "wow", ":-d", "good", "bad", "well-made", "fun", "10", "10"]
    assert words("") == [] and words("... !!! --") == []


def test_words_keeps_punctuated_entries_of_a_user_table():
    assert words("so ++ good") == ["so", "good"]
    assert words("so ++ good", special_entries({"++": 1.0, "good": 1.0})) == ["so", "++", "good"]
    assert special_entries({"fed up": 1.0, "good": 1.0, ":)": 1.0}) == {":)"}


# --- utility tables --------------------------------------------------------------------------


def test_vader_table_matches_the_lexicon_file():
    table = load_utility_table("vader")
    assert table == _lexicon_by_hand()
    assert table["good"] == 1.9 and table[":)"] == 2.0 and 7400 < len(table) < 7520


def test_reward_cli_vader_equals_the_formula():
    lexicon = _lexicon_by_hand()
    texts = ["Good great :) LOL", "bad bad terrible movie", "love " * 30, "nothing here at all", "<3 xd"]
    expected = [max(-10.0, min(10.0, sum(lexicon.get(w.lower(), 0.0) for w in t.split()) / 5)) for t in texts]
    assert expected[2] == 10.0 and expected[1] < 0 and expected[3] == 0.0  # the clip and the sign are exercised
    result = run_cli("reward", "--reward", "vader", *texts, "--json", check=True)
    assert json.loads(result.stdout) == pytest.approx(expected, abs=1e-12)
    plain = run_cli("reward", "--reward", "vader", *texts[:2], check=True).stdout.split()
    assert [float(x) for x in plain] == pytest.approx(expected[:2], abs=1e-5)


@pytest.mark.parametrize("name, content", [
    ("t.csv", "word,value\nGood,2\nbad,-1.5\n"),
    ("t.tsv", "good\t2\textra column\nbad\t-1.5\n"),
    ("t.json", '{"good": 2, "BAD": -1.5}'),
    ("l.json", '[["good", 2], {"word": "bad", "value": -1.5}]'),
])
def test_user_tables(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert load_utility_table(str(path)) == {"good": 2.0, "bad": -1.5}
    reward = load_reward(f"table:{path}")
    assert reward(["good GOOD good, bad", "meh"]) == pytest.approx([(6 - 1.5) / 5, 0.0])


def test_scale_and_clip_options(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("good,3\n")
    text = ["good " * 10]
    assert load_reward(f"table:{path}")(text) == [6.0]
    assert load_reward(f"table:{path},scale=1")(text) == [10.0]
    assert load_reward(f"table:{path},scale=1,clip=none")(text) == [30.0]
    assert load_reward(f"table:{path},scale=2,clip=4")(["bad"] + text) == [0.0, 4.0]


@pytest.mark.parametrize("content, fragment", [
    ("good,2\nbad,terrible\n", "not a number"),
    ("good,2\n ,1\n", "empty word"),
    ("good,2\nbad,nan\n", "not finite"),
    ("good\n", "expected word"),
    ("word,value\n", "empty"),
])
def test_malformed_tables_are_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        load_reward(f"table:{path}")


def test_bad_reward_specs_on_the_cli(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("good,2\nbad,terrible\n")
    assert_user_error(run_cli("reward", "--reward", f"table:{bad}", "x"), f"{bad}:2", "not a number")
    assert_user_error(run_cli("reward", "--reward", "nonsense", "x"), "unknown reward spec")
    assert_user_error(run_cli("reward", "--reward", "vader"), "no text to score")
    for spec, fragment in [("vader,bogus=1", "no option bogus"), ("vader,scale=0", "must be positive"),
                           (f"table:{tmp_path / 'missing.csv'}", "does not exist")]:
        with pytest.raises(UserError, match=fragment):
            load_reward(spec)


def test_reward_cli_reads_a_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("good\n\nbad\n")
    assert json.loads(run_cli("reward", "--reward", "vader", "--file", path, "--json", check=True).stdout) == \
        pytest.approx([1.9 / 5, -2.5 / 5])


# --- classifier --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tiny_model_dir):
    """A tiny DistilBERT sequence classifier built from a config (max length 32), with a BPE tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                              max_position_embeddings=32, num_labels=3, pad_token_id=tok.pad_token_id,
                              id2label={0: "NEG", 1: "POS", 2: "MIXED"}, label2id={"NEG": 0, "POS": 1, "MIXED": 2})
    folder = tmp_path_factory.mktemp("classifier") / "tiny-distilbert"
    DistilBertForSequenceClassification(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_classifier_reward_is_the_class_logit(classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["a good film", "bad", "the plot was long " * 20]  # the last is longer than 32 tokens
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    with torch.no_grad():
        direct = [model(input_ids=torch.tensor([tok(t)["input_ids"][:32]])).logits[0] for t in texts]
    reward = load_reward(f"classifier:{classifier_dir}")
    assert reward.info["max_length"] == 32 and reward.info["label"] == "POS"
    assert reward(texts) == pytest.approx([float(d[1]) for d in direct], abs=1e-5)
    # batching does not change the scores; the class index is an option, by number or by label name
    small = ClassifierReward(str(classifier_dir), batch_size=1)
    assert small(texts) == pytest.approx(reward(texts), abs=1e-5)
    assert load_reward(f"classifier:{classifier_dir},index=0")(texts) == pytest.approx([float(d[0]) for d in direct],
                                                                                     abs=1e-5)
    assert load_reward(f"classifier:{classifier_dir},label=mixed")(texts) == pytest.approx(
        [float(d[2]) for d in direct], abs=1e-5)


def test_classifier_errors(classifier_dir, tiny_model_dir, tmp_path):
    assert_user_error(run_cli("reward", "--reward", f"classifier:{tiny_model_dir}", "x"), "not a sequence classifier")
    with pytest.raises(UserError, match="out of range"):
        load_reward(f"classifier:{classifier_dir},index=3")
    with pytest.raises(UserError, match="no label"):
        load_reward(f"classifier:{classifier_dir},label=neutral")
    with pytest.raises(UserError, match="does not exist"):
        load_reward(f"classifier:{tmp_path / 'nowhere'}")


# --- the offline sentiment classifier ---------------------------------------------------------


def test_sentiment_classifier_fits_caches_and_scores(corpus_file):
    from rlhf_lens.io import cache_dir

    reward = load_reward(f"sentiment:{corpus_file}")
    info = reward.info
    assert info["n_train"] == 160 and info["n_test"] == 40 and info["test_accuracy"] >= 0.9
    cached = next((cache_dir() / "sentiment").glob("*.json"))
    assert info["cached"] == str(cached)
    stamp = cached.stat().st_mtime_ns
    again = load_reward(f"sentiment:{corpus_file}")
    assert cached.stat().st_mtime_ns == stamp and again.weights == reward.weights
    good, bad = reward(["a wonderful film , great fun and the best music", "a terrible film , awful and dull"])
    assert good > 0 > bad
    assert reward(["the film"]) == [pytest.approx(reward.intercept + reward.weights.get("the", 0)
                                                  + reward.weights.get("film", 0) + reward.weights.get("the film", 0))]


def test_sentiment_needs_labels(tmp_path):
    path = tmp_path / "unlabelled.txt"
    path.write_text("a film\nanother film\n")
    with pytest.raises(UserError, match="labels"):
        load_reward(f"sentiment:{path}")
