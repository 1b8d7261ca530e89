"""Trace statistics on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from placer.graph import summarize
from placer.stats import entropy_bits, load_skew, summary_stats, trace_stats
from placer.trace import validate_arrays

# Same hand trace as test_graph: 4 tokens, 2 layers, k = 3, 5 experts.
HAND = np.array(
    [
        [[0, 1, 2], [4, 3, -1]],
        [[2, 1, -1], [-1, -1, -1]],
        [[1, 2, 0], [3, 4, 0]],
        [[-1, 3, -1], [0, 4, 3]],
    ]
)
TRACE = validate_arrays("hand", {"topk_ids": HAND, "num_experts": np.int64(5)})


def bits(*counts: int) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


def test_hand_case_per_layer():
    stats = trace_stats(TRACE)
    assert (stats.num_tokens, stats.num_experts, stats.top_k, stats.layer_ids) == (4, 5, 3, (0, 1))
    # loads [2, 3, 3, 1, 0] (mean 9/5) and [2, 0, 0, 3, 3] (mean 8/5)
    assert stats.load_skew == pytest.approx([3 / (9 / 5), 3 / (8 / 5)])
    assert stats.entropy_bits == pytest.approx([bits(2, 3, 3, 1), bits(2, 3, 3)])
    assert stats.routed_tokens.tolist() == [4, 3]
    assert stats.distinct_sets.tolist() == [3, 2]
    assert stats.distinct_share == pytest.approx([3 / 4, 2 / 3])
    assert stats.density == pytest.approx([3 / 10, 3 / 10])  # 3 co-activated pairs of 10


def test_hand_case_means_and_json():
    stats = trace_stats(TRACE)
    means = stats.means
    assert means["load_skew"] == pytest.approx((3 / 1.8 + 3 / 1.6) / 2)
    assert means["distinct_share"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert means["density"] == pytest.approx(0.3)
    data = json.loads(json.dumps(stats.to_dict()))
    assert (data["tokens"], data["layers"], data["k"], data["experts"]) == (4, 2, 3, 5)
    assert data["per_layer"]["distinct_sets"] == [3, 2]
    assert data["mean"]["entropy_bits"] == pytest.approx((bits(2, 3, 3, 1) + bits(2, 3, 3)) / 2)


def test_uniform_layer_has_skew_one_and_log2_entropy():
    ids = np.array([[[0, 1]], [[2, 3]]])
    stats = trace_stats(validate_arrays("u", {"topk_ids": ids}))
    assert stats.load_skew.tolist() == [1.0]
    assert stats.entropy_bits.tolist() == [2.0]
    assert stats.density.tolist() == [2 / 6]


def test_layer_without_routing_is_nan_and_left_out_of_means():
    ids = np.array([[[0, 1], [-1, -1]], [[1, 2], [-1, -1]]])
    stats = trace_stats(validate_arrays("p", {"topk_ids": ids}))
    assert math.isnan(stats.load_skew[1]) and math.isnan(stats.entropy_bits[1])
    assert stats.means["load_skew"] == pytest.approx(stats.load_skew[0])
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert data["per_layer"]["load_skew"][1] is None and data["per_layer"]["routed_tokens"] == [2, 0]


def test_selected_layers_and_summary_reuse():
    assert trace_stats(TRACE, layers=[1]).distinct_sets.tolist() == [2]
    assert summary_stats(summarize(TRACE)).to_dict() == trace_stats(TRACE).to_dict()


def test_skew_and_entropy_functions_are_per_layer():
    loads = np.array([[4, 0, 0, 0], [1, 1, 1, 1]])
    assert load_skew(loads).tolist() == [4.0, 1.0]
    assert entropy_bits(loads).tolist() == [0.0, 2.0]


def test_cli_stats_json_on_the_sample(cli):
    from placer.bundled import sample_trace

    result = cli("stats", sample_trace("train"), "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert (doc["tokens"], doc["layers"], doc["k"], doc["experts"]) == (4112, 26, 6, 64)
    assert 5.0 < doc["mean"]["entropy_bits"] < 6.0
    assert len(doc["per_layer"]["load_skew"]) == 26


def test_distinct_sets_are_exact_below_the_sketch_and_estimated_above(monkeypatch):
    """trace_stats keeps a bounded sketch per layer: exact while the distinct sets fit it, an
    estimate within a few percent (and flagged) beyond it, whatever the block boundaries."""
    from placer import stats as stats_module
    from placer.bundled import sample_trace
    from placer.trace import load_trace

    trace = load_trace(sample_trace("train"))
    exact = summary_stats(summarize(trace))
    monkeypatch.setattr("placer.trace.BLOCK_TOKENS", 300)
    assert trace_stats(trace).to_dict() == exact.to_dict()
    size = int(np.median(exact.distinct_sets))  # half the layers fit the sketch, half do not
    monkeypatch.setattr(stats_module, "SKETCH_SIZE", size)
    sketched = trace_stats(trace)
    over = exact.distinct_sets >= size
    assert over.any() and not over.all() and np.array_equal(sketched.distinct_estimated, over)
    assert np.array_equal(sketched.distinct_sets[~over], exact.distinct_sets[~over])
    error = np.abs(sketched.distinct_sets[over] / exact.distinct_sets[over] - 1)
    assert error.mean() < 0.15, error
    assert sketched.to_dict()["distinct_sets_estimated"] is True
