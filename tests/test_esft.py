"""ESFT importer: a synthetic task written in the upstream text format, the split, the real data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from placer.errors import InputError
from placer.formats.esft import import_esft, read_esft_task, split_half
from placer.trace import load_trace

rng = np.random.default_rng(0)


def write_task(folder, seq_lens, layers=3, k=6):
    """Write ESFT files; returns ids [tokens, layers, k] and weights."""
    folder.mkdir(parents=True)
    tokens = sum(seq_lens)
    ids = np.stack([rng.permutation(64)[:k] for _ in range(tokens * layers)]).reshape(tokens, layers, k)
    weights = np.round(rng.random(ids.shape), 4).astype(np.float32)
    bounds = np.concatenate([[0], np.cumsum(seq_lens)])
    for layer in range(layers):
        lines = []
        for lo, hi in itertools.pairwise(bounds):
            id_text = "\t".join(map(str, ids[lo:hi, layer].ravel()))
            weight_text = "\t".join(f"{w:.4f}" for w in weights[lo:hi, layer].ravel())
            lines.append(f"{id_text}\t\t{weight_text}\n")
        (folder / f"expert_weights_{layer + 1}.txt").write_text("".join(lines))
    return ids, weights


def test_task_round_trip_keeps_ids_weights_and_sequences(tmp_path):
    ids, weights = write_task(tmp_path / "intent", [3, 5, 2])
    trace = read_esft_task(tmp_path / "intent")
    assert np.array_equal(trace.topk_ids, ids)
    assert np.allclose(trace.topk_weights, weights, atol=1e-4)
    assert trace.seq_lens.tolist() == [3, 5, 2] and trace.num_experts == 64


def test_split_cuts_at_first_boundary_at_or_after_half(tmp_path):
    write_task(tmp_path / "law", [3, 5, 2])  # 10 tokens, half = 5: boundaries 3, 8 -> cut after 8
    train, test = split_half(read_esft_task(tmp_path / "law"))
    assert train.seq_lens.tolist() == [3, 5] and test.seq_lens.tolist() == [2]


def test_split_pools_tasks_in_fixed_order(tmp_path):
    intent, _ = write_task(tmp_path / "intent", [2, 2])
    law, _ = write_task(tmp_path / "law", [1, 1, 1])
    train, test = import_esft(tmp_path, split=True)
    assert np.array_equal(train.topk_ids, np.concatenate([intent[:2], law[:2]]))
    assert np.array_equal(test.topk_ids, np.concatenate([intent[2:], law[2:]]))


def test_cli_import_writes_readable_split(tmp_path, cli):
    write_task(tmp_path / "esft" / "summary", [4, 4, 4])
    result = cli("import", "esft", tmp_path / "esft", "--out", tmp_path / "out.npz", "--split", "--json")
    assert result.code == 0, result.err
    assert load_trace(tmp_path / "out-train.npz").num_tokens == 8
    assert load_trace(tmp_path / "out-test.npz").num_tokens == 4


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: (p / "expert_weights_2.txt").unlink(), "expert_weights_2.txt: missing"),
        (lambda p: (p / "expert_weights_1.txt").write_text("1\t2\t3\n"), "line 1: expected 'ids<TAB><TAB>weights'"),
        (lambda p: (p / "expert_weights_1.txt").write_text("1\t2\t\t0.1\n"), "line 1: 2 ids and 1 weights"),
        (lambda p: (p / "expert_weights_1.txt").write_text("a\tb\t\tc\td\n"), "non-numeric"),
    ],
)
def test_bad_task_files_name_file_and_line(tmp_path, mutate, expected):
    write_task(tmp_path / "intent", [2, 3])
    mutate(tmp_path / "intent")
    with pytest.raises(InputError, match=expected):
        read_esft_task(tmp_path / "intent")


def test_unknown_task_is_rejected(tmp_path):
    with pytest.raises(InputError, match="unknown task 'poetry'"):
        import_esft(tmp_path, task="poetry")


def test_real_esft_split(esft_dir):
    train, test = import_esft(esft_dir, split=True)
    assert train.num_tokens + test.num_tokens == 8222 + 8327 + 8479 + 8251
    assert (train.num_layers, train.top_k, train.num_experts) == (26, 6, 64)
    assert train.num_tokens == 17467 and test.num_tokens == 15812
