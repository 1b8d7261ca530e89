"""Trace format: round trip, shards, and one clear error per kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from placer.errors import InputError
from placer.trace import TraceSource, load_trace, save_trace, validate_arrays

rng = np.random.default_rng(0)
GOOD = np.stack([rng.permutation(8)[:2] for _ in range(30)]).reshape(10, 3, 2)


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_round_trip_keeps_every_array(tmp_path):
    weights = rng.random(GOOD.shape).astype(np.float32)
    trace = validate_arrays("x", {"topk_ids": GOOD, "topk_weights": weights, "num_experts": np.int64(9),
                                  "src_rank": np.arange(10), "seq_lens": np.array([4, 6])})
    save_trace(trace, tmp_path / "t.npz")
    back = load_trace(tmp_path / "t.npz")
    assert np.array_equal(back.topk_ids, GOOD) and back.num_experts == 9
    assert np.array_equal(back.topk_weights, weights)
    assert back.seq_lens.tolist() == [4, 6] and back.src_rank.tolist() == list(range(10))


def test_shard_directory_joins_in_file_name_order(tmp_path):
    write(tmp_path / "b.npz", topk_ids=GOOD[5:])
    write(tmp_path / "a.npz", topk_ids=GOOD[:5])
    source = TraceSource(tmp_path)
    assert source.num_tokens == 10 and (source.num_layers, source.top_k) == (3, 2)
    assert np.array_equal(source.load().topk_ids, GOOD)
    offsets = [chunk.token_offset for chunk in source.chunks()]
    assert offsets == [0, 5]


@pytest.fixture
def id_reads(monkeypatch):
    """The reads of a trace file's ids from now on (one True per read that decompressed them)."""
    from placer import trace as trace_module

    reads = []
    read_npz = trace_module._read_npz

    def counted(path, names=trace_module.ARRAYS):
        reads.append("topk_ids" in names)
        return read_npz(path, names)

    monkeypatch.setattr(trace_module, "_read_npz", counted)
    return reads


def test_a_declared_file_is_decompressed_once_when_summarised(tmp_path, id_reads):
    """The expert count a file declares is read alone: summarising it reads its ids once."""
    from placer.graph import summarize

    declared = write(tmp_path / "declared.npz", topk_ids=GOOD, num_experts=np.int64(9))
    assert summarize(TraceSource(declared)).num_experts == 9 and sum(id_reads) == 1
    id_reads.clear()
    undeclared = write(tmp_path / "undeclared.npz", topk_ids=GOOD)
    assert summarize(TraceSource(undeclared)).num_experts == int(GOOD.max()) + 1 and sum(id_reads) == 2


def test_num_experts_defaults_to_max_id_plus_one():
    assert validate_arrays("x", {"topk_ids": GOOD}).num_experts == int(GOOD.max()) + 1


def test_padding_is_allowed():
    ids = GOOD.copy()
    ids[0, 0, 1] = -1
    assert validate_arrays("x", {"topk_ids": ids}).topk_ids[0, 0, 1] == -1


BAD_CASES = {
    "missing topk_ids": ({"other": GOOD}, "topk_ids: missing"),
    "wrong rank": ({"topk_ids": GOOD[:, 0, :]}, "topk_ids: expected 3 dimension"),
    "wrong dtype": ({"topk_ids": GOOD.astype(np.float32)}, "topk_ids: expected an integer array"),
    "negative id": ({"topk_ids": np.where(GOOD == 3, -5, GOOD)}, "negative expert id -5"),
    "id beyond num_experts": ({"topk_ids": GOOD, "num_experts": np.int64(4)}, ">= num_experts 4"),
    "repeated expert": ({"topk_ids": np.concatenate([GOOD[:, :, :1]] * 2, axis=2)}, "repeated within one token"),
    "NaN weight": ({"topk_ids": GOOD, "topk_weights": np.full(GOOD.shape, np.nan)}, "topk_weights: NaN"),
    "weight shape": ({"topk_ids": GOOD, "topk_weights": np.ones((10, 3, 3))}, "topk_weights: shape"),
    "zero tokens": ({"topk_ids": GOOD[:0]}, "zero tokens"),
    "seq_lens sum": ({"topk_ids": GOOD, "seq_lens": np.array([3, 3])}, "seq_lens: lengths sum to 6"),
    "src_rank length": ({"topk_ids": GOOD, "src_rank": np.arange(3)}, "src_rank: expected 10 entries"),
    "bad num_experts": ({"topk_ids": GOOD, "num_experts": np.array([1.5])}, "num_experts: expected one integer"),
}


def test_repeated_expert_names_token_layer_and_expert():
    ids = np.tile(np.arange(8), (700, 4, 1))  # > one block of the repeat scan
    validate_arrays("t.npz", {"topk_ids": ids})
    ids[613, 2, [1, 6]] = 5
    with pytest.raises(InputError, match=r"expert 5 repeated .*\(token 613, layer 2\)"):
        validate_arrays("t.npz", {"topk_ids": ids})
    ids[613, 2, [1, 5, 6]] = -1  # padding may repeat
    validate_arrays("t.npz", {"topk_ids": ids})


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_arrays_name_file_and_field(tmp_path, case):
    arrays, expected = BAD_CASES[case]
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as err:
        load_trace(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    good = write(tmp_path / "good.npz", topk_ids=GOOD)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    for name in ("junk.npz", "cut.npz", "missing.npz"):
        with pytest.raises(InputError, match=name):
            load_trace(tmp_path / name)


def test_shards_without_a_declared_count_name_the_shard_with_bad_ids(tmp_path, cli):
    write(tmp_path / "a.npz", topk_ids=GOOD[:5].astype(np.float32))
    write(tmp_path / "b.npz", topk_ids=GOOD[5:].astype(np.float32))
    result = cli("evaluate", "--trace", tmp_path, "--placement", "contiguous", "--nodes", "1", "--gpus-per-node", "2")
    assert result.code == 2 and "a.npz: topk_ids: expected an integer array" in result.err


def test_shards_must_agree(tmp_path):
    write(tmp_path / "a.npz", topk_ids=GOOD)
    write(tmp_path / "b.npz", topk_ids=GOOD[:, :2, :])
    with pytest.raises(InputError, match="differs from the first shard"):
        TraceSource(tmp_path)


@pytest.mark.parametrize("case", ["wrong dtype", "repeated expert", "zero tokens", "missing topk_ids"])
def test_cli_reports_one_line_and_exit_2(tmp_path, cli, case):
    arrays, expected = BAD_CASES[case]
    path = write(tmp_path / "bad.npz", **arrays)
    result = cli("evaluate", "--trace", path, "--placement", "contiguous", "--nodes", "1", "--gpus-per-node", "2")
    assert result.code == 2
    assert result.err.count("\n") == 1 and expected in result.err and str(path) in result.err
    assert "Traceback" not in result.err


# ---------------------------------------------------------------- layer ids (format version 2)


def test_layer_ids_round_trip_and_version_one_still_loads(tmp_path):
    from placer.trace import FORMAT_VERSION

    ids = np.array([[[0, 1]], [[2, 3]]], dtype=np.int16).repeat(3, axis=1)
    trace = validate_arrays("x", {"topk_ids": ids, "layer_ids": np.array([1, 2, 5])})
    save_trace(trace, tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as npz:
        assert int(npz["format_version"]) == FORMAT_VERSION == 2
    back = load_trace(tmp_path / "v2.npz")
    assert back.layer_ids.tolist() == [1, 2, 5]
    assert TraceSource(tmp_path / "v2.npz").layer_ids.tolist() == [1, 2, 5]
    np.savez(tmp_path / "v1.npz", topk_ids=ids, num_experts=np.int64(4))  # written before layer ids existed
    old = load_trace(tmp_path / "v1.npz")
    assert old.layer_ids is None and TraceSource(tmp_path / "v1.npz").layer_ids is None
    np.savez(tmp_path / "v3.npz", topk_ids=ids, format_version=np.int64(3))
    with pytest.raises(InputError, match="format_version: 3 is not supported"):
        load_trace(tmp_path / "v3.npz")


@pytest.mark.parametrize(("layer_ids", "message"), [
    ([1, 2], "expected 3 entries"), ([2, 1, 3], "strictly increasing"), ([-1, 0, 1], "strictly increasing"),
])
def test_bad_layer_ids_are_refused(layer_ids, message):
    ids = np.zeros((1, 3, 1), dtype=np.int16)
    with pytest.raises(InputError, match=message):
        validate_arrays("x", {"topk_ids": ids, "layer_ids": np.array(layer_ids)})


def test_shards_must_agree_on_layer_ids(tmp_path):
    ids = np.zeros((2, 2, 1), dtype=np.int16)
    save_trace(validate_arrays("a", {"topk_ids": ids, "layer_ids": np.array([1, 2])}), tmp_path / "a.npz")
    save_trace(validate_arrays("b", {"topk_ids": ids, "layer_ids": np.array([1, 3])}), tmp_path / "b.npz")
    with pytest.raises(InputError, match="shards record different layer ids"):
        _ = TraceSource(tmp_path).layer_ids


def test_a_placed_file_is_read_once_and_its_digest_is_the_digest_of_its_ids(tmp_path, id_reads):
    import placer
    from placer.trace import trace_digest

    path = write(tmp_path / "t.npz", topk_ids=np.concatenate([GOOD] * 4), num_experts=np.int64(8))
    expected = trace_digest(TraceSource(path))
    id_reads.clear()
    topology = placer.load_topology("h100-dgx").resized(nodes=2, gpus_per_node=2)
    result = placer.place(path, placer.PlacementProblem(topology), placer.SolverSettings("spectral"))
    assert result.placement.metadata["trace"]["sha256"] == expected and sum(id_reads) == 1
