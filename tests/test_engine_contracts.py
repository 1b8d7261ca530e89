"""Contract tests: engine dumps built as the engines write them go through import -> place ->
export, and the engines' loaders (re-implemented in ``engine_loaders``) read the result.

Model: DeepSeek-V2-Lite (27 decoder layers, layer 0 dense, 64 experts, top-6). Every test
checks that each GPU holds what placer placed, that layer numbering matches the model, and,
where the engine has a static dispatch rule (SGLang), that placer's replay of that rule is
the engine's and never reaches a GPU out of service.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import random_trace
from engine_loaders import flag, sglang_metadata, trtllm_holdings, vllm_initial_map, vllm_rank_map

from placer import instances
from placer.dispatch import sglang_static_map
from placer.evaluation.replay import evaluate
from placer.formats.placement_io import read_placement
from placer.trace import load_trace

MODEL = "deepseek-v2-lite"
LAYERS, DENSE, EXPERTS, TOP_K = 27, 1, 64, 6
MOE_IDS = list(range(DENSE, LAYERS))
DEAD = 5
COMMON = ("--model", MODEL, "--topology", "h100-dgx", "--nodes", "1", "--solver", "spectral", "--time-limit", "1")


def routing(tokens: int, seed: int) -> np.ndarray:
    """Logical top-6 ids of the 26 MoE layers: [tokens, 26, 6]."""
    return random_trace(tokens, LAYERS - DENSE, EXPERTS, TOP_K, seed).topk_ids.astype(np.int64)


def with_dense(ids: np.ndarray, fill: int) -> np.ndarray:
    """[tokens, 27, k]: the engines' decoder-layer indexing, dense layer 0 left ``fill``."""
    full = np.full((ids.shape[0], LAYERS, ids.shape[2]), fill, dtype=ids.dtype)
    full[:, DENSE:] = ids
    return full


def place_both(cli, tmp_path, trace, fmt: str, *extra: str) -> tuple:
    """place twice (deterministic): placer JSON for the truth, ``fmt`` for the engine."""
    truth = tmp_path / "truth.json"
    out = tmp_path / f"engine.{fmt}"
    assert cli("place", "--trace", trace, "--out", truth, *COMMON, *extra).code == 0
    done = cli("place", "--trace", trace, "--out", out, "--format", fmt, "--json", *COMMON, *extra)
    assert done.code == 0, done.err
    return read_placement(truth), out, done.json()["launch"]


def gpu_rows(placement, gpu: int) -> np.ndarray:
    """[moe_layers, slots] experts of placer GPU ``gpu``."""
    per_gpu = placement.phy2log.reshape(placement.num_layers, placement.num_gpus, placement.slots_per_gpu)
    return per_gpu[:, gpu]


# ---------------------------------------------------------------- SGLang


def sglang_per_token_dumps(directory, in_service: np.ndarray, passes: dict[int, list[np.ndarray]]):
    """What ``_DetailAccumulator.dump`` writes on every rank: one file per rank."""
    torch = pytest.importorskip("torch")
    first_copy = {
        (layer, int(e)): int(np.flatnonzero(in_service[layer] == e)[0])
        for layer in range(LAYERS)
        for e in range(EXPERTS)
    }
    for rank, blocks in passes.items():
        records = []
        for pass_id, logical in enumerate(blocks):
            tokens = len(logical)
            physical = np.full((LAYERS, tokens, 8), -1, dtype=np.int32)  # reset() fills -1
            for layer in MOE_IDS:
                for t in range(tokens):
                    physical[layer, t, :TOP_K] = [first_copy[layer, e] for e in logical[t, layer - DENSE]]
            records.append(
                {
                    "forward_pass_id": pass_id,
                    "rank": rank,
                    "gatherer_key": "primary",
                    "input_ids": list(range(tokens)),
                    "positions": list(range(tokens)),
                    "extend_seq_lens": [tokens],
                    "forward_mode": 1,
                    "topk_ids_of_layer": torch.from_numpy(physical),
                    "misc_objects": [],
                    "global_physical_count": torch.zeros((LAYERS, in_service.shape[1]), dtype=torch.int64),
                }
            )
        dump = {"records": records, "last_physical_to_logical_map": torch.from_numpy(in_service)}
        torch.save(dump, directory / f"expert_distribution_recorder_1764700000.5_{rank}.pt")


def in_service_map(seed: int) -> np.ndarray:
    """[27, 64] a non-trivial placement SGLang ran under (dense row trivial)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.permutation(EXPERTS) for _ in range(LAYERS)])
    rows[0] = np.arange(EXPERTS)
    return rows


def test_sglang_per_rank_dumps_to_a_map_sglang_loads_and_dispatches_locally(cli, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    ranks = {0: [routing(60, 1), routing(40, 2)], 1: [routing(70, 3)]}
    ranks[2] = ranks[0]  # attention without DP: rank 2 records rank 0's tokens again
    current = in_service_map(7)
    sglang_per_token_dumps(dumps, current, ranks)
    trace = tmp_path / "t.npz"
    imported = cli(
        "import", "sglang", dumps, "--out", trace, "--model", MODEL, "--in-service", tmp_path / "current.json", "--json"
    )
    assert imported.code == 0, imported.err
    assert imported.json()["layer_ids"] == MOE_IDS and "ranks [2]" in " ".join(imported.json()["notes"])
    loaded = load_trace(trace)
    expected = np.concatenate([*ranks[0], *ranks[1]])
    assert loaded.num_tokens == 170 and (loaded.topk_ids == expected).all()
    assert loaded.src_rank.tolist() == [0] * 100 + [1] * 70

    truth, out, launch = place_both(
        cli, tmp_path, trace, "sglang", "--exclude-gpus", str(DEAD), "--slots-per-gpu", "10"
    )
    ep, redundant = int(flag(launch, "--ep-size")), int(flag(launch, "--ep-num-redundant-experts"))
    assert (ep, redundant) == (7, 6) and flag(launch, "--init-expert-location") == str(out)
    engine = sglang_metadata(json.loads(out.read_text()), EXPERTS, LAYERS, ep, redundant)
    live = [g for g in range(8) if g != DEAD]
    # layer numbering: the dense row is SGLang's trivial row, MoE layer l is decoder row l + 1
    assert (engine["p2l"][0] == np.arange(70) % EXPERTS).all()
    for rank, gpu in enumerate(live):
        held = engine["p2l"][DENSE:, rank * 10 : (rank + 1) * 10]
        assert (held == gpu_rows(truth, gpu)).all(), f"EP rank {rank} (GPU {gpu}) holds other experts"
    assert (engine["copies"][DENSE:] == truth.expert_copies()).all(), "phantom copies"
    # static dispatch: a local copy whenever the placement has one; placer's replay is SGLang's
    ours = sglang_static_map(truth)
    to_slot = np.array([live[p // 10] * 10 + p % 10 for p in range(70)])
    for rank, gpu in enumerate(live):
        local = (gpu_rows(truth, gpu)[:, :, None] == np.arange(EXPERTS)).any(axis=1)
        served = engine["dispatch"][rank, DENSE:] // engine["local"]
        assert (served[local] == rank).all()
        assert (ours[:, gpu] == to_slot[engine["dispatch"][rank, DENSE:]]).all()
    assert (ours[:, DEAD] == -1).all()
    report = evaluate(
        loaded,
        truth,
        instances.load_topology("h100-dgx").resized(1, None),
        instances.load_model(MODEL),
        rule="sglang-static",
    )
    assert report.per_layer["gpu_load"][:, DEAD].sum() == 0

    # the map in service works as --current (dense row dropped by the model)
    moved = cli(
        "place",
        "--trace",
        trace,
        "--out",
        tmp_path / "next.json",
        "--current",
        tmp_path / "current.json",
        "--json",
        *COMMON,
    )
    assert moved.code == 0, moved.err
    assert "experts_moved" in moved.json()["solve"]["moves"]


def test_sglang_stat_dump_drops_dense_rows_and_keeps_layer_numbering(cli, tmp_path):
    torch = pytest.importorskip("torch")
    counts = np.zeros((4, LAYERS, EXPERTS), dtype=np.int32)  # ring buffer of 4 passes
    counts[:3, DENSE:] = np.random.default_rng(0).integers(0, 50, (3, LAYERS - DENSE, EXPERTS))
    torch.save(
        {"rank": 0, "logical_count": torch.from_numpy(counts), "average_utilization_rate_over_window": None},
        tmp_path / "expert_distribution_recorder_1764700000.5.pt",
    )
    out = tmp_path / "c.npy"
    done = cli("import", "sglang", tmp_path / "expert_distribution_recorder_1764700000.5.pt", "--out", out, "--json")
    assert done.code == 0 and "dropped dense layers [0]" in done.json()["notes"][0]
    assert (np.load(out) == counts.sum(axis=0)[DENSE:]).all()
    truth, map_path, launch = place_both(cli, tmp_path, out, "sglang", "--slots-per-gpu", "9", "--solver", "eplb")
    engine = sglang_metadata(
        json.loads(map_path.read_text()), EXPERTS, LAYERS, 8, int(flag(launch, "--ep-num-redundant-experts"))
    )
    for gpu in range(8):
        assert (engine["p2l"][DENSE:, gpu * 9 : (gpu + 1) * 9] == gpu_rows(truth, gpu)).all()
    # the map read back (evaluate/validate) replays SGLang's static dispatch exactly
    back = read_placement(map_path, 8, 8, instances.load_model(MODEL))
    assert (sglang_static_map(back) == engine["dispatch"][:, DENSE:].transpose(1, 0, 2)).all()


def test_sglang_static_map_on_two_nodes_prefers_a_copy_on_the_node(cli, tmp_path):
    counts = np.random.default_rng(3).integers(1, 500, (LAYERS - DENSE, EXPERTS))
    trace = tmp_path / "c.npy"
    np.save(trace, counts)
    truth, map_path, launch = place_both(cli, tmp_path, trace, "sglang", "--nodes", "2", "--gpus-per-node", "4",
                                         "--slots-per-gpu", "10", "--solver", "eplb")
    assert flag(launch, "--moe-a2a-backend") == "deepep"  # SGLang refuses static dispatch without one
    ep, nnodes = int(flag(launch, "--ep-size")), int(flag(launch, "--nnodes"))
    assert (ep, nnodes) == (8, 2) and flag(launch, "--tp-size") == "8"
    engine = sglang_metadata(json.loads(map_path.read_text()), EXPERTS, LAYERS, ep,
                             int(flag(launch, "--ep-num-redundant-experts")), nnodes)
    back = read_placement(map_path, 8, 4, instances.load_model(MODEL))
    assert (sglang_static_map(back) == engine["dispatch"][:, DENSE:].transpose(1, 0, 2)).all()
    # the node tier is exercised: some rank is served by a copy on its node, not on itself
    served = engine["dispatch"][:, DENSE:] // engine["local"]
    rank = np.arange(ep)[:, None, None]
    assert ((served != rank) & (served // 4 == rank // 4)).any()


def test_sglang_return_routed_experts_jsonl(cli, tmp_path):
    import base64

    lines = []
    for seed in (1, 2):
        ids = with_dense(routing(30, seed), 0).astype("<i4")  # capturer buffer: int32, dense zero
        lines.append(
            json.dumps(
                {
                    "text": "...",
                    "meta_info": {"id": str(seed), "routed_experts": base64.b64encode(ids.tobytes()).decode("ascii")},
                }
            )
        )
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    done = cli("import", "sglang-routed", tmp_path / "r.jsonl", "--out", tmp_path / "t.npz", "--model", MODEL, "--json")
    assert done.code == 0, done.err
    trace = load_trace(tmp_path / "t.npz")
    assert trace.layer_ids.tolist() == MOE_IDS and trace.seq_lens.tolist() == [30, 30]
    assert (trace.topk_ids[:30] == routing(30, 1)).all()
    wrong = cli(
        "import", "sglang-routed", tmp_path / "r.jsonl", "--out", tmp_path / "u.npz", "--layers", "26", "--top-k", "6"
    )
    assert wrong.code == 2 and "not whole tokens" in wrong.err


# ---------------------------------------------------------------- vLLM


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_vllm_routed_experts_to_initial_expert_map(cli, tmp_path, dtype):
    files = []
    for seed in (1, 2, 3):
        files.append(tmp_path / f"req{seed}.npy")
        np.save(files[-1], with_dense(routing(50, seed), 0).astype(dtype))  # layer 0 dense: zeros
    trace = tmp_path / "t.npz"
    done = cli("import", "vllm", *files, "--out", trace, "--json")  # no model: the zero layer is detected
    assert done.code == 0, done.err
    assert done.json()["layer_ids"] == MOE_IDS and "dropped dense layers [0]" in done.json()["notes"][0]
    truth, out, launch = place_both(cli, tmp_path, trace, "vllm", "--exclude-gpus", str(DEAD), "--slots-per-gpu", "10")
    config = json.loads(flag(launch, "--eplb-config"))
    assert config["initial_expert_map_path"] == str(out) and "EP size 7" in launch[0]
    rows = vllm_initial_map(json.loads(out.read_text()), EXPERTS, LAYERS - DENSE, 7, config["num_redundant_experts"])
    for rank, gpu in enumerate(g for g in range(8) if g != DEAD):
        assert (rows[:, rank * 10 : (rank + 1) * 10] == gpu_rows(truth, gpu)).all()


def test_vllm_expert_placement_file_one_rank_per_expert(cli, tmp_path):
    np.save(tmp_path / "r.npy", with_dense(routing(80, 4), 0).astype(np.int32))
    trace = tmp_path / "t.npz"
    assert cli("import", "vllm", tmp_path / "r.npy", "--out", trace, "--model", MODEL).code == 0
    out = tmp_path / "ranks.json"
    done = cli(
        "place",
        "--trace",
        trace,
        "--out",
        out,
        "--format",
        "vllm-ranks",
        "--json",
        *COMMON[:-4],
        "--solver",
        "round-robin",
    )
    assert done.code == 0, done.err
    ranks = vllm_rank_map(json.loads(out.read_text()), EXPERTS, 8)
    assert ranks.tolist() == [e % 8 for e in range(EXPERTS)]
    per_layer = cli("place", "--trace", trace, "--out", tmp_path / "x.json", "--format", "vllm-ranks", *COMMON)
    assert per_layer.code == 2 and "one map to every layer" in per_layer.err


# ---------------------------------------------------------------- Megatron-Core


def megatron_records(step: int, rank: int, layer: int, ids: np.ndarray) -> str:
    """One line as ``RouterTracer._flush_records_to_disk`` writes it."""
    return json.dumps(
        {
            "step": step,
            "stage": "pre_dispatch",
            "block": "decoder",
            "layer": layer,
            "rank": rank,
            "num_tokens": len(ids),
            "topk": TOP_K,
            "top_indices": ids.tolist(),
        }
    )


def test_megatron_pipeline_stages_and_recompute_to_trtllm(cli, tmp_path):
    """PP=2 (decoder layers 0..13 | 14..26, local ids), DP=2, two micro-batches, recompute."""
    stages = [14, 13]
    truth_ids = {}
    for rank in range(4):
        stage, position = divmod(rank, 2)
        lines = []
        for step in range(2):
            batches = [routing(20, 100 * step + 10 * position + mb) for mb in range(2)]
            truth_ids[step, position] = np.concatenate(batches)
            local_layers = [i for i in range(stages[stage]) if stage or i >= DENSE]  # local 0 of stage 0 is dense
            for ids in batches:  # forward
                lines += [
                    megatron_records(step, rank, i, ids[:, sum(stages[:stage]) + i - DENSE]) for i in local_layers
                ]
            for ids in batches:  # backward recompute fires the router hook again
                lines += [
                    megatron_records(step, rank, i, ids[:, sum(stages[:stage]) + i - DENSE])
                    for i in reversed(local_layers)
                ]
        (tmp_path / f"router_trace_rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
    trace = tmp_path / "t.npz"
    refused = cli("import", "megatron", tmp_path, "--out", trace, "--model", MODEL)
    assert refused.code == 2 and "pipeline" in refused.err
    wrong_split = cli("import", "megatron", tmp_path, "--out", trace, "--model", MODEL, "--pipeline-layers", "13,14")
    assert wrong_split.code == 2
    done = cli("import", "megatron", tmp_path, "--out", trace, "--model", MODEL, "--pipeline-layers", "14,13", "--json")
    assert done.code == 0, done.err
    loaded = load_trace(trace)
    assert loaded.layer_ids.tolist() == MOE_IDS and loaded.num_tokens == 2 * 2 * 40
    expected = np.concatenate([truth_ids[step, position] for step in range(2) for position in range(2)])
    assert (loaded.topk_ids == expected).all()
    assert "activation recompute" in " ".join(done.json()["notes"])

    truth, out, launch = place_both(cli, tmp_path, trace, "trtllm", "--slots-per-gpu", "10", "--exclude-gpus", "2")
    yaml = pytest.importorskip("yaml")
    ep = int(launch[0].rsplit("EP size ", 1)[1])
    held = trtllm_holdings(yaml.safe_load(out.read_text()), EXPERTS, ep, MOE_IDS)
    live = [g for g in range(8) if g != 2]
    for layer, layer_idx in enumerate(MOE_IDS):
        for rank, gpu in enumerate(live):
            assert (held[layer_idx][rank] == gpu_rows(truth, gpu)[layer]).all()


def test_megatron_inference_layer_numbers(cli, tmp_path):
    """Inference with --moe-enable-routing-replay: layer = TransformerLayer.layer_number (1-based, global)."""
    ids = routing(30, 9)
    mtp = routing(30, 10)[:, 0]  # the MTP layer's router, numbered 1 and written after the decoder's
    lines = [megatron_records(0, 0, layer + 1, ids[:, layer - DENSE]) for layer in MOE_IDS]
    lines.append(megatron_records(0, 0, 1, mtp))
    (tmp_path / "router_trace_rank0.jsonl").write_text("\n".join(lines) + "\n")
    trace = tmp_path / "t.npz"
    refused = cli("import", "megatron", tmp_path, "--out", trace, "--model", MODEL)
    assert refused.code == 2 and "--layer-numbers" in refused.err and "MoE layers + 1" in refused.err
    assert not trace.exists()
    both = cli("import", "megatron", tmp_path, "--out", trace, "--layer-numbers", "--pipeline-layers", "14,13")
    assert both.code == 2 and "--pipeline-layers" in both.err
    done = cli("import", "megatron", tmp_path, "--out", trace, "--model", MODEL, "--layer-numbers", "--json")
    assert done.code == 0, done.err
    loaded = load_trace(trace)
    assert loaded.layer_ids.tolist() == MOE_IDS and (loaded.topk_ids == ids).all()
    assert "multi-token-prediction" in " ".join(done.json()["notes"])
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "router_trace_rank0.jsonl").write_text(megatron_records(0, 0, 0, ids[:, 0]) + "\n")
    wrong = cli("import", "megatron", zero, "--out", trace, "--layer-numbers")
    assert wrong.code == 2 and "start at 1" in wrong.err


# ---------------------------------------------------------------- TensorRT-LLM


def trtllm_statistics(directory, num_ids: int, per_rank: dict[int, dict[tuple[int, int], np.ndarray]]):
    """What ``ExpertStatistic._set_iter`` writes at the end of the range."""
    from safetensors.numpy import save_file

    directory.mkdir()
    (directory / "meta_info.json").write_text(json.dumps({"num_experts": num_ids, "num_experts_per_token": TOP_K}))
    for rank, records in per_rank.items():
        save_file(
            {f"{i}_{layer}": value for (i, layer), value in records.items()}, str(directory / f"rank{rank}.safetensors")
        )


def test_trtllm_statistics_slots_and_layer_ids(cli, tmp_path):
    pytest.importorskip("safetensors")
    yaml = pytest.importorskip("yaml")
    ids = {rank: routing(100, rank) for rank in range(2)}
    counts = {
        rank: {
            (i, layer): np.bincount(ids[rank][:, layer - DENSE].ravel(), minlength=EXPERTS).astype(np.int64)
            for i in (100, 101)
            for layer in MOE_IDS
        }
        for rank in range(2)
    }
    trtllm_statistics(tmp_path / "stats", EXPERTS, counts)
    out = tmp_path / "c.npy"
    assert cli("import", "trtllm", tmp_path / "stats", "--out", out, "--model", MODEL).code == 0
    expected = 2 * sum(np.stack([counts[r][100, layer] for layer in MOE_IDS]) for r in range(2))
    assert (np.load(out) == expected).all()
    truth, lb, _ = place_both(cli, tmp_path, out, "trtllm", "--slots-per-gpu", "9", "--solver", "eplb")
    doc = yaml.safe_load(lb.read_text())
    held = trtllm_holdings(doc, EXPERTS, 8, MOE_IDS)
    assert all((held[layer_idx].reshape(-1) == truth.phy2log[layer]).all() for layer, layer_idx in enumerate(MOE_IDS))

    # the load balancer on: the recorder sees 72 slot ids; map them back with the assignment
    slot_of = {
        layer: np.array(
            [np.flatnonzero(np.array(doc["initial_global_assignments"][layer]) == e)[0] for e in range(EXPERTS)]
        )
        for layer in MOE_IDS
    }
    slotted = {
        rank: {
            (i, layer): np.bincount(slot_of[layer][ids[rank][:, layer - DENSE]].ravel(), minlength=72).astype(np.int64)
            for i in (100, 101)
            for layer in MOE_IDS
        }
        for rank in range(2)
    }
    trtllm_statistics(tmp_path / "slots", 72, slotted)
    refused = cli("import", "trtllm", tmp_path / "slots", "--out", tmp_path / "s.npy", "--model", MODEL)
    assert refused.code == 2 and "load-balancer slots" in refused.err
    mapped = cli(
        "import", "trtllm", tmp_path / "slots", "--out", tmp_path / "s.npy", "--model", MODEL, "--assignment", lb
    )
    assert mapped.code == 0, mapped.err
    assert (np.load(tmp_path / "s.npy") == expected).all()


def test_trtllm_raw_per_token_files_are_read_not_ignored(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    from placer.formats.importers import read_trtllm

    ids = routing(40, 9)
    directory = tmp_path / "stats"
    trtllm_statistics(
        directory,
        EXPERTS,
        {0: {(5, layer): np.bincount(ids[:, layer - DENSE].ravel(), minlength=64) for layer in MOE_IDS}},
    )
    save_file(
        {f"5_{layer}": ids[:, layer - DENSE].astype(np.int32) for layer in MOE_IDS},
        str(directory / "rank0_raw.safetensors"),
    )
    result = read_trtllm(directory)
    assert (result.routing.topk_ids == ids).all() and result.routing.layer_ids.tolist() == MOE_IDS
    assert "rank<R>_raw.safetensors" in result.notes[0]


def test_interleaved_moe_layers_keep_their_numbers_from_dump_to_export(cli, tmp_path):
    """MoE every other layer (1, 3, 5): placing from the dump keeps the decoder-layer keys; the
    counts .npy cannot, and the import says so."""
    pytest.importorskip("safetensors")
    yaml = pytest.importorskip("yaml")
    rng = np.random.default_rng(3)
    trtllm_statistics(tmp_path / "stats", 16, {0: {(0, layer): rng.integers(1, 50, 16) for layer in (1, 3, 5)}})
    done = cli("import", "trtllm", tmp_path / "stats", "--out", tmp_path / "c.npy", "--json")
    assert done.code == 0 and "not contiguous" in done.json()["notes"][-1]
    out = tmp_path / "lb.yaml"
    placed = cli(
        "place",
        "--trace",
        tmp_path / "stats",
        "--out",
        out,
        "--format",
        "trtllm",
        "--solver",
        "eplb",
        "--topology",
        "h100-dgx",
        "--nodes",
        "1",
        "--gpus-per-node",
        "4",
    )
    assert placed.code == 0, placed.err
    assert sorted(yaml.safe_load(out.read_text())["initial_global_assignments"]) == [1, 3, 5]
