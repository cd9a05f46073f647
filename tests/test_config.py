"""The run config: nested sections ([decompose.diffsae], [interp.llm]) in TOML, --set and --keys; older keys
still read; each field's rule written once, its message naming the key as the caller spells it."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing

import pytest

from conftest import assert_user_error, run_cli
from rlhf_lens.config import RENAMED_KEYS, RunConfig, config_from_dict, config_keys, config_toml, load_config
from rlhf_lens.errors import UserError
from rlhf_lens.harvest.config import HarvestSettings
from rlhf_lens.rules import flag, in_section
from rlhf_lens.sae.config import SAEConfig, SAETraining

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_nested_sections_load_dump_and_list():
    config = load_config(preset="tiny", overrides=["decompose.diffsae.k=8", "decompose.crosscoding.arch=\"topk\"",
                                                   "interp.llm.api_key_env=MY_KEY", "interp.llm.concurrency=2"])
    assert (config.decompose.diffsae.k, config.decompose.crosscoding.arch) == (8, "topk")
    assert (config.interp.llm.api_key_env, config.interp.llm.concurrency, config.interp.llm.base_url) == ("MY_KEY", 2, "")
    text = config_toml(config)
    assert "[decompose.diffsae]\n" in text and "[interp.llm]\n" in text
    assert config_from_dict(tomllib.loads(text)) == config
    keys = {key: default for key, default, _ in config_keys()}
    assert keys["decompose.diffsae.k"] == "16" and keys["decompose.steer.random"] == "19"
    assert keys["interp.llm.timeout"] == "120.0" and "interp.llm_model" not in keys and "decompose.diffsae" not in keys


def test_older_flat_keys_still_read_and_clash_with_their_new_name():
    old = config_from_dict({"decompose": {"diffsae_k": 4, "steer_random": 2, "crosscoder_rows": 100,
                                          "scaling_threshold": 0.2, "crosscoder": True},
                            "interp": {"llm_model": "m", "base_url": "http://x"}})
    assert (old.decompose.diffsae.k, old.decompose.steer.random, old.decompose.crosscoding.rows) == (4, 2, 100)
    assert old.decompose.crosscoding.scaling_threshold == 0.2 and old.decompose.crosscoder is True
    assert (old.interp.llm.model, old.interp.llm.base_url) == ("m", "http://x")
    assert load_config(overrides=["decompose.shift_top=3"]).decompose.shift.top == 3
    with pytest.raises(UserError, match=r"^decompose.diffsae_k is the old name of decompose.diffsae.k; give "
                                        r"decompose.diffsae.k only$"):
        config_from_dict({"decompose": {"diffsae_k": 4, "diffsae": {"k": 5}}})
    for old_key, new_key in RENAMED_KEYS.items():  # every old key lands on a key a run has
        section, name = old_key.split(".")
        moved = config_from_dict({section: {name: getattr(_at(load_config(), new_key), new_key.split(".")[-1])}})
        assert moved == load_config(), old_key


def _at(config, key: str):
    """The section holding a dotted key."""
    node = config
    for part in key.split(".")[:-1]:
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("overrides, message", [
    (["decompose.diffsae.nope=1"], "unknown key decompose.diffsae.nope; keys of [decompose.diffsae]: arch,"),
    (["decompose.diffsae=3"], "[decompose.diffsae] must be a table of key = value"),
    (["decompose.crosscoder=true", "decompose.crosscoder.k=1"], "decompose.crosscoder is a setting, not a section"),
    (["decompose.steer.norm=\"x\""], "decompose.steer.norm must be one of contribution, delta (got 'x')"),
    (["interp.explainer=\"openai\""], "interp.llm.base_url must start with http:// or https:// (got '')"),
    (["interp.scorer=[\"simulation\", \"judge\"]"], "unknown interp.scorer 'judge'; use one or more of simulation,"),
    (["interp.scorer=[]"], "interp.scorer is empty; name one or more of simulation, detection, fuzzing"),
    (["interp.scorer_model=\"gpt\""], "unknown interp.scorer_model 'gpt'; use hf:MODEL"),
    (["interp.scorer=[\"detection\"]", "interp.scorer_model=\"openai\""],
     "interp.llm.base_url must start with http:// or https:// (got '')"),
    (["sae.arch=\"topk\"", "sae.k=4", "sae.target_l0=3.0"], "sae.target_l0 does not apply to sae.arch topk: its L0 "
                                                            "is sae.k"),
    (["sae.epochs=0", "sae.holdout=0"], "training until converged (sae.epochs 0) needs held-out rows: set "
                                        "sae.holdout > 0 or sae.epochs N"),
    (["harvest.dtype=\"float16\""], "harvest.dtype must be one of float32, bfloat16 (got 'float16')"),
    (["tiny.width=30"], "tiny.width (30) must be a multiple of tiny.heads (4)"),
    (["rlhf.warmup_steps=-1"], "rlhf.warmup_steps must be >= 0 (got -1)"),
    (["rlhf.mini_batch_size=128"], "rlhf.mini_batch_size (128) must be at most rlhf.batch_size (64)"),
    (["rlhf.min_new_tokens=30"], "rlhf.min_new_tokens (30) must be at most rlhf.max_new_tokens (19)"),
])
def test_a_bad_value_is_one_line_naming_its_key(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(overrides=overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


KEYS = {key for key, _, _ in config_keys()}


def _named(message: str) -> set[str]:
    """The run config keys a message names."""
    return set(re.findall(r"[a-z_0-9]+(?:\.[a-z_0-9]+)+", message)) & KEYS


def _refusal(*overrides: str) -> str:
    with pytest.raises(UserError) as error:
        load_config(preset="tiny", overrides=list(overrides))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("override", [
    # each used to be reported under another key, or accepted and crash in its stage
    "diff.batch_size=0", "diff.max_docs=0", "diff.max_tokens=1", "diff.level=nan", "diff.level=0", "diff.level=1",
    "diff.min_change=-1.0", "diff.min_change=inf", "diff.null_sets=9", "diff.top_words=0", "diff.prompts=1",
    "diff.new_tokens=0", "diff.alphas=[1.0, nan]", "diff.alphas=[-1.0]", "diff.alphas=[]", "diff.coherence_kl=inf",
    "diff.rank_layers=[-1]", "diff.rank_layers=[]", "diff.word_template='It was {w}.'",
    "diff.word_template='{word} {'", "diff.rank_by=\"kl2\"", "diff.random_directions=0", "diff.seed=-1",
    "decompose.shift.rank_by=\"x\"", "decompose.shift_top=0", "decompose.site=\"x\"", "decompose.diffsae.max_tokens=0",
    "decompose.diffsae.expansion=inf", "decompose.diffsae.expansion=nan", "decompose.diffsae.k=0",
    "decompose.diffsae.lr=inf", "decompose.diffsae.arch=\"nope\"", "decompose.diffsae.seeds=[1, 1]",
    "decompose.steer.alpha=nan", "decompose.steer.random=0", "decompose.crosscoding.l1=inf",
    "decompose.crosscoding.norm_threshold=0.5", "decompose.crosscoding.scaling_threshold=nan",
    "decompose.crosscoding.rows=1", "decompose.seed=-1",
    "rlhf.lr=inf", "rlhf.lr=0.0", "rlhf.gamma=nan", "rlhf.lam=1.5", "rlhf.cliprange_value=0.0",
    "rlhf.ratio_threshold=1.0", "rlhf.kl_target=inf", "rlhf.kl_horizon=0", "rlhf.top_p=nan", "rlhf.top_k=-1",
    "rlhf.eval_examples=-1", "rlhf.value_dropout=1.0", "rlhf.mini_batch_size=0", "rlhf.max_new_tokens=0",
    "rlhf.prompt_min_tokens=0", "rlhf.text_column=\" \"",
    "sae.lr=nan", "sae.l1=inf", "sae.tolerance=nan", "sae.max_seconds=inf", "sae.window=0", "sae.eval_every=0",
    "sae.target_l0=-1.0", "sae.seeds=[0, 0]", "sae.seeds=[-1]", "sae.dict_ratios=[0, 1]",
    "harvest.max_docs=-1", "harvest.shard_tokens=0",
    "interp.new_feature_threshold=nan", "interp.new_feature_quantile=inf", "interp.top_k=0",
    "interp.llm.timeout=inf", "interp.llm.temperature=nan", "interp.llm.concurrency=0", "interp.llm.retries=-1",
    "examples.n_holdout=-1", "examples.seed=-1", "examples.batch_size=0",
    "tiny.layers=0", "tiny.heads=0", "tiny.context=1", "tiny.seed=-1", "model.seed=4294967296",
    "divergence.top_n=0", "data.test_split=\"\"", "reward.table=\"\"",
])
def test_each_field_is_checked_on_its_own_naming_exactly_its_key(override):
    key = override.split("=")[0]
    key = RENAMED_KEYS.get(key, key)
    message = _refusal(override)
    assert message.startswith(f"{key} ") and _named(message) == {key}, message


def _numeric_fields(settings, where: str = ""):
    """(key, element type, is a list) of every int or float field of the run config, nested sections included."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, key = getattr(settings, f.name), f"{where}.{f.name}".lstrip(".")
        if dataclasses.is_dataclass(value):
            yield from _numeric_fields(value, key)
            continue
        hint = next(a for a in typing.get_args(hints[f.name]) or [hints[f.name]] if a is not type(None))
        listed = typing.get_origin(hint) is list
        element = typing.get_args(hint)[0] if listed else hint
        if element in (int, float):
            yield key, element, listed


def test_every_number_refuses_what_no_setting_means_naming_its_key():
    """Every float field refuses NaN and both infinities, every int field -1 (no count, size or seed is negative),
    each before any work with a message that begins with that field's key."""
    checked = 0
    for key, element, listed in _numeric_fields(RunConfig()):
        for bad in (("nan", "inf", "-inf") if element is float else ("-1",)):
            message = _refusal(f"{key}=[{bad}]" if listed else f"{key}={bad}")
            assert message.startswith(f"{key} "), (key, bad, message)
            # sae.k is read only with a by-rank arch, which its message names
            assert _named(message) == {key} or key == "sae.k", (key, bad, message)
            checked += 1
    assert checked > 100


def test_a_rule_relating_two_fields_names_both():
    for override, both in (("rlhf.mini_batch_size=64", {"rlhf.mini_batch_size", "rlhf.batch_size"}),
                           ("rlhf.prompt_min_tokens=20", {"rlhf.prompt_min_tokens", "rlhf.prompt_max_tokens"}),
                           ("tiny.heads=3", {"tiny.width", "tiny.heads"}),
                           ("examples.n_holdout=0", None)):
        if both is None:  # needs both fields at 0
            message = _refusal(override, "examples.n_random=0")
            both = {"examples.n_holdout", "examples.n_random"}
        else:
            message = _refusal(override)
        assert _named(message) == both, message


def test_a_bad_value_stops_a_run_before_any_work(tmp_path, corpus_file):
    """Through the real command: one line naming the key, nothing written in --out."""
    out = tmp_path / "run"
    for setting, fragment in (("decompose.diffsae.expansion=inf", "decompose.diffsae.expansion must be a finite "
                                                                    "number > 0 (got inf)"),
                              ("diff.level=nan", "diff.level must be in (0, 1) (got nan)")):
        result = run_cli("run", "--preset", "tiny", "--set", f"data.corpus={corpus_file}", "--set", setting,
                         "--out", out)
        assert_user_error(result, fragment)
        assert not out.exists()


@pytest.mark.parametrize("model, blocks", [("tiny", "0..3"), ("folder", "0..2")])
def test_rank_layers_beyond_the_model_stop_a_run_before_any_work(tmp_path, corpus_file, tiny_model_dir, model, blocks):
    """diff.rank_layers is checked against the base model's depth with the other inputs (the tiny preset's
    [tiny] has 4 blocks; a saved model's config says its own), not after the diff's steering work."""
    out = tmp_path / "run"
    base = () if model == "tiny" else ("--set", f"model.base={tiny_model_dir}")
    result = run_cli("run", "--preset", "tiny", "--set", f"data.corpus={corpus_file}", *base,
                     "--set", "diff.rank_layers=[1, 99]", "--out", out)
    assert_user_error(result, "diff.rank_layers names block(s) [99]", f"has blocks {blocks}")
    assert not out.exists()


def test_a_rule_is_written_once_and_names_the_key_as_its_caller_spells_it():
    """The same rule of the same field: `--flag` for a stage command, `section.key` for a run config."""
    harvest = HarvestSettings(shard_tokens=0)
    for key, named in ((flag, "--shard-tokens"), (in_section("harvest"), "harvest.shard_tokens")):
        with pytest.raises(UserError, match=f"^{named} must be >= 1 \\(got 0\\)$"):
            harvest.check(key)
    training = SAETraining(arch="batchtopk", k=None)
    with pytest.raises(UserError, match="^--k must be >= 1 with --arch batchtopk"):
        SAEConfig(**vars(training), d_in=4, dict_size=8).check()
    with pytest.raises(UserError, match="^sae.k must be >= 1 with sae.arch batchtopk"):
        training.check(in_section("sae"))


def test_no_preset_stops_training_by_the_clock():
    """Same seed, same bits: a preset's SAEs stop on convergence, epochs or a token cap, never on `sae.max_seconds`,
    where the clock (the machine's speed and load) would decide at which step the weights are saved."""
    from rlhf_lens.config import load_config, preset_names

    for name in preset_names():
        sae = load_config(preset=name).sae
        assert sae.epochs > 0 or sae.max_seconds == 0, f"preset {name}: sae.max_seconds = {sae.max_seconds}"


def test_removed_keys_are_noted_in_one_line_and_ignored(capsys):
    """An older config naming a setting that no longer exists runs, with one line saying what replaced it."""
    from rlhf_lens.config import config_from_dict

    config = config_from_dict({"diff": {"verdict_z": 3.0, "rank_alpha": 2.0, "level": 0.01},
                               "decompose": {"shift": {"splits": 8, "top": 5}}})
    assert config.diff.level == 0.01 and config.decompose.shift.top == 5
    err = capsys.readouterr().err
    assert "diff.verdict_z is no longer read: every verdict is a test at diff.level" in err
    assert "diff.rank_alpha is no longer read" in err and "decompose.shift.splits is no longer read" in err
