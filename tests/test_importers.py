"""Engine importers: tiny files in each upstream schema, read back exactly; bad inputs name file and field."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from placer.errors import InputError
from placer.formats.importers import (
    ExpertCounts,
    load_routing,
    read_counts_npy,
    read_megatron,
    read_sglang_dump,
    read_trtllm,
    read_vllm,
    save_counts,
)
from placer.trace import Trace, save_trace


def raises(source: Path, field: str | None, text: str):
    """Expect an InputError naming ``source`` and ``field`` whose message contains ``text``."""
    parts = [str(source)] + ([field] if field else [])
    return pytest.raises(InputError, match="^" + ".*".join(map(re.escape, [*parts, text])))


# ---------------------------------------------------------------- counts .npy


def test_counts_npy_reads_integers_and_whole_floats(tmp_path):
    counts = np.array([[3, 0, 5], [1, 1, 1]], dtype=np.int32)
    np.save(tmp_path / "c.npy", counts)
    np.save(tmp_path / "f.npy", counts.astype(np.float64))
    for name in ("c.npy", "f.npy"):
        result = read_counts_npy(tmp_path / name)
        assert result.counts.dtype == np.int64 and np.array_equal(result.counts, counts)
        assert (result.num_layers, result.num_experts) == (2, 3)


def test_save_counts_round_trips(tmp_path):
    counts = ExpertCounts(np.array([[1, 2]], dtype=np.int64), "x")
    save_counts(counts, tmp_path / "out.npy")
    assert np.array_equal(read_counts_npy(tmp_path / "out.npy").counts, counts.counts)


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.array([[1.0, np.nan]]), "NaN or infinite count at layer 0, expert 1"),
        (np.array([[1, -2]]), "negative count -2 at layer 0, expert 1"),
        (np.array([[1.5, 2.0]]), "fractional count 1.5"),
        (np.array([[True, False]]), "expected integer counts, got dtype bool"),
        (np.zeros((2, 0), dtype=np.int64), "expected a non-empty [layers, experts] array"),
        (np.zeros((2, 3), dtype=np.int64), "every count is zero"),
    ],
)
def test_bad_counts_are_rejected(tmp_path, value, expected):
    np.save(tmp_path / "c.npy", value)
    with raises(tmp_path / "c.npy", "counts", expected):
        read_counts_npy(tmp_path / "c.npy")


def test_counts_npy_never_unpickles_and_rejects_truncation(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with raises(tmp_path / "o.npy", None, "not a readable .npy array"):
        read_counts_npy(tmp_path / "o.npy")
    np.save(tmp_path / "t.npy", np.ones((4, 4), dtype=np.int64))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-8])
    with raises(tmp_path / "t.npy", None, "not a readable .npy array"):
        read_counts_npy(tmp_path / "t.npy")


# ---------------------------------------------------------------- Megatron


def megatron_record(step: int, layer: int, rank: int, ids: list[list[int]], **extra) -> dict:
    """One line of router_trace_rank{r}.jsonl as Megatron-Core's RouterTracer writes it."""
    return {
        "step": step,
        "stage": "pre_dispatch",
        "block": "decoder",
        "layer": layer,
        "rank": rank,
        "num_tokens": len(ids),
        "topk": len(ids[0]) if ids else 2,
        "top_indices": ids,
        **extra,
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_megatron_joins_steps_then_ranks_with_sorted_layers(tmp_path):
    write_jsonl(
        tmp_path / "router_trace_rank0.jsonl",
        [
            megatron_record(0, 3, 0, [[0, 1], [2, 3]]),
            megatron_record(0, 1, 0, [[4, 5], [6, 7]]),
            megatron_record(0, 1, 0, [[1, 2], [3, 4]], block="mtp", mtp_idx=0),  # MTP head: skipped
            megatron_record(1, 1, 0, [[0, 7]]),
            megatron_record(1, 3, 0, [[1, 6]]),
        ],
    )
    write_jsonl(
        tmp_path / "router_trace_rank1.jsonl",
        [
            megatron_record(0, 1, 1, [[2, 5]]),
            megatron_record(0, 3, 1, [[3, 4]]),
            megatron_record(1, 1, 1, []),  # an empty batch on this rank
            megatron_record(1, 3, 1, []),
        ],
    )
    trace = read_megatron(tmp_path, num_experts=8).routing
    # layer axis [1, 3]; order: step 0 rank 0, step 0 rank 1, step 1 rank 0
    expected = np.array(
        [
            [[4, 5], [0, 1]],
            [[6, 7], [2, 3]],
            [[2, 5], [3, 4]],
            [[0, 7], [1, 6]],
        ]
    )
    assert np.array_equal(trace.topk_ids, expected)
    assert trace.src_rank.tolist() == [0, 0, 1, 0] and trace.num_experts == 8
    assert np.array_equal(load_routing(tmp_path).topk_ids, expected)


def test_megatron_concatenates_micro_batches_and_reads_one_file(tmp_path):
    records = [
        megatron_record(0, 0, 2, [[0, 1]]),
        megatron_record(0, 1, 2, [[2, 3]]),
        megatron_record(0, 0, 2, [[4, 5], [6, 7]]),
        megatron_record(0, 1, 2, [[1, 0], [3, 2]]),
    ]
    minimal = [{k: v for k, v in r.items() if k not in ("stage", "block")} for r in records]  # older schema
    path = write_jsonl(tmp_path / "trace.jsonl", minimal)
    trace = load_routing(path)
    assert trace.topk_ids[:, 0].tolist() == [[0, 1], [4, 5], [6, 7]]
    assert trace.topk_ids[:, 1].tolist() == [[2, 3], [1, 0], [3, 2]]
    assert trace.src_rank.tolist() == [2, 2, 2] and trace.num_experts == 8


@pytest.mark.parametrize(
    "records, field, expected",
    [
        (
            [megatron_record(0, 0, 0, [[0, 1]]), megatron_record(0, 1, 0, [[0, 1], [2, 3]])],
            "step 0, layer 1",
            "token counts [2] differ from layer 0's [1]",
        ),
        (
            [
                megatron_record(0, 0, 0, [[0, 1]]),
                megatron_record(1, 0, 0, [[0, 1]]),
                megatron_record(1, 1, 0, [[0, 1]]),
            ],
            "step 0",
            "rank 0 has no records for layers [1]",
        ),
        (
            [{**megatron_record(0, 0, 0, [[0, 1]]), "num_tokens": 2}],
            "line 1: top_indices",
            "shape (1, 2) does not match num_tokens=2 x topk=2",
        ),
        ([megatron_record(0, 0, 0, [[0.5, 1]])], "line 1: top_indices", "expected integer expert ids"),
        ([megatron_record(0, 0, 0, [[0, 1], [2]])], "line 1: top_indices", "rows of different lengths"),
        (
            [{k: v for k, v in megatron_record(0, 0, 0, [[0, 1]]).items() if k != "layer"}],
            "line 1: layer",
            "expected a non-negative integer, got None",
        ),
        ([megatron_record(0, 0, 0, [[0, 0]])], None, "expert 0 repeated"),
    ],
)
def test_bad_megatron_records_name_file_and_field(tmp_path, records, field, expected):
    path = write_jsonl(tmp_path / "router_trace_rank0.jsonl", records)
    with raises(path if field else tmp_path, field, expected):
        read_megatron(tmp_path)


def test_megatron_truncated_file_and_shared_rank(tmp_path):
    path = write_jsonl(tmp_path / "router_trace_rank0.jsonl", [megatron_record(0, 0, 0, [[0, 1]])] * 2)
    path.write_text(path.read_text()[:-20])
    with raises(path, "line 2", "not valid JSON"):
        read_megatron(tmp_path)
    write_jsonl(path, [megatron_record(0, 0, 0, [[0, 1]])])
    other = write_jsonl(tmp_path / "router_trace_rank1.jsonl", [megatron_record(1, 0, 0, [[0, 1]])])
    with raises(other, "line 1: rank", f"rank 0 also appears in {path}"):
        read_megatron(tmp_path)


def test_megatron_empty_directory_is_rejected(tmp_path):
    with raises(tmp_path, None, "no router_trace_rank<R>.jsonl files"):
        read_megatron(tmp_path)
    (tmp_path / "router_trace_rank0.jsonl").write_text("")
    with raises(tmp_path, None, "holds no routing records"):
        read_megatron(tmp_path)


# ---------------------------------------------------------------- vLLM


def test_vllm_routed_experts_one_sequence_per_file(tmp_path):
    first = np.array([[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[1, 0], [3, 2]]], dtype=np.int16)
    second = np.array([[[7, 6], [5, 4]]], dtype=np.int32)
    np.save(tmp_path / "a.npy", first)
    np.save(tmp_path / "b.npy", second)
    one = read_vllm(tmp_path / "a.npy").routing
    assert np.array_equal(one.topk_ids, first) and one.seq_lens.tolist() == [3] and one.num_experts == 8
    both = read_vllm([tmp_path / "a.npy", tmp_path / "b.npy"], num_experts=16).routing
    assert np.array_equal(both.topk_ids, np.concatenate([first, second]))
    assert both.seq_lens.tolist() == [3, 1] and both.num_experts == 16
    assert np.array_equal(load_routing(tmp_path / "a.npy").topk_ids, first)


@pytest.mark.parametrize(
    "arrays, bad, expected",
    [
        ([np.zeros((2, 2, 2), dtype=np.float32)], 0, "expected integer expert ids, got dtype float32"),
        ([np.zeros((2, 4), dtype=np.int16)], 0, "expected [tokens, num_hidden_layers, top_k], got shape (2, 4)"),
        ([np.ones((1, 2, 2), dtype=np.int16), np.ones((1, 3, 2), dtype=np.int16)], 1, "layers x top_k (3, 2) differs"),
        ([np.ones((1, 2, 1), dtype=np.int16), np.ones((0, 2, 1), dtype=np.int16)], 1, "holds zero tokens"),
    ],
)
def test_bad_vllm_arrays_name_the_file(tmp_path, arrays, bad, expected):
    paths = [tmp_path / f"r{i}.npy" for i in range(len(arrays))]
    for path, array in zip(paths, arrays):
        np.save(path, array)
    with raises(paths[bad], "routed_experts", expected):
        read_vllm(paths)


def test_vllm_corrupt_file(tmp_path):
    (tmp_path / "r.npy").write_bytes(b"\x93NUMPY garbage")
    with raises(tmp_path / "r.npy", None, "not a readable .npy array"):
        read_vllm(tmp_path / "r.npy")


# ---------------------------------------------------------------- SGLang


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="SGLang dumps are torch.save files (optional extra)")


def sglang_per_token_dump(torch, records: list[tuple[int, np.ndarray]], mapping: np.ndarray) -> dict:
    """A per_token dump as _DetailAccumulator.dump writes it; records are (rank, ids [layers, tokens, 8])."""
    return {
        "records": [
            {
                "forward_pass_id": index,
                "rank": rank,
                "gatherer_key": "primary",
                "input_ids": list(range(ids.shape[1])),
                "positions": list(range(ids.shape[1])),
                "extend_seq_lens": [ids.shape[1]],
                "forward_mode": 1,
                "topk_ids_of_layer": torch.from_numpy(ids.astype(np.int32)),
                "misc_objects": [],
                "global_physical_count": torch.zeros((ids.shape[0], mapping.shape[1]), dtype=torch.int32),
            }
            for index, (rank, ids) in enumerate(records)
        ],
        "last_physical_to_logical_map": torch.from_numpy(mapping),
    }


def padded(rows: list[list[list[int]]]) -> np.ndarray:
    """[layers, tokens, k] ids padded with -1 to the recorder's width 8."""
    ids = np.full((len(rows), len(rows[0]), 8), -1, dtype=np.int32)
    for layer, tokens in enumerate(rows):
        for token, chosen in enumerate(tokens):
            ids[layer, token, : len(chosen)] = chosen
    return ids


def test_sglang_stat_dump_sums_passes(tmp_path, torch):
    logical = torch.tensor(
        [[[1, 0, 2, 0], [0, 3, 0, 0]], [[0, 0, 0, 5], [1, 1, 1, 1]], [[0] * 4, [0] * 4]], dtype=torch.int32
    )
    torch.save(
        {"rank": 0, "logical_count": logical, "average_utilization_rate_over_window": None},
        tmp_path / "expert_distribution_recorder_1.0.pt",
    )
    counts = read_sglang_dump(tmp_path / "expert_distribution_recorder_1.0.pt")
    assert isinstance(counts, ExpertCounts)
    assert counts.counts.tolist() == [[1, 0, 2, 5], [1, 4, 1, 1]]
    assert isinstance(load_routing(tmp_path / "expert_distribution_recorder_1.0.pt"), ExpertCounts)


def test_sglang_per_token_maps_physical_to_logical(tmp_path, torch):
    mapping = np.array([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2]], dtype=np.int64)  # 6 slots, 4 experts
    first = padded([[[4, 2], [1, 3]], [[0, 5], [2, 3]]])
    second = padded([[[5, 3], []], [[1, 4], []]])  # second token: padding only (kept as -1)
    path = tmp_path / "expert_distribution_recorder_1.0_3.pt"
    torch.save(sglang_per_token_dump(torch, [(3, first), (3, second)], mapping), path)
    trace = read_sglang_dump(path)
    assert isinstance(trace, Trace) and trace.top_k == 2 and trace.num_experts == 4
    assert trace.topk_ids.tolist() == [
        [[0, 2], [3, 2]],
        [[1, 3], [1, 0]],
        [[1, 3], [2, 3]],
        [[-1, -1], [-1, -1]],
    ]
    assert trace.src_rank.tolist() == [3, 3, 3, 3]
    assert read_sglang_dump(path, num_experts=16).num_experts == 16


def test_sglang_load_never_unpickles_code(tmp_path, torch):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"records": Payload()}, handle)
    torch.save({"logical_count": Payload()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with raises(tmp_path / name, None, "not a readable torch file"):
            read_sglang_dump(tmp_path / name)
    assert not marker.exists()


def test_sglang_truncated_and_foreign_files(tmp_path, torch):
    torch.save({"logical_count": torch.ones((1, 2, 2), dtype=torch.int32)}, tmp_path / "d.pt")
    data = (tmp_path / "d.pt").read_bytes()
    (tmp_path / "d.pt").write_bytes(data[: len(data) // 2])
    with raises(tmp_path / "d.pt", None, "not a readable torch file"):
        read_sglang_dump(tmp_path / "d.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "w.pt")
    with raises(tmp_path / "w.pt", None, "holds neither 'logical_count'"):
        read_sglang_dump(tmp_path / "w.pt")
    torch.save([1, 2], tmp_path / "l.pt")
    with raises(tmp_path / "l.pt", None, "expected the dict an SGLang dump holds, got list"):
        read_sglang_dump(tmp_path / "l.pt")


@pytest.mark.parametrize(
    "mutate, field, expected",
    [
        (lambda d, t: d.update(logical_count=t.ones((1, 2, 2))), "logical_count", "expected an integer tensor"),
        (
            lambda d, t: d.update(logical_count=t.ones((2, 2), dtype=t.int32)),
            "logical_count",
            "expected [passes, layers, experts]",
        ),
        (
            lambda d, t: d.update(logical_count=-t.ones((1, 2, 2), dtype=t.int32)),
            "logical_count",
            "negative count at pass 0, layer 0, expert 0",
        ),
        (
            lambda d, t: d["records"][0].update(topk_ids_of_layer=t.full((2, 1, 8), 6, dtype=t.int32)),
            "records[0].topk_ids_of_layer",
            "physical expert id 6 outside -1..5",
        ),
        (
            lambda d, t: d["records"][1].update(topk_ids_of_layer=t.full((3, 1, 8), -1, dtype=t.int32)),
            "records[1].topk_ids_of_layer",
            "expected [layers=2, tokens, k], got shape (3, 1, 8)",
        ),
        (lambda d, t: d["records"][1].pop("topk_ids_of_layer"), "records[1].topk_ids_of_layer", "missing"),
        (lambda d, t: d["records"][0].update(rank=-1), "records[0].rank", "expected a non-negative integer"),
        (
            lambda d, t: d.update(last_physical_to_logical_map=[0, 1]),
            "last_physical_to_logical_map",
            "expected a tensor, got list",
        ),
    ],
)
def test_bad_sglang_fields(tmp_path, torch, mutate, field, expected):
    mapping = np.array([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2]], dtype=np.int64)
    dump = sglang_per_token_dump(torch, [(0, padded([[[0, 1]], [[2, 3]]]))] * 2, mapping)
    mutate(dump, torch)
    if "logical_count" in dump:
        dump = {"rank": 0, "logical_count": dump["logical_count"]}
    torch.save(dump, tmp_path / "d.pt")
    with raises(tmp_path / "d.pt", field, expected):
        read_sglang_dump(tmp_path / "d.pt")


# ---------------------------------------------------------------- TensorRT-LLM


@pytest.fixture
def save_file():
    return pytest.importorskip("safetensors.numpy", reason="TensorRT-LLM statistics are safetensors files").save_file


def write_trtllm(
    directory: Path, save_file, ranks: dict[str, dict[int, dict[str, np.ndarray]]], meta: object = None
) -> Path:
    """meta_info.json plus ``{prefix}rank{r}.safetensors`` files: ranks[prefix][r] = {"iter_layer": array}."""
    directory.mkdir(exist_ok=True)
    meta = {"num_experts": 4, "num_experts_per_token": 2} if meta is None else meta
    (directory / "meta_info.json").write_text(json.dumps(meta))
    for prefix, files in ranks.items():
        for rank, tensors in files.items():
            save_file(tensors, str(directory / f"{prefix}rank{rank}.safetensors"))
    return directory


def trtllm_counts(base: int) -> dict[str, np.ndarray]:
    return {f"{it}_{layer}": np.arange(4, dtype=np.int64) + base + it + layer for it in (100, 101) for layer in (3, 4)}


def test_trtllm_counts_sum_ranks_and_iterations(tmp_path, save_file):
    directory = write_trtllm(tmp_path / "stats", save_file, {"": {0: trtllm_counts(0), 1: trtllm_counts(10)}})
    counts = read_trtllm(directory).routing
    assert isinstance(counts, ExpertCounts)
    arange = np.arange(4)
    layer3 = sum(arange + base + it + 3 for base in (0, 10) for it in (100, 101))
    assert counts.counts.tolist() == [layer3.tolist(), (layer3 + 4).tolist()]
    assert isinstance(load_routing(directory), ExpertCounts)


def test_trtllm_token_files_read_rank_major_per_iteration(tmp_path, save_file):
    ids = {  # (rank, iter, layer) -> [tokens, 2]
        (0, 7, 3): [[0, 1], [2, 3]],
        (0, 7, 5): [[1, 2], [3, 0]],
        (1, 7, 3): [[3, 2]],
        (1, 7, 5): [[0, 3]],
        (0, 8, 3): [[1, 0]],
        (0, 8, 5): [[2, 1]],
        (1, 8, 3): [[0, 2]],
        (1, 8, 5): [[1, 3]],
    }
    tokens = {
        rank: {f"{it}_{layer}": np.array(v, dtype=np.int32) for (r, it, layer), v in ids.items() if r == rank}
        for rank in (0, 1)
    }
    counts = {rank: {key: np.bincount(v.ravel(), minlength=4) for key, v in t.items()} for rank, t in tokens.items()}
    directory = write_trtllm(tmp_path / "stats", save_file, {"": counts, "token_selected_experts_": tokens})
    trace = read_trtllm(directory).routing
    assert isinstance(trace, Trace) and trace.num_experts == 4
    assert trace.topk_ids.tolist() == [
        [[0, 1], [1, 2]],
        [[2, 3], [3, 0]],  # iter 7 rank 0
        [[3, 2], [0, 3]],  # iter 7 rank 1
        [[1, 0], [2, 1]],  # iter 8 rank 0
        [[0, 2], [1, 3]],  # iter 8 rank 1
    ]
    assert trace.src_rank.tolist() == [0, 0, 1, 0, 1]


@pytest.mark.parametrize(
    "files, field, expected",
    [
        ({"rank0": {"100_3": np.ones(4, np.int64), "101_4": np.ones(4, np.int64)}}, "100_4", "missing"),
        ({"rank0": {"iter100_layer3": np.ones(4, np.int64)}}, "iter100_layer3", "unexpected key"),
        ({"rank0": {"100_3": np.ones(5, np.int64)}}, "100_3", "expected 4 counts (meta_info num_experts)"),
        ({"rank0": {"100_3": np.array([1, -1, 0, 0])}}, "100_3", "negative count -1"),
        ({"rank0": {"100_3": np.array([1.0, np.nan, 0, 0])}}, "100_3", "expected integers, got dtype float64"),
        (
            {"token_selected_experts_rank0": {"100_3": np.ones((2, 3), np.int32)}},
            "100_3",
            "expected [tokens, 2] expert ids",
        ),
        (
            {
                "token_selected_experts_rank0": {
                    "100_3": np.array([[0, 1]], np.int32),
                    "100_4": np.array([[0, 1], [2, 3]], np.int32),
                }
            },
            "iteration 100, layer 4",
            "token counts [2] differ from layer 3's [1]",
        ),
    ],
)
def test_bad_trtllm_files_name_file_and_key(tmp_path, save_file, files, field, expected):
    tmp_path.joinpath("meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 2}))
    for name, tensors in files.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    bad = tmp_path / f"{next(iter(files))}.safetensors"
    with raises(bad, field, expected):
        read_trtllm(tmp_path)


@pytest.mark.parametrize(
    "meta, field, expected",
    [
        (None, None, "expected a JSON object, got None"),
        ({"num_experts": 4}, "num_experts_per_token", "expected a positive integer, got None"),
        ({"num_experts": "4", "num_experts_per_token": 2}, "num_experts", "expected a positive integer, got '4'"),
    ],
)
def test_bad_trtllm_meta_info(tmp_path, save_file, meta, field, expected):
    save_file({"0_0": np.ones(4, np.int64)}, str(tmp_path / "rank0.safetensors"))
    (tmp_path / "meta_info.json").write_text(json.dumps(meta))
    with raises(tmp_path / "meta_info.json", field, expected):
        read_trtllm(tmp_path)


def test_trtllm_missing_meta_and_corrupt_file(tmp_path, save_file):
    with raises(tmp_path / "meta_info.json", None, "missing"):
        read_trtllm(tmp_path)
    directory = write_trtllm(tmp_path / "stats", save_file, {"": {0: trtllm_counts(0)}})
    data = (directory / "rank0.safetensors").read_bytes()
    (directory / "rank0.safetensors").write_bytes(data[:-10])
    with raises(directory / "rank0.safetensors", None, "not a readable safetensors file"):
        read_trtllm(directory)


# ---------------------------------------------------------------- format detection


def test_load_routing_detects_native_traces(tmp_path):
    trace = Trace(topk_ids=np.array([[[0, 1]], [[1, 2]]], dtype=np.int16), num_experts=3)
    save_trace(trace, tmp_path / "t.npz")
    assert np.array_equal(load_routing(tmp_path / "t.npz").topk_ids, trace.topk_ids)
    (tmp_path / "shards").mkdir()
    save_trace(trace, tmp_path / "shards" / "0.npz")
    assert load_routing(tmp_path / "shards").num_tokens == 2


def test_load_routing_reads_counts_npy(tmp_path):
    np.save(tmp_path / "c.npy", np.array([[1, 2], [3, 4]]))
    counts = load_routing(tmp_path / "c.npy")
    assert isinstance(counts, ExpertCounts) and counts.counts.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "name, make, expected",
    [
        (
            "v.npy",
            lambda p: np.save(p, np.arange(3)),
            "expected [tokens, layers, k] routed_experts or [layers, experts]",
        ),
        ("t.csv", lambda p: p.write_text("1,2"), "unknown routing format '.csv'"),
        ("d", lambda p: p.mkdir(), "directory in no known routing format"),
        ("missing.npy", lambda p: None, "no such file or directory"),
    ],
)
def test_load_routing_rejects_unknown_inputs(tmp_path, name, make, expected):
    make(tmp_path / name)
    with raises(tmp_path / name, None, expected):
        load_routing(tmp_path / name)


def test_missing_optional_dependencies_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    (tmp_path / "d.pt").write_bytes(b"")
    with raises(tmp_path / "d.pt", None, "reading SGLang dumps needs PyTorch"):
        read_sglang_dump(tmp_path / "d.pt")
    (tmp_path / "meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 2}))
    (tmp_path / "rank0.safetensors").write_bytes(b"")
    with raises(tmp_path / "rank0.safetensors", None, "needs safetensors"):
        read_trtllm(tmp_path)


# ---------------------------------------------------------------- dense layers, ranks, stages, slots


def test_sglang_dense_layers_dropped_with_or_without_the_model(tmp_path, torch):
    from placer.formats.importers import read_sglang
    from placer.topology import Model

    mapping = np.tile(np.arange(4), (3, 1))  # 3 decoder layers, 4 experts
    dense_first = padded([[[], []], [[0, 1], [2, 3]], [[1, 2], [3, 0]]])  # layer 0 dense: all -1
    path = tmp_path / "expert_distribution_recorder_1.0_0.pt"
    torch.save(sglang_per_token_dump(torch, [(0, dense_first)], mapping), path)
    detected = read_sglang(path)
    assert detected.routing.layer_ids.tolist() == [1, 2] and "dropped dense layers [0]" in detected.notes[0]
    toy = Model("toy", 4, 2, 8, 8, num_moe_layers=2, first_dense_layers=1)
    assert read_sglang(path, model=toy).routing.layer_ids.tolist() == [1, 2]
    with pytest.raises(InputError, match="has 4 decoder layers"):
        read_sglang(path, model=Model("toy", 4, 2, 8, 8, num_moe_layers=3, first_dense_layers=1))
    routed_first = padded([[[0, 1], [2, 3]], [[], []], [[1, 2], [3, 0]]])
    torch.save(sglang_per_token_dump(torch, [(0, routed_first)], mapping), path)
    with pytest.raises(InputError, match="layer 0 holds routing decisions, but model toy makes layers 0..0 dense"):
        read_sglang(path, model=toy)


def test_sglang_rank_files_merge_and_must_share_the_map(tmp_path, torch):
    from placer.formats.importers import read_sglang

    mapping = np.tile(np.arange(4), (1, 1))
    for rank, rows in ((0, [[[0, 1]]]), (1, [[[2, 3]]])):
        torch.save(
            sglang_per_token_dump(torch, [(rank, padded(rows))], mapping),
            tmp_path / f"expert_distribution_recorder_5.0_{rank}.pt",
        )
    merged = read_sglang(tmp_path)
    assert merged.routing.topk_ids.tolist() == [[[0, 1]], [[2, 3]]] and merged.routing.src_rank.tolist() == [0, 1]
    assert read_sglang(str(tmp_path / "expert_distribution_recorder_5.0_*.pt")).routing.num_tokens == 2
    torch.save(
        sglang_per_token_dump(torch, [(2, padded([[[0, 1]]]))], mapping[:, ::-1].copy()),
        tmp_path / "expert_distribution_recorder_5.0_2.pt",
    )
    with pytest.raises(InputError, match="differs from expert_distribution_recorder_5.0_0.pt's"):
        read_sglang(tmp_path)


def test_vllm_zero_layers_are_dense_and_the_model_is_checked(tmp_path):
    from placer.topology import Model

    ids = np.zeros((3, 3, 2), dtype=np.uint8)
    ids[:, 1:] = [[0, 1], [2, 3]]
    np.save(tmp_path / "r.npy", ids)
    result = read_vllm(tmp_path / "r.npy")
    assert result.routing.layer_ids.tolist() == [1, 2] and result.routing.num_layers == 2
    ids[:, 0] = [1, 2]
    np.save(tmp_path / "r.npy", ids)
    with pytest.raises(InputError, match="layer 0 holds routing decisions"):
        read_vllm(tmp_path / "r.npy", model=Model("toy", 4, 2, 8, 8, num_moe_layers=2, first_dense_layers=1))


def test_megatron_pipeline_layers_are_checked(tmp_path):
    for rank in range(2):
        write_jsonl(
            tmp_path / f"router_trace_rank{rank}.jsonl",
            [megatron_record(0, layer, rank, [[0, 1]]) for layer in range(3)],
        )
    mapped = read_megatron(tmp_path, pipeline_layers=[3, 3]).routing
    assert mapped.layer_ids.tolist() == list(range(6)) and mapped.num_tokens == 1
    with pytest.raises(InputError, match="stage-local layer 2 but pipeline stage 0 .* has 2 layers"):
        read_megatron(tmp_path, pipeline_layers=[2, 4])
    with pytest.raises(InputError, match="do not split into 3 pipeline stages"):
        read_megatron(tmp_path, pipeline_layers=[2, 2, 2])


def test_megatron_layer_numbers_drop_the_mtp_routers_tail(tmp_path):
    """Routing replay records every router in build order: decoder layers 1..3, then MTP layer 1."""
    steps = [[megatron_record(step, layer, 0, [[layer, step + 4]]) for layer in (1, 2, 3, 1)] for step in range(2)]
    write_jsonl(tmp_path / "router_trace_rank0.jsonl", steps[0] + steps[1])
    result = read_megatron(tmp_path, layer_numbers=True)
    assert result.routing.layer_ids.tolist() == [0, 1, 2] and result.routing.num_tokens == 2
    assert result.routing.topk_ids[:, 0].tolist() == [[1, 4], [1, 5]]
    assert any("multi-token-prediction" in note for note in result.notes)
    repeats = [megatron_record(0, layer, 0, [[layer, mb + 4]]) for mb in range(2) for layer in (1, 2, 3)]
    write_jsonl(tmp_path / "router_trace_rank0.jsonl", repeats)
    kept = read_megatron(tmp_path, layer_numbers=True)
    assert kept.routing.num_tokens == 2 and not any("multi-token" in note for note in kept.notes)


def test_trtllm_assignment_must_cover_the_slots(tmp_path):
    from placer.formats.importers import read_assignments

    (tmp_path / "lb.yaml").write_text("num_slots: 3\ninitial_global_assignments:\n  1: [0, 1]\n  2: [0, 1, 1]\n")
    with pytest.raises(InputError, match="layers list different slot counts"):
        read_assignments(tmp_path / "lb.yaml")
    (tmp_path / "lb.yaml").write_text("moe_config:\n  load_balancer:\n    num_slots: 2\n")
    with pytest.raises(InputError, match="initial_global_assignments: missing"):
        read_assignments(tmp_path / "lb.yaml")


def test_a_dump_of_the_moe_layers_only_gets_the_models_layer_ids(tmp_path):
    from placer.topology import Model

    np.save(tmp_path / "r.npy", np.array([[[0, 1], [2, 3]]], dtype=np.int32))  # 2 MoE layers, no dense rows
    toy = Model("toy", 4, 2, 8, 8, num_moe_layers=2, first_dense_layers=3)
    assert read_vllm(tmp_path / "r.npy", model=toy).routing.layer_ids.tolist() == [3, 4]
    assert read_vllm(tmp_path / "r.npy").routing.layer_ids.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"meta_info": {}}', "meta_info.routed_experts: missing"),
        ('{"meta_info": {"routed_experts": "@@@"}}', "not valid base64"),
        ('{"meta_info": {"routed_experts": "AAAA"}}', "3 bytes are not whole tokens of 2 layers x top-2"),
        ("[1]", r"line 1\[0\]: expected a response object"),
        ('{"meta', "line 1: not valid JSON"),
    ],
)
def test_sglang_routed_responses_are_checked(tmp_path, line, message):
    from placer.formats.importers import read_sglang_routed

    (tmp_path / "r.jsonl").write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        read_sglang_routed(tmp_path / "r.jsonl", num_hidden_layers=2, top_k=2)
    with pytest.raises(InputError, match="do not record their shape"):
        read_sglang_routed(tmp_path / "r.jsonl")
