"""Write the hostile-input corpus beside this file (run once; the files are committed).

Each file is named <command>__<what is wrong>.<ext>; tests/test_hostile.py feeds
every one to the CLI command its name starts with. ``fuzz/`` holds inputs found by
benchmarks/fuzz_importers.py (kept as found, not regenerated).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOOD_IDS = np.array([[[0, 1]], [[2, 3]], [[1, 2]]], dtype=np.int16)


def npz(name: str, **arrays) -> None:
    np.savez(HERE / name, **arrays)


def main() -> None:
    for path in HERE.iterdir():
        if path.name not in (Path(__file__).name, "fuzz"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # native traces (placer stats)
    npz("stats__missing_topk_ids.npz", ids=GOOD_IDS)
    npz("stats__float_ids.npz", topk_ids=GOOD_IDS.astype(np.float32))
    npz("stats__rank_2.npz", topk_ids=GOOD_IDS[:, 0, :])
    npz("stats__negative_id.npz", topk_ids=GOOD_IDS - 3)
    npz("stats__huge_id.npz", topk_ids=GOOD_IDS, num_experts=np.int64(3))
    npz("stats__repeated_expert.npz", topk_ids=np.zeros((3, 1, 2), dtype=np.int16))
    npz("stats__nan_weights.npz", topk_ids=GOOD_IDS, topk_weights=np.full(GOOD_IDS.shape, np.nan))
    npz("stats__weights_shape.npz", topk_ids=GOOD_IDS, topk_weights=np.ones((3, 1, 3)))
    npz("stats__empty.npz", topk_ids=GOOD_IDS[:0])
    npz("stats__seq_lens_sum.npz", topk_ids=GOOD_IDS, seq_lens=np.array([1, 1]))
    npz("stats__object_array.npz", topk_ids=np.array([[[0, 1]]], dtype=object))
    good = HERE / "stats__truncated.npz"
    np.savez(good, topk_ids=GOOD_IDS)
    good.write_bytes(good.read_bytes()[:150])
    (HERE / "stats__not_a_zip.npz").write_bytes(b"PK\x03\x04 this is no archive")
    # vLLM routed_experts and counts (.npy)
    np.save(HERE / "stats__vllm_float.npy", GOOD_IDS.astype(np.float64))
    np.save(HERE / "stats__counts_as_trace.npy", np.array([[3, 1], [0, 2]]))
    (HERE / "stats__npy_garbage.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(HERE / "place__counts_nan.npy", np.array([[1.0, np.nan]]))
    np.save(HERE / "place__counts_negative.npy", np.array([[1, -4]]))
    np.save(HERE / "place__counts_empty.npy", np.zeros((0, 4)))
    np.save(HERE / "place__counts_huge.npy", np.array([[1.0, 1e300]]))  # found by fuzzing: cast to garbage
    # Megatron router traces (.jsonl)
    (HERE / "stats__megatron_bad_json.jsonl").write_text('{"step": 0, "layer": 1, \n')
    (HERE / "stats__megatron_wrong_key.jsonl").write_text(
        json.dumps({"step": 0, "layer": 1, "rank": 0, "num_tokens": 1, "topk": 2, "indices": [[0, 1]]}) + "\n"
    )
    (HERE / "stats__megatron_shape.jsonl").write_text(
        json.dumps({"step": 0, "layer": 1, "rank": 0, "num_tokens": 2, "topk": 2, "top_indices": [[0, 1]]}) + "\n"
    )
    # SGLang dumps (.pt): not a torch file, and a pickle that must never be unpickled
    (HERE / "stats__sglang_garbage.pt").write_bytes(b"\x80\x04 not a torch zip")
    # TensorRT-LLM statistics directories
    trt = HERE / "stats__trtllm_no_meta"
    trt.mkdir()
    (trt / "rank0.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    trt = HERE / "stats__trtllm_bad_meta"
    trt.mkdir()
    (trt / "meta_info.json").write_text('{"num_experts": "many"}')
    # placements (placer evaluate)
    (HERE / "evaluate__placement_not_json.json").write_text("{ nope")
    (HERE / "evaluate__placement_wrong_schema.json").write_text(
        json.dumps({"format": "placer-placement", "version": 1})
    )
    (HERE / "evaluate__sglang_missing_expert.json").write_text(json.dumps({"physical_to_logical_map": [[0] * 64]}))
    (HERE / "evaluate__sglang_ragged.json").write_text(json.dumps({"physical_to_logical_map": [[0, 1], [0]]}))
    # topology and model files (placer evaluate --topology / --model)
    (HERE / "topology__zero_gpus.toml").write_text(
        '[topology]\nname = "z"\nnodes = 1\ngpus_per_node = 0\ngpu_memory_bytes = 80e9\ngpu_flops = 1e15\n'
        "nvlink_bytes_per_s = 4.5e11\nnic_bytes_per_s = 5e10\nlatency_s = 5e-6\n"
    )
    (HERE / "topology__negative_memory.toml").write_text(
        '[topology]\nname = "n"\nnodes = 1\ngpus_per_node = 8\ngpu_memory_bytes = -1\ngpu_flops = 1e15\n'
        "nvlink_bytes_per_s = 4.5e11\nnic_bytes_per_s = 5e10\nlatency_s = 5e-6\n"
    )
    (HERE / "topology__bad_toml.toml").write_text("[topology\nname = ")
    (HERE / "model__k_above_experts.toml").write_text(
        '[model]\nname = "m"\nnum_experts = 4\ntop_k = 6\nhidden_size = 8\nmoe_intermediate_size = 8\n'
        "num_moe_layers = 26\n"
    )
    (HERE / "model__wrong_type.toml").write_text(
        '[model]\nname = "m"\nnum_experts = "sixty-four"\ntop_k = 6\nhidden_size = 8\nmoe_intermediate_size = 8\n'
        "num_moe_layers = 26\n"
    )
    deeply_nested()
    issue_14_classes()
    (HERE / "model__experts_cannot_fit.toml").write_text(
        '[model]\nname = "huge"\nnum_experts = 64\ntop_k = 6\nhidden_size = 2048\nmoe_intermediate_size = 1408\n'
        "num_moe_layers = 26\nfirst_dense_layers = 1\nexpert_param_bytes = 1e12\n"
    )


def deeply_nested() -> None:
    """JSON nested past Python's recursion limit, and a shard directory with an empty shard."""
    nested = "[" * 100_000 + "]" * 100_000
    (HERE / "evaluate__placement_deep_nesting.json").write_text(nested)
    (HERE / "stats__megatron_deep_nesting.jsonl").write_text(nested + "\n")
    trt = HERE / "stats__trtllm_deep_meta"
    trt.mkdir()
    (trt / "meta_info.json").write_text(nested)
    shards = HERE / "stats__shard_empty"
    shards.mkdir()
    np.savez(shards / "000.npz", topk_ids=GOOD_IDS)
    np.savez(shards / "001.npz", topk_ids=GOOD_IDS[:0])


TOPOLOGY = (
    '[topology]\nname = "t"\nnodes = {nodes}\ngpus_per_node = 8\ngpu_memory_bytes = 80e9\n'
    "gpu_flops = 1e15\nnvlink_bytes_per_s = 4.5e11\nnic_bytes_per_s = 5e10\nlatency_s = 5e-6\n"
)
MODEL = (
    '[model]\nname = "m"\nnum_experts = {experts}\ntop_k = 6\nhidden_size = 8\nmoe_intermediate_size = 8\n'
    "num_moe_layers = 26\nfirst_dense_layers = {dense}\n"
)


def placement_doc(**changes: object) -> str:
    """A valid placer placement of 2 layers, 4 experts, 2 x 2 GPUs, with ``changes`` applied."""
    doc = {
        "format": "placer-placement",
        "version": 1,
        "num_layers": 2,
        "num_experts": 4,
        "num_gpus": 4,
        "num_nodes": 2,
        "gpus_per_node": 2,
        "slots_per_gpu": 1,
        "phy2log": [[0, 1, 2, 3], [3, 2, 1, 0]],
    }
    doc.update(changes)
    return json.dumps(doc)


def issue_14_classes() -> None:
    """One or more inputs per class of issue 14 (wrapping sums, unbounded sizes, floats for
    integers, ambiguous or incomplete shard sets, placements that lie about their shape)."""
    three = np.array([2**63 - 1, 2**63 - 1, 5], dtype=np.int64)  # sums to 3 in wrapping int64
    npz("stats__seq_lens_int64_wrap.npz", topk_ids=GOOD_IDS, seq_lens=three)
    npz("stats__seq_lens_uint64.npz", topk_ids=GOOD_IDS, seq_lens=np.array([2**64 - 1, 4], dtype=np.uint64))
    npz("stats__src_rank_huge.npz", topk_ids=GOOD_IDS, src_rank=np.array([0, 2**62, 1]))
    npz("stats__num_experts_huge.npz", topk_ids=GOOD_IDS, num_experts=np.int64(10**12))
    npz("stats__num_experts_float.npz", topk_ids=GOOD_IDS, num_experts=np.float64(64.0))
    np.save(HERE / "stats__vllm_header_lies.npy", GOOD_IDS)
    data = (HERE / "stats__vllm_header_lies.npy").read_bytes()
    (HERE / "stats__vllm_header_lies.npy").write_bytes(data.replace(b"(3, 1, 2)", b"(3000000000000, 1, 2)"))
    megatron = HERE / "stats__megatron_rank0_rank00"
    megatron.mkdir()
    record = {"step": 0, "layer": 1, "rank": 0, "num_tokens": 1, "topk": 2, "top_indices": [[0, 1]]}
    for name in ("router_trace_rank0.jsonl", "router_trace_rank00.jsonl"):
        (megatron / name).write_text(json.dumps(record) + "\n")
    (HERE / "stats__megatron_rank_huge.jsonl").write_text(json.dumps({**record, "rank": 2**62}) + "\n")
    shards = HERE / "stats__shards_incomplete"
    shards.mkdir()
    np.savez(shards / "shard-00000.npz", topk_ids=GOOD_IDS)
    manifest = {
        "format": "placer-shards",
        "version": 1,
        "tokens": 6,
        "shards": [{"file": "shard-00000.npz", "tokens": 3}, {"file": "shard-00001.npz", "tokens": 3}],
    }
    (shards / "placer-shards.json").write_text(json.dumps(manifest))
    shards = HERE / "stats__shards_truncated"
    shards.mkdir()
    np.savez(shards / "shard-00000.npz", topk_ids=GOOD_IDS)
    manifest = {
        "format": "placer-shards",
        "version": 1,
        "tokens": 5,
        "shards": [{"file": "shard-00000.npz", "tokens": 5}],
    }
    (shards / "placer-shards.json").write_text(json.dumps(manifest))
    shards = HERE / "stats__shards_mixed_src_rank"
    shards.mkdir()
    np.savez(shards / "000.npz", topk_ids=GOOD_IDS, src_rank=np.array([0, 1, 0]))
    np.savez(shards / "001.npz", topk_ids=GOOD_IDS)
    esft = HERE / "import-esft__layer_gap" / "intent"
    esft.mkdir(parents=True)
    line = "\t".join(["0"] * 6) + "\t\t" + "\t".join(["0.1"] * 6) + "\n"
    for name in ("expert_weights_1.txt", "expert_weights_1000000000.txt"):
        (esft / name).write_text(line)
    esft = HERE / "import-esft__layer_twice" / "intent"
    esft.mkdir(parents=True)
    for name in ("expert_weights_1.txt", "expert_weights_01.txt"):
        (esft / name).write_text(line)
    (HERE / "evaluate__placement_float_counts.json").write_text(placement_doc(num_experts=4.0))
    (HERE / "evaluate__placement_num_nodes_lies.json").write_text(placement_doc(num_nodes=7))
    (HERE / "evaluate__placement_nan.json").write_text(placement_doc(version=float("nan")))
    (HERE / "evaluate__placement_huge_gpus.json").write_text(placement_doc(num_gpus=10**15))
    (HERE / "evaluate__placement_excluded_float.json").write_text(placement_doc(excluded_gpus=[1.5]))
    (HERE / "topology__nodes_huge.toml").write_text(TOPOLOGY.format(nodes=10**15))
    (HERE / "topology__nodes_float.toml").write_text(TOPOLOGY.format(nodes="2.0"))
    (HERE / "topology__deep_nesting.toml").write_text("[topology]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    (HERE / "model__experts_huge.toml").write_text(MODEL.format(experts=10**12, dense=0))
    (HERE / "model__experts_float.toml").write_text(MODEL.format(experts="64.0", dense=0))
    (HERE / "model__dense_layers_huge.toml").write_text(MODEL.format(experts=64, dense=10**9))


if __name__ == "__main__":
    main()
