"""Co-activation graph, hypergraph and mergeable summaries: hand cases and brute-force checks."""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import pytest

from placer import graph
from placer.errors import InputError
from placer.trace import TraceSource, save_trace, validate_arrays

# 4 tokens, 2 layers, k = 3, 5 experts; -1 padding anywhere in a row, rows unsorted.
HAND = np.array(
    [
        [[0, 1, 2], [4, 3, -1]],
        [[2, 1, -1], [-1, -1, -1]],  # token 1 routes to no expert in layer 1
        [[1, 2, 0], [3, 4, 0]],
        [[-1, 3, -1], [0, 4, 3]],
    ]
)
HAND_TRACE = validate_arrays("hand", {"topk_ids": HAND, "num_experts": np.int64(5)})
HAND_SETS = [  # per layer: canonical sets and their token counts
    ([[0, 1, 2], [1, 2, -1], [3, -1, -1]], [2, 1, 1]),
    ([[0, 3, 4], [3, 4, -1]], [2, 1]),
]
HAND_PAIRS = [{(0, 1): 2, (0, 2): 2, (1, 2): 3}, {(0, 3): 2, (0, 4): 2, (3, 4): 3}]


def random_ids(tokens: int, layers: int, k: int, experts: int, seed: int = 0) -> np.ndarray:
    """[tokens, layers, k] distinct ids per row, ~10% -1 padding, a few repeated rows."""
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k]
    ids[rng.random(ids.shape) < 0.1] = -1
    ids[: tokens // 3] = ids[rng.integers(0, 5, tokens // 3)]  # heavy hitters
    return ids


def brute_sets(ids_layer: np.ndarray) -> Counter:
    return Counter(frozenset(int(e) for e in row if e >= 0) for row in ids_layer if (row >= 0).any())


def brute_pairs(ids_layer: np.ndarray) -> Counter:
    return Counter(p for row in ids_layer for p in itertools.combinations(sorted(row[row >= 0].tolist()), 2))


def dense(pairs: dict, experts: int) -> np.ndarray:
    matrix = np.zeros((experts, experts), np.int64)
    for (a, b), count in pairs.items():
        matrix[a, b] = matrix[b, a] = count
    return matrix


def assert_same_layer(a: graph.LayerSummary, b: graph.LayerSummary) -> None:
    assert np.array_equal(a.loads, b.loads)
    assert (a.coactivation != b.coactivation).nnz == 0
    assert a.sets.shape == b.sets.shape and np.array_equal(a.sets, b.sets)
    assert np.array_equal(a.set_counts, b.set_counts)


def assert_same_summary(a: graph.TraceSummary, b: graph.TraceSummary) -> None:
    assert (a.num_tokens, a.num_experts, a.top_k, a.layer_ids) == (
        b.num_tokens,
        b.num_experts,
        b.top_k,
        b.layer_ids,
    )
    for x, y in zip(a.layers, b.layers, strict=True):
        assert_same_layer(x, y)


# ---------------------------------------------------------------- hand case


def test_expert_loads_hand_case_ignores_padding():
    loads = graph.expert_loads(HAND_TRACE.topk_ids, 5)
    assert loads.tolist() == [[2, 3, 3, 1, 0], [2, 0, 0, 3, 3]]
    assert loads.dtype == np.int64


@pytest.mark.parametrize("layer", [0, 1])
def test_coactivation_hand_case(layer):
    matrix = graph.coactivation(HAND[:, layer], 5)
    assert np.array_equal(matrix.toarray(), dense(HAND_PAIRS[layer], 5))


@pytest.mark.parametrize("layer", [0, 1])
def test_distinct_sets_hand_case_in_canonical_order(layer):
    sets, counts = graph.distinct_sets(HAND[:, layer], 5)
    assert (sets.tolist(), counts.tolist()) == HAND_SETS[layer]


def test_hypergraph_heaviest_first_ties_lexicographic():
    hg = graph.hypergraph(HAND[:, 0], 5)
    assert hg.nets.tolist() == [[0, 1, 2], [1, 2, -1], [3, -1, -1]]
    assert hg.weights.tolist() == [2, 1, 1] and hg.weights.dtype == np.int64
    assert (hg.dropped_weight, hg.total_weight, hg.dropped_share) == (0, 4, 0.0)


def test_all_padding_tokens_are_not_nets():
    hg = graph.hypergraph(HAND[:, 1], 5)
    assert hg.nets.tolist() == [[0, 3, 4], [3, 4, -1]] and hg.total_weight == 3


def test_cap_drops_lightest_nets_and_reports_share():
    capped = graph.hypergraph(HAND[:, 0], 5, max_nets=2)
    assert capped.nets.tolist() == [[0, 1, 2], [1, 2, -1]]  # the tie at weight 1 goes lexicographically
    assert (capped.dropped_weight, capped.total_weight, capped.dropped_share) == (1, 4, 0.25)
    none = graph.hypergraph(HAND[:, 0], 5, max_nets=0)
    assert none.nets.shape == (0, 3) and none.dropped_share == 1.0
    assert graph.hypergraph(HAND[:, 0], 5, max_nets=10).dropped_weight == 0


def test_negative_cap_is_an_input_error():
    with pytest.raises(InputError, match="max_nets"):
        graph.hypergraph(HAND[:, 0], 5, max_nets=-1)


def test_summary_of_hand_trace():
    summary = graph.summarize(HAND_TRACE)
    assert summary.loads.tolist() == [[2, 3, 3, 1, 0], [2, 0, 0, 3, 3]]
    for layer, (sets, counts), pairs in zip(summary.layers, HAND_SETS, HAND_PAIRS, strict=True):
        assert (layer.sets.tolist(), layer.set_counts.tolist()) == (sets, counts)
        assert np.array_equal(layer.coactivation.toarray(), dense(pairs, 5))
    capped = summary.layers[0].hypergraph(max_nets=1)
    assert capped.nets.tolist() == [[0, 1, 2]] and capped.dropped_share == 0.5


def test_summarize_selected_layers_and_bad_layer():
    summary = graph.summarize(HAND_TRACE, layers=[1])
    assert summary.layer_ids == (1,) and summary.loads.tolist() == [[2, 0, 0, 3, 3]]
    with pytest.raises(InputError, match="layer 2 is out of range"):
        graph.summarize(HAND_TRACE, layers=[2])


# ---------------------------------------------------------------- brute force on random traces


@pytest.mark.parametrize(("experts", "k"), [(16, 4), (64, 8), (9, 9)])
def test_coactivation_symmetric_zero_diagonal_and_exact(experts, k):
    ids = random_ids(500, 1, k, experts)[:, 0]
    matrix = graph.coactivation(ids, experts)
    assert (matrix != matrix.T).nnz == 0 and not matrix.diagonal().any()
    assert np.array_equal(matrix.toarray(), dense(brute_pairs(ids), experts))


@pytest.mark.parametrize(("experts", "k"), [(16, 4), (64, 8), (5, 5)])
def test_distinct_sets_match_brute_force(experts, k):
    ids = random_ids(500, 1, k, experts)[:, 0]
    sets, counts = graph.distinct_sets(ids, experts)
    found = Counter({frozenset(s[s >= 0].tolist()): c for s, c in zip(sets, counts.tolist())})
    assert found == brute_sets(ids)
    padded_last = np.where(sets < 0, experts, sets)
    assert np.array_equal(np.lexsort(padded_last.T[::-1]), np.arange(len(sets)))  # canonical order


def test_many_experts_take_the_sparse_path():
    """E above the dense limit: same graph and sets as the same routing on relabelled experts."""
    ids = random_ids(300, 1, 6, 40)[:, 0]
    scale, experts = 700, 40 * 700  # 28000 experts, ids 0, 700, 1400, ...
    spread = np.where(ids >= 0, ids * scale, -1)
    assert experts > graph.DENSE_PAIR_LIMIT
    big = graph.coactivation(spread, experts)
    assert big.nnz == graph.coactivation(ids, 40).nnz
    assert (big[::scale, ::scale] != graph.coactivation(ids, 40)).nnz == 0
    sets, counts = graph.distinct_sets(spread, experts)
    small_sets, small_counts = graph.distinct_sets(ids, 40)
    assert np.array_equal(np.where(sets >= 0, sets // scale, -1), small_sets)
    assert np.array_equal(counts, small_counts)
    summary = graph.layer_summary(spread, experts)
    assert np.array_equal(summary.loads[::scale], graph.expert_loads(ids[:, None], 40)[0])


def test_numba_kernels_match_numpy_reference():
    pytest.importorskip("numba")
    assert graph.key_bits(511, 8) == 9 and graph.key_bits(512, 8) is None  # 7 x 10 bits > 64
    for experts, k in [(5, 3), (4, 4), (64, 6), (256, 8), (3, 1), (511, 8), (1000, 7)]:
        for m in range(k + 1):  # every set of every size, in shuffled rows
            sets = itertools.islice(itertools.combinations(range(experts), m), 2000)
            rows = [list(c) + [-1] * (k - m) for c in sets]
            ids = np.random.default_rng(m).permuted(np.array(rows), axis=1)
            assert_same_layer(graph.layer_summaries(ids[:, None], experts)[0], graph._numpy_layer_summary(ids, experts))
        strided = random_ids(400, 5, k, experts)[:, 1:4]  # a non-contiguous run of layers
        for layer, part in enumerate(graph.layer_summaries(strided, experts)):
            assert_same_layer(part, graph._numpy_layer_summary(strided[:, layer], experts))


def test_layer_runs_group_consecutive_layers_in_order():
    assert graph._layer_runs([0, 1, 2, 3, 4, 5], 4) == [(0, 3), (3, 6)]
    assert graph._layer_runs([3, 1, 2, 7], 4) == [(3, 4), (1, 3), (7, 8)]
    assert graph._layer_runs([0], 4, parts=2) == [(0, 1)]
    sizes = [hi - lo for lo, hi in graph._layer_runs(range(58), 8, parts=2)]
    assert sizes == [8, 8, 7, 7, 7, 7, 7, 7]  # two threads taking runs in turn: 29 layers each


def test_top_breaks_ties_by_index():
    assert graph._top(np.array([1.0, 3, 3, 2, 3]), 2).tolist() == [1, 2]
    assert graph._top(np.array([1.0, 3]), 0).tolist() == []


# ---------------------------------------------------------------- merging


def test_merge_of_chunk_summaries_equals_joined_trace():
    ids = random_ids(600, 3, 4, 12, seed=3)
    whole = validate_arrays("whole", {"topk_ids": ids, "num_experts": np.int64(12)})
    parts = [
        graph.summarize(validate_arrays("part", {"topk_ids": ids[lo:hi]}, num_experts=12))
        for lo, hi in [(0, 250), (250, 251), (251, 600)]
    ]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert_same_summary(merged, graph.summarize(whole))
    assert_same_summary(parts[2].merge(parts[0]).merge(parts[1]), merged)  # order-free


def test_merge_of_hand_halves():
    first = graph.summarize(validate_arrays("a", {"topk_ids": HAND[:2]}, num_experts=5))
    second = graph.summarize(validate_arrays("b", {"topk_ids": HAND[2:]}, num_experts=5))
    assert_same_summary(first.merge(second), graph.summarize(HAND_TRACE))


def test_merge_rejects_incompatible_summaries():
    a = graph.summarize(HAND_TRACE)
    with pytest.raises(ValueError, match="different"):
        a.merge(graph.summarize(HAND_TRACE, layers=[0]))


def test_sharded_source_streams_to_the_same_summary(tmp_path):
    ids = random_ids(700, 2, 3, 10, seed=5)
    whole = validate_arrays("whole", {"topk_ids": ids, "num_experts": np.int64(10)})
    bounds = [0, 100, 150, 400, 410, 700]
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        save_trace(validate_arrays("s", {"topk_ids": ids[lo:hi]}, num_experts=10), tmp_path / f"{n:02d}.npz")
    assert_same_summary(graph.summarize(TraceSource(tmp_path), workers=2), graph.summarize(whole))


# ---------------------------------------------------------------- networkx


def test_to_networkx_round_trips_weights_and_loads():
    summary = graph.summarize(validate_arrays("r", {"topk_ids": random_ids(300, 1, 4, 10)}, num_experts=10))
    layer = summary.layers[0]
    g = graph.to_networkx(layer.coactivation, layer.loads)
    assert sorted(g.nodes) == list(range(10))
    assert [g.nodes[e]["load"] for e in range(10)] == layer.loads.tolist()
    back = nx.to_scipy_sparse_array(g, nodelist=range(10), weight="weight", dtype=np.int64)
    assert (back != layer.coactivation).nnz == 0
    assert "load" not in graph.to_networkx(layer.coactivation).nodes[0]


def test_hypergraph_to_networkx_is_bipartite_with_net_weights():
    hg = graph.hypergraph(HAND[:, 0], 5)
    g = graph.hypergraph_to_networkx(hg)
    nets = [n for n, side in g.nodes(data="bipartite") if side == 1]
    assert nets == [("net", 0), ("net", 1), ("net", 2)]
    assert [g.nodes[n]["weight"] for n in nets] == [2, 1, 1]
    assert [sorted(g[n]) for n in nets] == [[0, 1, 2], [1, 2], [3]]
    assert nx.is_bipartite(g) and g.number_of_nodes() == 5 + 3


# ---------------------------------------------------------------- streaming cap


def chunked(ids: np.ndarray, experts: int, bounds: list[int]) -> list:
    return [
        validate_arrays("c", {"topk_ids": ids[lo:hi]}, num_experts=experts) for lo, hi in itertools.pairwise(bounds)
    ]


def summarize_chunks(chunks: list, max_nets: int | None) -> graph.TraceSummary:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return graph.combine((graph.summarize_chunk(c, range(c.num_layers), pool, max_nets) for c in chunks), max_nets)


def test_cap_keeps_loads_and_coactivation_exact_and_counts_every_dropped_token():
    ids = random_ids(900, 2, 4, 12, seed=7)
    chunks = chunked(ids, 12, [0, 200, 350, 600, 900])
    exact = summarize_chunks(chunks, None)
    capped = summarize_chunks(chunks, 15)
    for full, part in zip(exact.layers, capped.layers, strict=True):
        assert np.array_equal(full.loads, part.loads) and (full.coactivation != part.coactivation).nnz == 0
        assert len(part.sets) == 15 < len(full.sets)
        assert int(part.set_counts.sum()) + part.dropped_weight == int(full.set_counts.sum())
        truth = {tuple(s): c for s, c in zip(full.sets.tolist(), full.set_counts.tolist())}
        assert all(c <= truth[tuple(s)] for s, c in zip(part.sets.tolist(), part.set_counts.tolist()))
        padded = np.where(part.sets < 0, 12, part.sets)
        assert np.array_equal(np.lexsort(padded.T[::-1]), np.arange(15))  # still canonical order
        hg = part.hypergraph(max_nets=10)
        assert hg.total_weight == int(full.set_counts.sum())
        assert hg.dropped_weight == part.dropped_weight + int(np.sort(part.set_counts)[:5].sum())
    assert np.array_equal(capped.dropped_shares, [p.dropped_share for p in capped.layers])
    assert capped.dropped_shares.min() > 0 and not exact.dropped_shares.any()


def test_capped_streaming_is_deterministic_and_exact_when_the_cap_is_not_reached():
    ids = random_ids(900, 2, 4, 12, seed=8)
    chunks = chunked(ids, 12, [0, 100, 450, 460, 900])
    first, again = summarize_chunks(chunks, 20), summarize_chunks(chunks, 20)
    assert_same_summary(first, again)
    assert [p.dropped_weight for p in first.layers] == [p.dropped_weight for p in again.layers]
    roomy = max(len(layer.sets) for layer in summarize_chunks(chunks, None).layers)
    assert_same_summary(summarize_chunks(chunks, roomy), summarize_chunks(chunks[::-1], None))
    assert not summarize_chunks(chunks, roomy).dropped_shares.any()


def test_cap_keeps_the_highest_count_over_hash_priority():
    layer = graph.summarize(validate_arrays("r", {"topk_ids": random_ids(600, 1, 3, 9, seed=2)}, num_experts=9)).layers[
        0
    ]
    priority = layer.set_counts / graph.set_hash_unit(layer.sets)
    kept = layer.capped(7)
    assert set(map(tuple, kept.sets.tolist())) == set(map(tuple, layer.sets[np.argsort(-priority)[:7]].tolist()))
    assert kept.dropped_weight == int(layer.set_counts.sum() - kept.set_counts.sum())
    assert kept.threshold == np.sort(priority)[-8] and layer.threshold == 0  # the best priority dropped
    assert np.array_equal(kept.net_weights(), np.maximum(kept.set_counts, round(kept.threshold)))
    assert np.array_equal(layer.net_weights(), layer.set_counts)
    assert layer.capped(None) is layer and layer.capped(len(layer.sets)) is layer
    assert len(layer.capped(0).sets) == 0 and layer.capped(0).dropped_share == 1.0


def test_set_hash_is_a_function_of_the_set_in_unit_interval():
    sets = np.array([[0, 1, -1], [0, 1, 2], [0, 1, -1]], np.int16)
    u = graph.set_hash_unit(sets)
    assert u[0] == u[2] != u[1] and ((u > 0) & (u <= 1)).all()
    assert np.array_equal(graph.set_hash_unit(sets[:, :2]), graph.set_hash_unit(sets[:, :2].copy()))


def test_summarize_streams_with_a_cap_and_rejects_a_negative_one(tmp_path, monkeypatch):
    """Capped summaries run over fixed token blocks, so they depend on the tokens and their
    order only: shards cut anywhere, one file, or memory give the same summary."""
    monkeypatch.setattr("placer.trace.BLOCK_TOKENS", 128)
    ids = random_ids(700, 2, 3, 10, seed=5)
    for n, (lo, hi) in enumerate(itertools.pairwise([0, 300, 700])):
        save_trace(validate_arrays("s", {"topk_ids": ids[lo:hi]}, num_experts=10), tmp_path / f"{n:02d}.npz")
    whole = validate_arrays("w", {"topk_ids": ids}, num_experts=10)
    save_trace(whole, tmp_path / "one.npz.keep")
    streamed = graph.summarize(TraceSource(tmp_path), workers=2, max_nets=8)
    assert_same_summary(streamed, summarize_chunks(chunked(ids, 10, [0, 128, 256, 384, 512, 640, 700]), 8))
    assert_same_summary(streamed, graph.summarize(whole, max_nets=8))
    assert not np.array_equal(
        streamed.layers[0].set_counts, summarize_chunks(chunked(ids, 10, [0, 300, 700]), 8).layers[0].set_counts
    )
    assert all(len(layer.sets) == 8 for layer in streamed.layers)
    with pytest.raises(InputError, match="max_nets"):
        graph.summarize(TraceSource(tmp_path), max_nets=-1)


@pytest.mark.parametrize("seed", range(6))
def test_merge_distinct_sets_is_the_distinct_sets_of_both(seed):
    """The linear merge of two canonical set lists equals sorting their rows together, with
    integer or float counts, any id dtype, and falls back to the sort for unordered input."""
    experts, k = (10, 3) if seed % 2 else (300, 8)  # one 64-bit key word a set, or two
    ids = random_ids(400, 2, k, experts, seed)
    sa, ca = graph.distinct_sets(ids[:, 0], experts)
    sb, cb = graph.distinct_sets(ids[:, 1], experts)
    ca = ca * 0.5 if seed % 3 == 0 else ca
    sb = sb.astype(np.int32)
    expected = graph.distinct_sets(np.concatenate([sa, sb]), experts, np.concatenate([ca, cb]))
    for a, counts_a in ((sa, ca), (sa[::-1], ca[::-1])):
        sets, counts = graph.merge_distinct_sets(a, counts_a, sb, cb, experts)
        assert np.array_equal(sets, expected[0]) and sets.dtype == expected[0].dtype
        assert np.array_equal(counts, expected[1]) and counts.dtype == expected[1].dtype
    assert len(graph.merge_distinct_sets(sa[:0], ca[:0], sb, cb, experts)[0]) == len(sb)


def test_an_exact_summary_in_memory_equals_the_blockwise_one(tmp_path, monkeypatch):
    """An exact summary of a trace in memory is taken in one pass, a file's block by block:
    the same summary (exact merges), with a block size that cuts the trace in five."""
    monkeypatch.setattr("placer.trace.BLOCK_TOKENS", 128)
    ids = random_ids(600, 3, 4, 12, seed=7)
    whole = validate_arrays("w", {"topk_ids": ids}, num_experts=12)
    save_trace(whole, tmp_path / "one.npz")
    assert_same_summary(graph.summarize(whole, workers=2), graph.summarize(TraceSource(tmp_path / "one.npz")))
    assert_same_summary(graph.summarize(whole), summarize_chunks(chunked(ids, 12, [0, 128, 256, 384, 512, 600]),
                                                                 None))
