"""The Dask backend (placer.cluster, ``--scheduler``): identical results on a real cluster.

One ``distributed.LocalCluster`` (2 single-threaded worker processes) serves the module;
``local:2`` starts its own. No mocks of Dask.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from placer import graph
from placer.cluster import connect
from placer.errors import InputError
from placer.trace import TraceSource, save_trace, validate_arrays

distributed = pytest.importorskip("distributed", reason="needs placer[dask] (part of placer[test])")

#: uneven shard sizes, so the merge tree is not a balanced one
SHARD_TOKENS = (700, 300, 300, 900, 120, 500)
EXPERTS, LAYERS, K = 32, 3, 4
#: a streaming cap below the distinct sets of every layer (so merges drop sets)
CAP = 60


def _routing(tokens: int, rng: np.random.Generator) -> np.ndarray:
    """[tokens, LAYERS, K] distinct ids per token, drawn from 4 clusters of 8 experts (so the
    co-activation graph has structure), some tokens padded."""
    home = rng.integers(0, 4, size=(tokens, LAYERS, 1)) * 8
    ids = home + np.argsort(rng.random((tokens, LAYERS, 8)), axis=2)[:, :, :K]
    stray = rng.random((tokens, LAYERS)) < 0.2
    ids[stray, -1] = (ids[stray, -1] + 8) % EXPERTS
    ids[rng.random(tokens) < 0.05, :, -1] = -1
    return ids


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A synthetic sharded trace: one .npz per entry of SHARD_TOKENS."""
    folder = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(7)
    for index, tokens in enumerate(SHARD_TOKENS):
        trace = validate_arrays("shard", {"topk_ids": _routing(tokens, rng)}, num_experts=EXPERTS)
        save_trace(trace, folder / f"shard-{index:05d}.npz")
    return folder


@pytest.fixture(scope="module")
def address():
    """The address of a real local Dask cluster of 2 worker processes, started separately."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_merge_in_order_is_the_binary_counter_tree():
    parts = [(size, name) for size, name in zip((2, 1, 1, 1, 5, 1, 1), "abcdefg")]
    assert graph.merge_in_order(parts, lambda x, y: f"({x}{y})") == "(((a(bc))(de))(fg))"


def test_cluster_summary_equals_in_process_summary(shards, address):
    source = TraceSource(shards)
    with connect(address) as cluster:
        assert cluster.workers == 2
        remote = cluster.summarize(source)
        chosen = cluster.summarize(source, layers=[2, 0])
        capped = cluster.summarize(source, max_nets=CAP)
    want_capped = graph.summarize(source, max_nets=CAP)
    assert all(layer.dropped_weight > 0 for layer in want_capped.layers), "the cap must bind"
    for got, want in ((remote, graph.summarize(source)), (chosen, graph.summarize(source, [2, 0])),
                      (capped, want_capped)):
        assert (got.num_tokens, got.layer_ids) == (want.num_tokens, want.layer_ids)
        for a, b in zip(got.layers, want.layers, strict=True):
            assert np.array_equal(a.loads, b.loads)
            assert (a.coactivation != b.coactivation).nnz == 0
            assert a.sets.dtype == b.sets.dtype and np.array_equal(a.sets, b.sets)
            assert np.array_equal(a.set_counts, b.set_counts)
            assert (a.dropped_weight, a.threshold) == (b.dropped_weight, b.threshold)


def test_map_keeps_item_order(address):
    with connect(address) as cluster:
        assert cluster.map(np.negative, list(range(7))) == [-i for i in range(7)]
        assert cluster.map(np.negative, []) == []


@pytest.mark.parametrize("solver,cap", [("spectral", "auto"), ("auto", "auto"), ("spectral", str(CAP))])
def test_placement_files_identical_in_process_local_and_remote(cli, shards, address, tmp_path, solver, cap):
    common = ["place", "--trace", shards, "--solver", solver, "--nodes", "2", "--gpus-per-node", "4",
              "--time-limit", "1", "--max-nets", cap]
    outputs = {}
    for name, extra in (("in-process", []), ("local", ["--scheduler", "local:2"]),
                        ("remote", ["--scheduler", address])):
        if name == "local" and (solver, cap) != ("spectral", "auto"):
            continue  # local:N is exercised once (it starts its own cluster)
        out = tmp_path / f"{name}.json"
        result = cli(*common, "--out", out, *extra)
        assert result.code == 0, result.err
        outputs[name] = out.read_bytes()
    first = outputs.pop("in-process")
    assert b'"sha256"' in first
    for name, data in outputs.items():
        assert data == first, f"{name} placement differs from the in-process one"


def test_stats_identical_on_the_cluster(cli, shards, address):
    here = cli("stats", shards, "--json")
    there = cli("stats", shards, "--json", "--scheduler", address)
    assert here.code == there.code == 0
    assert there.out == here.out


def test_bad_shard_fails_on_the_worker_with_one_line(cli, shards, address, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for shard in sorted(shards.glob("*.npz"))[:2]:
        (bad / shard.name).write_bytes(shard.read_bytes())
    ids = _routing(50, np.random.default_rng(1))
    ids[3, 1, :2] = 5  # expert 5 twice in one token's top-k
    np.savez(bad / "shard-00002.npz", topk_ids=ids, num_experts=np.int64(EXPERTS))
    result = cli("stats", bad, "--scheduler", address)
    assert result.code == 2
    assert "shard-00002.npz: topk_ids: expert 5 repeated" in result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1


def test_unreachable_scheduler_is_an_input_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler within 0.5 s"), \
            connect("tcp://127.0.0.1:9", timeout=0.5):
        pass


def test_scheduler_without_workers_is_an_input_error():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty, \
            pytest.raises(InputError, match="no worker joined the Dask scheduler within 0.5 s"), \
            connect(empty.scheduler_address, timeout=0.5):
        pass


def test_bad_local_spec_and_non_npz_input(cli, shards, tmp_path):
    result = cli("stats", shards, "--scheduler", "local:0")
    assert result.code == 2 and "positive worker count" in result.err
    routed = tmp_path / "routed.npy"  # a vLLM routed_experts array: token-level, but not .npz
    np.save(routed, _routing(20, np.random.default_rng(2)))
    result = cli("stats", routed, "--scheduler", "local:1")
    assert result.code == 2 and "needs a native .npz trace" in result.err


def test_missing_dask_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes ``import distributed`` fail
    with pytest.raises(InputError, match=r"pip install 'placer\[dask\]'"), connect("local:1"):
        pass


def test_dask_is_not_imported_without_the_option(shards):
    code = ("import sys; from placer.cli import main; sys.argv = ['placer', 'stats', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'")
    run = subprocess.run([sys.executable, "-c", code, str(shards)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def test_sweep_identical_with_ep_sizes_as_cluster_tasks(cli, shards, address, tmp_path):
    model = tmp_path / "m32.toml"  # the shape of the sharded trace: 32 experts, top-4, 3 layers
    model.write_text(
        '[model]\nname = "m32"\nnum_experts = 32\ntop_k = 4\nhidden_size = 1024\n'
        'moe_intermediate_size = 512\nnum_moe_layers = 3\n'
    )
    common = ["sweep", "--model", str(model), "--topology", "h100-512", "--trace", str(shards),
              "--ep", "1,8,16,32", "--json"]
    here = cli(*common)
    there = cli(*common, "--scheduler", address)
    assert here.code == 0, here.err
    assert there.code == 0, there.err
    assert there.json() == here.json()
    assert [p["ep"] for p in here.json()["points"]] == [1, 8, 16, 32]
