"""Timeline replay: causality (a window never decides its own placement), the first-window and
last-window conventions, the stream token source, and `placer replay` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import topo

from placer.bundled import sample_trace
from placer.errors import InputError
from placer.evaluation.replay import evaluate
from placer.evaluation.timeline import _digest, replay_timeline, window_bounds
from placer.formats.esft import import_esft
from placer.instances import load_model
from placer.online import contiguous_slots
from placer.studies import synth
from placer.trace import Trace, load_trace

SAMPLE = str(sample_trace("test"))
TOPOLOGY = topo(2, 4)
WINDOW = 1000


@pytest.fixture(scope="module")
def stream() -> Trace:
    """The bundled sample's first 4 layers (4,110 tokens: 4 full windows and a partial one)."""
    trace = load_trace(SAMPLE)
    return Trace(topk_ids=trace.topk_ids[:, :4], num_experts=trace.num_experts)


def run(trace: Trace, **kwargs):
    return replay_timeline(trace, TOPOLOGY, load_model("deepseek-v2-lite"), window_tokens=WINDOW, slots_per_gpu=9,
                           time_limit=0.5, **kwargs)


@pytest.fixture(scope="module")
def timelines(stream):
    """The timeline of the stream and of the stream with its last full window replaced."""
    altered = stream.topk_ids.copy()
    rng = np.random.default_rng(0)
    lo, hi = 3 * WINDOW, 4 * WINDOW
    altered[lo:hi] = rng.permuted(np.tile(np.arange(64, dtype=altered.dtype), (hi - lo, 4, 1)), axis=2)[..., :6]
    return run(stream), run(Trace(topk_ids=altered, num_experts=stream.num_experts))


def test_no_policy_decides_a_window_from_the_window_itself(timelines):
    original, altered = timelines
    for policy in ("static", "eplb", "placer", "naive"):
        served = [row["placement"] for row in original.per_window[policy]]
        assert served[:4] == [row["placement"] for row in altered.per_window[policy]][:4], policy
    # the oracle does look at the window it serves, so the same check must catch it
    assert original.per_window["oracle"][3]["placement"] != altered.per_window["oracle"][3]["placement"]
    # and what a window decides shows up in the next one
    assert original.per_window["naive"][4]["placement"] != altered.per_window["naive"][4]["placement"]


def test_first_window_is_contiguous_and_left_out_of_totals(timelines, stream):
    result, _ = timelines
    start = _digest(contiguous_slots(4, 64, TOPOLOGY.num_gpus, TOPOLOGY.gpus_per_node, 9))
    for policy, rows in result.per_window.items():
        assert rows[0]["placement"] == start and not rows[0]["counted"]
        counted = [row["internode_copies"] for row in rows[1:]]
        assert result.totals[policy]["internode_copies"] == sum(counted)
        assert result.totals[policy]["gpu_peak"] == sum(row["gpu_peak"] for row in rows[1:])


def test_last_partial_window_counts(timelines, stream):
    result, _ = timelines
    assert result.windows == window_bounds(stream.num_tokens, WINDOW)
    assert result.windows[-1] == (4000, 4110) and result.per_window["placer"][-1]["counted"]


def test_windows_use_the_stream_position_as_token_source(timelines, stream):
    result, _ = timelines
    model = load_model("deepseek-v2-lite")
    placement = contiguous_slots(4, 64, TOPOLOGY.num_gpus, TOPOLOGY.gpus_per_node, 9)
    lo, hi = result.windows[0]
    part = Trace(topk_ids=stream.topk_ids[lo:hi], num_experts=64)
    assert result.per_window["static"][0]["internode_copies"] == evaluate(
        part, placement, TOPOLOGY, model, token_offset=lo).totals["internode_tokens_dedup"]


def test_break_even_and_migration_facts(timelines):
    result, _ = timelines
    totals = result.totals
    assert totals["static"]["break_even_steps"] is None
    for policy in ("eplb", "placer", "naive", "oracle"):
        t = totals[policy]
        assert t["experts_moved"] == t["nvlink_moves"] + t["nic_moves"]
        assert t["bytes_moved"] == pytest.approx(t["experts_moved"] * load_model("deepseek-v2-lite").expert_param_bytes)
        assert t["break_even_steps"] is None or t["break_even_steps"] >= 0


def test_bad_window_raises(stream):
    with pytest.raises(InputError) as err:
        replay_timeline(stream, TOPOLOGY, window_tokens=5000, slots_per_gpu=9)
    assert err.value.field == "window_tokens"
    with pytest.raises(InputError) as err:
        replay_timeline(stream, TOPOLOGY, window_tokens=1000, slots_per_gpu=9, policies=("greedy",))
    assert err.value.field == "policies"


def test_cli_replay_on_the_bundled_sample(cli, tmp_path):
    args = ("replay", "--trace", SAMPLE, "--window", "2000", "--nodes", "2", "--gpus-per-node", "4",
            "--slots-per-gpu", "9", "--policy", "eplb", "--policy", "placer", "--quiet")
    result = cli(*args, "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert set(doc["totals"]) == {"eplb", "placer"} and doc["config"]["windows"] == 3
    assert doc["per_window"]["placer"][0]["counted"] is False
    table = cli(*args)
    assert table.code == 0
    assert max(len(line) for line in table.out.splitlines()[1:]) <= 80
    assert "placer" in table.out and "b-even" in table.out
    bad = cli("replay", "--trace", SAMPLE, "--window", "9000", "--quiet")
    assert bad.code == 2 and "window_tokens" in bad.err


def test_esft_stream_is_the_four_tasks_in_order(esft_dir):
    stream = import_esft(esft_dir)
    assert stream.num_tokens == 8222 + 8327 + 8479 + 8251


def test_phased_synthetic_stream_changes_routing_between_phases():
    params = synth.preset("esft")
    stream = synth.phased(params, 3001, 3, seed=0, drift_step=2.0)
    assert stream.num_tokens == 3001 and stream.seq_lens.sum() == 3001
    loads = [np.bincount(stream.topk_ids[lo:lo + 1000, 0].ravel(), minlength=64) for lo in (0, 1001, 2001)]
    assert not np.array_equal(loads[0], loads[1]) and not np.array_equal(loads[1], loads[2])
    first = synth.generate(params, 1001, seed=0, split="train")
    assert np.array_equal(stream.topk_ids[:1001], first.topk_ids)
