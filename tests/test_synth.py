"""Synthetic traces: determinism, streaming, validity, calibration ranges, drift, bad parameters."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from placer.errors import InputError
from placer.graph import expert_loads
from placer.stats import trace_stats
from placer.studies.synth import (
    PRESET_SKEW,
    PRESETS,
    SynthParams,
    _build_model,
    generate,
    iter_shards,
    load_params,
    params_from_mapping,
    shard_bounds,
    validate_params,
    write_shards,
    write_trace,
)
from placer.trace import TraceSource, load_trace, validate_arrays

SMALL = replace(PRESETS["esft"], num_layers=4)
GROUPED = replace(PRESETS["deepseek-v3"], num_layers=3)


def test_presets_exist_with_their_shapes():
    shapes = {name: (p.num_experts, p.top_k, p.num_layers, p.num_groups, p.groups_per_token)
              for name, p in PRESETS.items()}
    assert shapes["esft"] == (64, 6, 26, 0, 0)
    assert shapes["deepseek-v3"] == (256, 8, 58, 8, 4)
    assert shapes["kimi-k2"][:3] == (384, 8, 60)
    assert shapes["qwen3-235b"][:3] == (128, 8, 94)
    assert shapes["seed001"][:2] == (64, 2)
    assert shapes["qwen1.5-moe"][:3] == (60, 4, 24)
    assert shapes["olmoe"][:3] == (64, 8, 16)
    assert shapes["qwen3-30b"][:3] == (128, 8, 48)
    assert shapes["mixtral"][:3] == (8, 2, 32)
    assert shapes["deepseek-v2"][:3] == (160, 6, 59)
    for name, params in PRESETS.items():
        assert validate_params(params) is params
        assert name in PRESET_SKEW and params.description


def test_same_seed_same_trace_other_seed_or_split_differs():
    a, b = generate(SMALL, 3000, seed=7), generate(SMALL, 3000, seed=7)
    assert np.array_equal(a.topk_ids, b.topk_ids) and np.array_equal(a.seq_lens, b.seq_lens)
    assert not np.array_equal(a.topk_ids, generate(SMALL, 3000, seed=8).topk_ids)
    assert not np.array_equal(a.topk_ids, generate(SMALL, 3000, seed=7, split="test").topk_ids)


def test_a_window_equals_the_same_rows_of_a_longer_trace():
    whole = generate(SMALL, 5000, seed=3)
    part = generate(SMALL, 1234, seed=3, start=2345)
    assert np.array_equal(part.topk_ids, whole.topk_ids[2345:3579])
    assert part.seq_lens.sum() == 1234


def test_shards_concatenate_to_one_generate(tmp_path):
    tokens, shard = 5000, 1200
    bounds = shard_bounds(SMALL, tokens, shard, seed=5)
    assert bounds[0][0] == 0 and bounds[-1][1] == tokens and len(bounds) >= 3
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    paths = write_shards(SMALL, tokens, tmp_path / "t", shard, seed=5)
    assert [p.name for p in paths] == [f"shard-{i:05d}.npz" for i in range(len(bounds))]
    whole = generate(SMALL, tokens, seed=5)
    source = TraceSource(tmp_path / "t")
    assert (source.num_tokens, source.num_experts) == (tokens, 64)
    joined = source.load()
    assert np.array_equal(joined.topk_ids, whole.topk_ids)
    assert np.array_equal(joined.seq_lens, whole.seq_lens)  # shards cut at sequence starts
    streamed = list(iter_shards(SMALL, tokens, shard, seed=5))
    assert [t.num_tokens for t in streamed] == [b - a for a, b in bounds]


def test_write_shards_refuses_a_used_directory(tmp_path):
    write_shards(SMALL, 1000, tmp_path, 400)
    with pytest.raises(InputError, match="already holds"):
        write_shards(SMALL, 1000, tmp_path, 400)
    write_shards(SMALL, 500, tmp_path, 400, overwrite=True)  # old shards removed first
    assert TraceSource(tmp_path).num_tokens == 500
    (tmp_path / "other.npz").write_bytes(b"")
    with pytest.raises(InputError, match="not shards"):
        write_shards(SMALL, 500, tmp_path, 400, overwrite=True)


def test_write_trace_single_file(tmp_path):
    out = tmp_path / "t.npz"
    write_trace(SMALL, 800, out, seed=1, split="test")
    assert np.array_equal(load_trace(out).topk_ids, generate(SMALL, 800, seed=1, split="test").topk_ids)
    with pytest.raises(InputError, match="already exists"):
        write_trace(SMALL, 800, out)


@pytest.mark.parametrize("params", [SMALL, GROUPED, replace(PRESETS["seed001"], num_layers=3)],
                         ids=["esft", "deepseek-v3", "seed001"])
def test_ids_are_valid_and_distinct(params):
    trace = generate(params, 2000, seed=2)
    ids = trace.topk_ids
    assert ids.shape == (2000, params.num_layers, params.top_k)
    assert ids.min() >= 0 and ids.max() < params.num_experts
    checked = validate_arrays("synth", {"topk_ids": ids, "seq_lens": trace.seq_lens},
                              num_experts=params.num_experts)  # raises on a repeat within a token
    assert checked.num_tokens == 2000


def test_group_limited_routing_is_respected():
    params = GROUPED
    ids = generate(params, 3000, seed=4).topk_ids.astype(np.int64)
    groups = np.sort(ids // (params.num_experts // params.num_groups), axis=2)
    used = 1 + (np.diff(groups, axis=2) != 0).sum(axis=2)
    assert used.max() <= params.groups_per_token
    assert used.max() == params.groups_per_token  # the limit binds, it is not vacuous
    loose = replace(params, num_groups=0, groups_per_token=0)
    free = np.sort(generate(loose, 3000, seed=4).topk_ids.astype(np.int64) // 32, axis=2)
    assert (1 + (np.diff(free, axis=2) != 0).sum(axis=2)).max() > params.groups_per_token


def test_sampler_is_plackett_luce_over_the_popularity():
    # no topics, no identity: first pick ~ base weights, second ~ w_j / (1 - w_i)
    params = SynthParams(num_experts=5, top_k=2, num_layers=1, popularity_sigma=1.0, popularity_jitter=0.0,
                         topic_strength=0.0, cluster_size=1, identity_experts=0, drift=0.0)
    base = _build_model(params, 0, "train").base[0]
    ids = generate(params, 200_000).topk_ids[:, 0, :].astype(np.int64)
    first = np.bincount(ids[:, 0], minlength=5) / len(ids)
    assert first == pytest.approx(base, abs=0.005)
    pairs = np.zeros((5, 5))
    np.add.at(pairs, (ids[:, 0], ids[:, 1]), 1.0)
    expected = base[:, None] * base[None, :] / (1 - base[:, None])
    np.fill_diagonal(expected, 0.0)
    assert np.abs(pairs / len(ids) - expected).max() < 0.004


def test_templates_repeat_their_routing():
    params = replace(SMALL, templates=1, template_tokens=8, seq_len_min=16)
    trace = generate(params, 3000)
    starts = np.concatenate([[0], np.cumsum(trace.seq_lens)[:-1]])
    heads = trace.topk_ids[starts[:-1]]  # first token of every complete sequence
    assert (heads == heads[0]).all()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_skew_lies_in_the_preset_range(name):
    params = PRESETS[name]
    layers = list(range(0, params.num_layers, max(1, params.num_layers // 8)))
    stats = trace_stats(generate(params, 20_000, seed=1), layers=layers)
    low, high = PRESET_SKEW[name]
    assert low <= stats.means["load_skew"] <= high


def _load_shares(trace):
    loads = expert_loads(trace.topk_ids, trace.num_experts).astype(float)
    return loads / loads.sum(axis=1, keepdims=True)


def test_drift_changes_the_test_distribution():
    def distance(drift: float) -> float:
        params = replace(SMALL, drift=drift)
        train, test = generate(params, 20_000, split="train"), generate(params, 20_000, split="test")
        return float(np.abs(_load_shares(train) - _load_shares(test)).sum(axis=1).mean())

    same, moved = distance(0.0), distance(0.5)
    assert moved > 2 * same
    assert moved > 0.1


def test_bad_parameters_raise_input_errors():
    base = SMALL
    bad = {
        "top_k": 65, "num_experts": 0, "num_layers": 0, "num_groups": 7, "popularity_sigma": -1.0,
        "persistence": 1.0, "cluster_size": 0, "families": 5, "locality": 1.5, "drift": -0.1,
        "identity_decay": 2.0, "seq_len_max": 10, "vocab_size": 0,
    }
    for field, value in bad.items():
        with pytest.raises(InputError) as err:
            validate_params(replace(base, **{field: value}))
        assert err.value.field == field, field
    with pytest.raises(InputError, match="groups_per_token"):
        validate_params(replace(PRESETS["deepseek-v3"], groups_per_token=0))
    with pytest.raises(InputError, match="fewer than top_k"):
        validate_params(replace(PRESETS["deepseek-v3"], num_groups=64, groups_per_token=1))
    with pytest.raises(InputError, match="integer"):
        validate_params(replace(base, topics=2.5))
    for kwargs, field in (({"tokens": 0}, "tokens"), ({"split": "dev"}, "split"), ({"seed": -1}, "seed")):
        call = {"tokens": 10, **kwargs}
        with pytest.raises(InputError) as err:
            generate(base, **call)
        assert err.value.field == field


def test_params_from_toml_and_mappings(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[synth]\npreset = "esft"\ndrift = 0.3\nnum_layers = 2\n')
    params = load_params(path)
    assert (params.drift, params.num_layers, params.num_experts) == (0.3, 2, 64)
    assert load_params("kimi-k2") is PRESETS["kimi-k2"]
    with pytest.raises(InputError, match="unknown preset"):
        load_params("gpt-5")
    with pytest.raises(InputError, match="unknown parameter"):
        params_from_mapping({"preset": "esft", "colour": 1})
    with pytest.raises(InputError, match="missing"):
        params_from_mapping({"num_experts": 8})
    path.write_text("[synth]\nnum_experts = 8\ntop_k = 9\nnum_layers = 1\n")
    with pytest.raises(InputError) as err:
        load_params(path)
    assert err.value.field == "top_k" and str(path) in str(err.value)


def test_cli_synth_writes_a_readable_trace(tmp_path, cli):
    result = cli("synth", "--preset", "esft", "--tokens", "500", "--out", tmp_path / "t.npz", "--json")
    assert result.code == 0, result.err
    stats = cli("stats", tmp_path / "t.npz", "--json")
    assert stats.code == 0 and stats.json()["tokens"] == 500 and stats.json()["experts"] == 64
