"""The run config: nested sections ([decompose.diffsae], [interp.llm]) in TOML, --set and --keys; older keys
still read; each field's rule written once, its message naming the key as the caller spells it."""

from __future__ import annotations

import sys

import pytest

from rlhf_lens.config import RENAMED_KEYS, config_from_dict, config_keys, config_toml, load_config
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
    assert keys["decompose.diffsae.k"] == "16" and keys["decompose.steer.random"] == "4"
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
    (["sae.arch=\"topk\"", "sae.k=4", "sae.target_l0=3.0"], "sae.target_l0 does not apply to sae.arch topk: its L0 "
                                                            "is sae.k"),
    (["sae.epochs=0", "sae.holdout=0"], "training until converged (sae.epochs 0) needs held-out rows: set "
                                        "sae.holdout > 0 or sae.epochs N"),
    (["harvest.dtype=\"float16\""], "harvest.dtype must be one of float32, bfloat16 (got 'float16')"),
    (["tiny.width=30"], "tiny.width (30) must be a multiple of tiny.heads (4)"),
    (["rlhf.warmup_steps=-1"], "rlhf.warmup_steps and rlhf.weight_decay must be >= 0"),
])
def test_a_bad_value_is_one_line_naming_its_key(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(overrides=overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


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
