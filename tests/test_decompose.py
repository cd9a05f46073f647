"""Decompositions of what tuning changed (rlhf_lens.diff.{paired_store,diffsae,shift,crosscoder,placebo}):
planted changes are found, the Δ store is a store, the placebo table is a permutation."""

from __future__ import annotations

import pytest
import torch

from conftest import plant_direction
from rlhf_lens.errors import UserError

D = 32
DOCS, PER_DOC = 120, 32


def _index(docs: int = DOCS, per: int = PER_DOC, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = docs * per
    return (torch.randint(0, 300, (n,), generator=g), torch.arange(docs).repeat_interleave(per),
            torch.arange(per).repeat(docs))


def _write_store(path, acts: torch.Tensor, index, layer: int = 1, shards: int = 2):
    """A store of `acts` (rows ordered by document) cut into `shards` shards of whole documents."""
    from rlhf_lens.store import StoreWriter

    tok, doc, pos = index
    n_docs = int(doc.max()) + 1
    writer = StoreWriter(path, {"model": str(path), "tokenizer": "tiny", "corpus": "c", "split": "test",
                                "layers": [layer], "d": acts.shape[1], "dtype": "float32", "n_docs": n_docs})
    bounds = [round(i * n_docs / shards) for i in range(shards + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        rows = (doc >= lo) & (doc < hi)
        writer.add_shard({layer: acts[rows]}, {"token_ids": tok[rows], "doc": doc[rows], "pos": pos[rows]}, lo, hi)
    return writer.finish()


def _unit(g, d=D):
    v = torch.randn(d, generator=g)
    return v / v.norm()


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory):
    """Paired stores: tuned = base + 2·v on the tokens with id < 90 (~30%), + 1·w on ids 90..149, + small noise."""
    root = tmp_path_factory.mktemp("pair")
    g = torch.Generator().manual_seed(1)
    index = _index()
    tok = index[0]
    base = torch.randn(len(tok), D, generator=g)
    v, w = _unit(g), _unit(g)
    tuned = base + 2.0 * (tok < 90)[:, None] * v + 1.0 * ((tok >= 90) & (tok < 150))[:, None] * w \
        + 0.05 * torch.randn(len(tok), D, generator=g)
    return {"root": root, "base": _write_store(root / "base", base, index),
            "tuned": _write_store(root / "tuned", tuned, index), "v": v, "w": w, "index": index,
            "base_acts": base, "tuned_acts": tuned}


# --- Δ store ---------------------------------------------------------------------------------------------


def test_delta_store_is_a_store_of_the_differences(planted_pair):
    from rlhf_lens.decompose.paired_store import delta_store

    delta = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta")
    assert delta.layers == [1] and delta.n_tokens == planted_pair["base"].n_tokens and delta.d == D
    rows = torch.cat([s.acts for s in delta.iter_shards(1)])
    assert torch.allclose(rows, planted_pair["tuned_acts"] - planted_pair["base_acts"], atol=1e-6)
    shard = delta.read_shard(1, 1)
    assert torch.equal(shard.token_ids, planted_pair["base"].read_shard(1, 1).token_ids)
    assert delta.manifest["delta"]["layer"] == 1 and delta.manifest["tokenizer"] == "tiny"
    assert torch.equal(delta.document_tokens(5), planted_pair["base"].document_tokens(5))
    # reopened, not rewritten; a different store there is refused
    again = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta")
    assert again.manifest == delta.manifest
    with pytest.raises(UserError, match="another activation store"):
        delta_store(planted_pair["tuned"], planted_pair["base"], 1, planted_pair["root"] / "delta")


def test_unpaired_stores_fail_in_one_line(planted_pair, tmp_path):
    from rlhf_lens.decompose.paired_store import delta_store

    tok, doc, pos = planted_pair["index"]
    other = _write_store(tmp_path / "other", planted_pair["base_acts"], ((tok + 1) % 300, doc, pos))
    with pytest.raises(UserError, match="different tokens") as e:
        delta_store(planted_pair["base"], other, 1, tmp_path / "delta")
    assert "\n" not in str(e.value) and not (tmp_path / "delta" / "manifest.json").exists()
    fewer = _write_store(tmp_path / "fewer", planted_pair["base_acts"][: 100 * PER_DOC], _index(100))
    with pytest.raises(UserError, match="different rows"):
        delta_store(planted_pair["base"], fewer, 1, tmp_path / "delta2")
    with pytest.raises(UserError, match="layer 3"):
        delta_store(planted_pair["base"], planted_pair["tuned"], 3, tmp_path / "delta3")


# --- diff-SAE --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffsae_result(planted_pair):
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diff_sae
    from rlhf_lens.decompose.paired_store import delta_store

    delta = delta_store(planted_pair["base"], planted_pair["tuned"], 1, planted_pair["root"] / "delta-sae")
    config = DecomposeConfig(diffsae=DiffSAESettings(arch="topk", k=1, expansion=1.0, epochs=20, batch_size=64,
                                                     lr=3e-3, seeds=[0, 1], top=4))
    result, saes = diff_sae(delta, 1, config, out_dir=planted_pair["root"] / "diffsae")
    return {"result": result, "saes": saes, "delta": delta, "config": config}


def test_diffsae_top_latent_is_the_planted_direction(planted_pair, diffsae_result):
    from rlhf_lens.decompose.diffsae import decoder_rows

    result, saes = diffsae_result["result"], diffsae_result["saes"]
    top = result["top"]
    assert [t["share"] for t in top] == sorted((t["share"] for t in top), reverse=True)
    for sae, entry in zip(saes, result["saes"]):
        rows = decoder_rows(sae)
        first, second = entry["top"][0]["latent"], entry["top"][1]["latent"]
        assert torch.cosine_similarity(rows[first], planted_pair["v"], dim=0) > 0.9
        assert torch.cosine_similarity(rows[second], planted_pair["w"], dim=0) > 0.8
    # per row, E|Δ|^2 ≈ 0.3·4 (v) + 0.15·1 (w) + 32·0.05² (noise): v holds ~0.8 of it and fires on ~30% of rows
    assert top[0]["share"] > 0.4 and 0.2 < top[0]["firing_rate"] < 0.45
    assert top[0]["agreement"] > 0.9 and result["agreement"]["above_0.9"] >= 2
    assert result["n_rows"] == DOCS * PER_DOC and result["arch"] == "topk" and result["dict_size"] == D
    assert result["saes"][0]["explained"] > 0.9


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_diffsae_configs_follow_the_arch_parameter(arch):
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings
    from rlhf_lens.decompose.diffsae import diffsae_configs

    configs = diffsae_configs(64, DecomposeConfig(diffsae=DiffSAESettings(arch=arch, expansion=1.5, seeds=[3, 4])))
    assert [c.arch for c in configs] == [arch, arch] and [c.seed for c in configs] == [3, 4]
    assert configs[0].dict_size == 96 and configs[0].k == 16
    assert diffsae_configs(64, DecomposeConfig())[0].arch == "batchtopk"


# --- shared-dictionary shift ------------------------------------------------------------------------------


def test_shared_dictionary_shift_ranks_the_planted_feature_first(tmp_path):
    from rlhf_lens.decompose.config import DecomposeConfig, ShiftSettings
    from rlhf_lens.decompose.shift import count_among, shared_dictionary_shift
    from rlhf_lens.sae import SAEConfig, SparseAutoencoder

    g = torch.Generator().manual_seed(2)
    m = 24
    dictionary = torch.linalg.qr(torch.randn(D, m, generator=g))[0].t()  # [m, D] orthonormal rows
    sae = SparseAutoencoder(SAEConfig(d_in=D, dict_size=m, arch="tied"))
    with torch.no_grad():
        sae.decoder.copy_(dictionary)
        sae.b_enc.fill_(-0.05)
    index = _index(seed=3)
    n = len(index[0])
    codes = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.15) * 2
    planted = 7
    raised = codes.clone()
    raised[:, planted] *= 1.5  # tuning raises feature 7 where it fires
    base = codes @ dictionary + 0.01 * torch.randn(n, D, generator=g)
    tuned = raised @ dictionary + 0.01 * torch.randn(n, D, generator=g)
    base_store, tuned_store = _write_store(tmp_path / "b", base, index), _write_store(tmp_path / "t", tuned, index)
    result = shared_dictionary_shift(sae, base_store, tuned_store, 1, DecomposeConfig(shift=ShiftSettings(splits=8, top=5)))
    top = result["top"]
    assert top[0]["latent"] == planted and top[0]["shifted"] and top[0]["mean_change"] > 0
    assert top[0]["z"] > 5 and result["n_shifted"] == 1 and result["n_rising"] == 1
    assert abs(top[0]["rate_change"]) < 0.02  # it fires where it fired: only its activation rose
    assert all(not t["shifted"] for t in top[1:])
    assert count_among(result, [planted, 3]) == {"count": 1, "of": 1, "latents": [planted], "features": 2}
    by_z = shared_dictionary_shift(sae, base_store, tuned_store, 1, DecomposeConfig(shift=ShiftSettings(splits=8, rank_by="z")))
    assert by_z["top"][0]["latent"] == planted
    # a self-comparison shifts nothing
    same = shared_dictionary_shift(sae, base_store, base_store, 1, DecomposeConfig(shift=ShiftSettings(splits=8)))
    assert same["n_shifted"] == 0 and same["top"] == []


# --- placebo table ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".json"])
def test_placebo_table_is_a_seeded_permutation(tmp_path, suffix):
    from rlhf_lens.rewards import load_utility_table, shuffled_table, write_table

    table = {"good": 1.9, "bad": -2.5, "great": 3.1, "awful": -3.0, "fine": 0.8, "meh": -0.3, "can't stand": -2.0,
             "a,b": 0.1}
    placebo = shuffled_table(table, seed=4)
    assert list(placebo) == list(table) and sorted(placebo.values()) == sorted(table.values())
    assert placebo != table
    assert shuffled_table(table, seed=4) == placebo and shuffled_table(table, seed=5) != placebo
    path = write_table(placebo, tmp_path / f"placebo{suffix}")
    assert load_utility_table(f"table:{path}") == placebo
    assert shuffled_table({"a": 1.0, "b": 1.0}, 0) == {"a": 1.0, "b": 1.0}
    assert sorted(shuffled_table({"a": 1.0, "b": 2.0}, 0).items()) == [("a", 2.0), ("b", 1.0)]
    with pytest.raises(UserError):
        write_table({"Good": 1.0}, tmp_path / "x.tsv")


def test_decompose_config_checks():
    """Each method's settings are checked in their own section; the message names the key as the caller spells it."""
    from rlhf_lens.decompose.config import (
        CrosscodingSettings,
        DecomposeConfig,
        DiffSAESettings,
        ShiftSettings,
        SteerSettings,
        check_decompose_config,
    )
    from rlhf_lens.rules import flag, in_section

    check_decompose_config(DecomposeConfig())
    for bad, named in ((dict(diffsae=DiffSAESettings(seeds=[])), "diffsae.seeds"),
                       (dict(steer=SteerSettings(norm="x")), "steer.norm"),
                       (dict(shift=ShiftSettings(quantile=1.0)), "shift.quantile"),
                       (dict(crosscoding=CrosscodingSettings(arch="x")), "crosscoding.arch"),
                       (dict(crosscoding=CrosscodingSettings(scaling_threshold=0.0)), "crosscoding.scaling_threshold")):
        with pytest.raises(UserError, match=named.replace(".", r"\.")):
            check_decompose_config(DecomposeConfig(**bad))
    with pytest.raises(UserError, match=r"^decompose.diffsae.k must be >= 1 \(got 0\)$"):
        check_decompose_config(DecomposeConfig(diffsae=DiffSAESettings(k=0)), in_section("decompose"))
    with pytest.raises(UserError, match=r"^--steer-random must be >= 1 \(got 0\)$"):
        check_decompose_config(DecomposeConfig(steer=SteerSettings(random=0)), flag)


# --- steering by a diff-SAE latent (tiny model) -----------------------------------------------------------


@pytest.fixture(scope="module")
def word_direction(tiny_model_dir, tmp_path_factory):
    """As in tests/test_diff.py: a vector of norm 2 aimed at four whole words through the final norm and
    unembedding of the tiny model, the three words it pushes most, and a table listing them."""
    from rlhf_lens.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    v, words, ids = plant_direction(model, tok, 2.0)
    root = tmp_path_factory.mktemp("words")
    table = root / "table.tsv"
    table.write_text("".join(f"{w}\t3\n" for w in words))
    return {"model": model, "tokenizer": tok, "v": v, "words": words, "ids": ids,
            "table": table, "root": root}


def test_steering_by_the_top_latent_beats_random_directions(word_direction, corpus_file):
    """Δ = the word vector on ~30% of tokens (a random vector of norm 1 on others): the diff-SAE's top latent is
    that vector, and steering base by it raises the planted words and the reward of a table of them beyond
    random directions of the same norm."""
    from rlhf_lens.data import load_corpus
    from rlhf_lens.decompose.config import DecomposeConfig, DiffSAESettings, SteerSettings
    from rlhf_lens.decompose.diffsae import decoder_rows, diff_sae, steer_top_latents
    from rlhf_lens.decompose.paired_store import delta_store
    from rlhf_lens.diff import steering
    from rlhf_lens.rewards import load_reward

    root, v = word_direction["root"], word_direction["v"]
    g = torch.Generator().manual_seed(5)
    index = _index(seed=6)
    tok = index[0]
    base = torch.randn(len(tok), D, generator=g)
    other = _unit(g)
    tuned = base + (tok < 90)[:, None] * v + ((tok >= 90) & (tok < 150))[:, None] * other \
        + 0.05 * torch.randn(len(tok), D, generator=g)
    delta = delta_store(_write_store(root / "b", base, index), _write_store(root / "t", tuned, index), 1, root / "d")
    config = DecomposeConfig(diffsae=DiffSAESettings(arch="topk", k=1, expansion=1.0, epochs=20, batch_size=64,
                                                     lr=3e-3, seeds=[0], top=3),
                             steer=SteerSettings(latents=2, alpha=1.2, random=4))
    result, saes = diff_sae(delta, 1, config)
    top = result["top"][0]["latent"]
    assert torch.cosine_similarity(decoder_rows(saes[0])[top], v, dim=0) > 0.9
    assert result["agreement"] is None and result["top"][0]["agreement"] is None  # one seed: no agreement

    model, tokenizer = word_direction["model"], word_direction["tokenizer"]
    prompts = steering.heldout_prompts(load_corpus(str(corpus_file)), tokenizer, 24, "test", [], 0)
    reward = load_reward(f"table:{word_direction['table']}")
    steered = steer_top_latents(result, saes, model, tokenizer, reward, prompts, config, new_tokens=8,
                                watch_ids=word_direction["ids"])
    first, second = steered["latents"]
    assert first["latent"] == top and steered["steer_norm"] == "contribution" and steered["alpha"] == 1.2
    assert abs(first["norm"] - 1.2 * result["top"][0]["mean_contribution"]) < 1e-4
    # the planted words' log-probability rises, where every random direction of the same norm lowers it
    assert first["watched"]["change"] > 0 > max(first["watched"]["null"])
    assert set(word_direction["ids"]) & set(first["top_token_ids"][:5])
    # the reward of a table of those words: above every random direction (24 prompts x 8 tokens are too few
    # for the paired gain over base to reach 2 standard errors, so `beats_null` is not asserted)
    assert first["gain"] > 0 and first["reward"] > max(first["null"]["rewards"])
    assert first["watched"]["change"] > second["watched"]["change"] and not second["beats_null"]
    assert len(first["null"]["rewards"]) == 4 and steered["n_prompts"] == 24


# --- crosscoder with Latent Scaling -----------------------------------------------------------------------


def test_crosscoder_latent_scaling_classes_planted_directions_and_l1_shrinks():
    """Seven orthonormal concepts firing on ~20% of tokens each: S1-S3 shared, W shared but half as strong in base
    (and weak in absolute terms), T1/T2 tuned-only, B1 base-only. The BatchTopK crosscoder + Latent Scaling class
    each concept's latent correctly. The L1 crosscoder trained the same way shows complete shrinkage: W's base
    decoder is (almost) gone, so its decoder norms call it tuned-only, while Latent Scaling, which asks base's
    error for W's direction, still calls it shared."""
    from rlhf_lens.decompose.config import CrosscodingSettings, DecomposeConfig
    from rlhf_lens.decompose.crosscoder import crosscoder_report, match_latents, train_crosscoder

    g = torch.Generator().manual_seed(0)
    d, n = 24, 8192
    truth = ["shared"] * 4 + ["tuned-only"] * 2 + ["base-only"]
    base_scale = torch.tensor([1, 1, 1, 0.5, 0, 0, 1.0])
    tuned_scale = torch.tensor([1, 1, 1, 1.0, 1, 1, 0])
    dirs = torch.linalg.qr(torch.randn(d, 7, generator=g))[0].t()
    mag = (torch.rand(n, 7, generator=g) < 0.2) * (3 + 2 * torch.rand(n, 7, generator=g))
    mag[:, 3] *= 0.5  # W: 1.5-2.5 in tuned, 0.75-1.25 in base
    h_base = (mag * base_scale) @ dirs + 0.02 * torch.randn(n, d, generator=g)
    h_tuned = (mag * tuned_scale) @ dirs + 0.02 * torch.randn(n, d, generator=g)
    common = dict(expansion=1.0, k=2, steps=1500, lr=3e-3)

    config = DecomposeConfig(crosscoding=CrosscodingSettings(arch="batchtopk", **common))
    cc = train_crosscoder(h_base, h_tuned, config)
    report = crosscoder_report(cc, h_base, h_tuned, config)
    matched = match_latents(cc, dirs, report)
    assert all(m["cosine"] > 0.85 for m in matched), matched  # one shared concept is partly merged with another
    assert [m["class"] for m in matched] == truth
    w = next(x for x in report["latents"] if x["latent"] == matched[3]["latent"])
    assert abs(w["nu_error"] - 0.5) < 0.05 and abs(w["nu_reconstruction"] - 0.5) < 0.05
    assert report["fvu"]["base"] < 0.01 and report["threshold"] > 0 and abs(report["mean_l0"] - 2) < 0.3
    assert sum(report["counts"].values()) == cc.m

    l1 = DecomposeConfig(crosscoding=CrosscodingSettings(arch="l1", l1=1.5, **common))
    cc1 = train_crosscoder(h_base, h_tuned, l1)
    report1 = crosscoder_report(cc1, h_base, h_tuned, l1)
    matched1 = match_latents(cc1, dirs, report1)
    assert matched1[3]["cosine"] > 0.95
    w1 = next(x for x in report1["latents"] if x["latent"] == matched1[3]["latent"])
    assert w1["norm_class"] == "tuned-only" and w1["relative_norm"] > 0.9  # complete shrinkage of base's decoder
    assert w1["class"] == "shared" and w1["nu_error"] > 0.35  # base's error still holds W
    assert [m["norm_class"] for m in matched1] != truth
    assert report1["k"] is None and report1["l1"] == 1.5


def test_crosscoder_on_paired_stores(planted_pair, tmp_path):
    from rlhf_lens.decompose.config import CrosscodingSettings, DecomposeConfig
    from rlhf_lens.decompose.crosscoder import crosscoder_analysis

    config = DecomposeConfig(crosscoding=CrosscodingSettings(k=4, steps=50, rows=1000))
    report, cc = crosscoder_analysis(planted_pair["base"], planted_pair["tuned"], 1, config, out=tmp_path / "cc.st")
    assert report["n_rows"] == 1000 and report["layer"] == 1 and report["arch"] == "batchtopk"
    assert (tmp_path / "cc.st").is_file() and cc.m == 2 * D
