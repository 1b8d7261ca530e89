"""Property test of the Python API under hostile arguments: every public function of
``placer.__all__`` (and the constructors of its data types) either works or raises
:class:`InputError` / :class:`InfeasibleError` naming the argument; never another exception,
a hang, or a silently accepted NaN, float count or out-of-range id."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import placer
from placer import InfeasibleError, InputError
from placer.bundled import sample_trace

EXPECTED = (InputError, InfeasibleError)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
COUNT = st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), st.sampled_from([2**31, 2**63]))
REAL = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5))
JUNK = st.one_of(st.none(), st.booleans(), COUNT, REAL, st.text(max_size=3), st.just(np.int64(4)),
                 st.lists(st.integers(-3, 99), max_size=3), st.just(np.float64(2.0)))
TOPOLOGY = placer.load_topology("h100-dgx").resized(2, 4)
TRACE = placer.load_trace(sample_trace("test"))


def refuses_or_works(call, *args, **kwargs):
    """``call(*args, **kwargs)``; an InputError must name a field or a file."""
    try:
        return call(*args, **kwargs)
    except EXPECTED as err:
        assert "\n" not in str(err)
        if isinstance(err, InputError):
            assert err.field or err.source, err
        return None


@SETTINGS
@given(st.lists(st.one_of(COUNT, REAL, JUNK), min_size=7, max_size=7))
def test_topology_fields_are_checked(values):
    topology = refuses_or_works(placer.Topology, "t", *values)
    if topology is not None:
        assert isinstance(topology.nodes, int) and 1 <= topology.num_gpus <= 1 << 16
        assert all(math.isfinite(v) for v in (topology.gpu_memory_bytes, topology.nic_bandwidth, topology.latency_s))


@SETTINGS
@given(st.lists(st.one_of(COUNT, JUNK), min_size=5, max_size=5), st.one_of(COUNT, JUNK))
def test_model_fields_are_checked(values, dense):
    model = refuses_or_works(placer.Model, "m", *values, first_dense_layers=dense)
    if model is not None:
        assert all(isinstance(v, int) and v >= 0 for v in (model.num_experts, model.top_k, model.first_dense_layers))
        assert model.top_k <= model.num_experts


@SETTINGS
@given(st.dictionaries(st.sampled_from(["balance", "max_nodes", "max_nodes_coverage", "keep_groups",
                                        "slots_per_gpu", "memory_reserve", "exclude_gpus"]), JUNK),
       st.dictionaries(st.sampled_from(["solver", "time_limit", "seed", "alpha", "workers", "on_interrupt",
                                        "max_nets"]), JUNK))
def test_problem_and_settings_then_place(problem_args, settings_args):
    problem = refuses_or_works(placer.PlacementProblem, TOPOLOGY, **problem_args)
    solver = refuses_or_works(placer.SolverSettings, **{"time_limit": 0.5, **settings_args})
    if problem is None or solver is None:
        return
    result = refuses_or_works(placer.place, TRACE, problem, solver)
    if result is not None:
        assert result.placement.num_gpus == TOPOLOGY.num_gpus


@SETTINGS
@given(st.sampled_from([*placer.placement.BASELINES, "nope"]), COUNT, COUNT, COUNT, COUNT,
       st.lists(COUNT, max_size=3))
def test_baseline_and_exports(name, layers, experts, gpus, per_node, excluded):
    placement = refuses_or_works(placer.baseline, name, layers, experts, gpus, per_node, excluded)
    if placement is None:
        return
    assert (placement.expert_copies() >= 1).all()
    for export in (placer.to_sglang, placer.to_eplb, placer.expert_permutation):
        refuses_or_works(export, placement)


@SETTINGS
@given(st.lists(st.lists(COUNT, min_size=1, max_size=6), min_size=1, max_size=3), COUNT, COUNT,
       st.one_of(st.none(), COUNT))
def test_from_expert_gpu(rows, gpus, per_node, slots):
    width = min(map(len, rows))
    try:
        table = np.array([row[:width] for row in rows], dtype=np.int64)
    except OverflowError:
        table = np.array([[0]])
    placement = refuses_or_works(placer.from_expert_gpu, table, gpus, per_node, slots)
    if placement is not None:
        assert np.array_equal(placement.expert_gpu(), table)


@SETTINGS
@given(st.sampled_from(["int8", "int16", "int64", "uint64", "float32"]), st.integers(1, 5), st.integers(1, 3),
       st.integers(1, 4), st.one_of(COUNT, JUNK), st.integers(0, 2**32 - 1))
def test_trace_built_by_a_caller_is_validated(dtype, tokens, layers, k, experts, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(-2, 9, size=(tokens, layers, k)).astype(dtype)
    trace = refuses_or_works(placer.Trace, ids, experts)
    if trace is not None:
        assert trace.topk_ids.min() >= -1 and trace.topk_ids.max() < trace.num_experts
        placement = placer.baseline("contiguous", layers, trace.num_experts, 8, 8)
        report = placer.evaluate(trace, placement, placer.load_topology("h100-dgx").resized(1, 8))
        assert report.totals["tokens"] == trace.num_tokens


@pytest.mark.parametrize("argument", [None, 3, "no-such-file.npz", "", b"t.npz", [1, 2]])
def test_place_and_evaluate_take_paths_or_traces(argument):
    with pytest.raises(InputError) as info:
        placer.place(argument, placer.PlacementProblem(TOPOLOGY))
    assert info.value.field == "trace" or info.value.source
    with pytest.raises(InputError):
        placer.evaluate(argument, placer.baseline("contiguous", 26, 64, 8, 4), TOPOLOGY)


PLACEMENT = placer.baseline("round-robin", 2, 8, 4, 2)


@pytest.fixture(scope="module")
def placement_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p")
    (folder / "s.json").write_text(json.dumps({"physical_to_logical_map": PLACEMENT.phy2log.tolist()}))
    placer.write_placement(PLACEMENT, folder / "p.json")
    return folder / "s.json", folder / "p.json"


@SETTINGS
@given(st.one_of(COUNT, JUNK), st.one_of(COUNT, JUNK), st.one_of(COUNT, JUNK), st.one_of(REAL, JUNK))
def test_placement_files_and_migration(placement_files, gpus, per_node, experts, expert_bytes):
    placement = PLACEMENT
    for path in placement_files:
        read = refuses_or_works(placer.read_placement, path, gpus, per_node, None, experts)
        if read is not None:
            assert (read.expert_copies() >= 1).all()
    current = placer.baseline("contiguous", 2, 8, 4, 2)
    moved = refuses_or_works(placer.moved_weights, current, placement, expert_bytes)
    assert moved is None or moved["experts_moved"] >= 0


@pytest.mark.parametrize("call, args", [
    (placer.to_sglang, (PLACEMENT, "deepseek-v3")),
    (placer.to_eplb, (3,)),
    (placer.expert_permutation, (PLACEMENT, 3)),
    (placer.minimize_moves, (PLACEMENT, 5)),
    (placer.write_placement, (5, "never.json")),
    (placer.save_trace, (5, "never.npz")),
    (placer.run_sweep, (5, TOPOLOGY)),
    (placer.place, (TRACE, 5)),
    (placer.place, (TRACE, placer.PlacementProblem(TOPOLOGY), "spectral")),
])
def test_public_functions_name_an_argument_of_the_wrong_type(call, args):
    with pytest.raises(InputError) as info:
        call(*args)
    assert info.value.field and "expected a" in info.value.message


def test_place_accepts_a_path_and_a_bare_topology():
    result = placer.place(sample_trace("test"), TOPOLOGY, placer.SolverSettings(solver="contiguous"))
    assert result.placement.num_gpus == TOPOLOGY.num_gpus
