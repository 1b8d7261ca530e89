"""Fuzz every importer: each input must load or raise InputError, never crash or hang.

Run from the repository root:

    python benchmarks/fuzz_importers.py [--seconds 600] [--seed 0] [--out fuzz-findings]
    python benchmarks/fuzz_importers.py --atheris npz -- -max_total_time=120   # coverage-guided

Seeds per target are valid small files written at start-up plus the matching files
of the hostile corpus (``tests/hostile``). Each input is a seed with 1-4 stacked
byte-level mutations (bit flips, interesting bytes, deleted / duplicated /
inserted ranges, truncation, splicing two seeds, numbers in text replaced by
hostile values, and members of zip containers (.npz, torch) mutated and re-zipped
with valid checksums so the parsers behind the container are reached). Targets
(a loaded input is also used downstream: traces summarised, placements checked):
native .npz, shard set with its manifest, ESFT task directory, Megatron .jsonl, vLLM .npy, SGLang .pt (needs
torch), TensorRT-LLM directory (needs safetensors), counts .npy, topology and
model TOML, placement JSON (placer and SGLang). An input is a *hang* when it
takes longer than ``--timeout`` seconds; a RuntimeWarning (e.g. an overflowing cast that
would load garbage silently) counts as a crash. Distinct crashes (target, exception
type, innermost frame) are saved to ``--out`` with a traceback; prints a markdown
table. Deterministic given ``--seed`` and ``--iterations``; ``--seconds`` bounds
wall time instead.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placer import instances
from placer.errors import InputError
from placer.formats import placement_io
from placer.formats.esft import import_esft
from placer.formats.importers import (
    read_counts_npy,
    read_megatron,
    read_sglang_dump,
    read_trtllm,
    read_vllm,
)
from placer.graph import summarize
from placer.placement import baseline
from placer.trace import Trace, load_trace, save_trace, validate_arrays, write_shard_manifest

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "hostile"
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x22, 0x5B)
INTERESTING_TEXT = ("-1", "0", "1e309", "-1e309", "nan", "NaN", "9223372036854775808", "2147483648",
                    "65536", "1.5", "", "-0", '"x"', "[]", "{}", "null", "true", "99999999999999999999")
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class Hang(Exception):
    """An input took longer than the per-input timeout."""


@dataclass(frozen=True)
class Target:
    """An importer: seeds (files or directories) and ``load(path)`` (which may raise InputError)."""

    name: str
    seeds: tuple[Path, ...]
    load: Callable[[Path], object]


@dataclass
class Tally:
    """Outcomes of one target's inputs; crashes keyed by (exception type, innermost frame)."""

    loaded: int = 0
    refused: int = 0
    hangs: int = 0
    crashes: Counter = field(default_factory=Counter)

    @property
    def tried(self) -> int:
        return self.loaded + self.refused + self.hangs + sum(self.crashes.values())


# ---------------------------------------------------------------- seeds


def _write_seeds(root: Path) -> dict[str, list[Path]]:
    """Valid small inputs of every format under ``root``: target name -> paths."""
    ids = np.array([[[0, 1], [2, 3]], [[2, 3], [0, 1]], [[1, 2], [3, 0]]], dtype=np.int16)  # [3, 2, 2]
    seeds: dict[str, list[Path]] = {name: [] for name in
                                     ("npz", "shards", "esft", "megatron", "vllm", "sglang", "trtllm",
                                      "counts", "topology", "model", "placement")}
    np.savez(root / "full.npz", topk_ids=ids, topk_weights=np.full(ids.shape, 0.5, np.float32),
             num_experts=np.int64(4), src_rank=np.array([0, 1, 0]), seq_lens=np.array([2, 1]))
    np.savez_compressed(root / "compressed.npz", topk_ids=ids.astype(np.int32))
    (root / "shards").mkdir()
    for index in range(2):
        np.savez(root / "shards" / f"{index:03d}.npz", topk_ids=ids[index:index + 2], seq_lens=np.array([1, 1]))
    seeds["npz"] += [root / "full.npz", root / "compressed.npz", root / "shards"]
    manifested = root / "manifested"  # a complete shard set as synth writes it: shards + manifest
    manifested.mkdir()
    for index in range(2):
        shard = validate_arrays("seed", {"topk_ids": ids[index:index + 2]}, 4)
        save_trace(shard, manifested / f"shard-{index:05d}.npz")
    write_shard_manifest(manifested, [(f"shard-{index:05d}.npz", 2) for index in range(2)])
    seeds["shards"].append(manifested)
    esft = root / "esft"
    for layer in (1, 2):
        (esft / "intent").mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(map(str, np.arange(6 * n) % 64)) + "\t\t" + "\t".join(["0.1"] * 6 * n) for n in (1, 2)]
        (esft / "intent" / f"expert_weights_{layer}.txt").write_text("\n".join(lines) + "\n")
    seeds["esft"].append(esft)
    records = [{"step": s, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": 0,
                "num_tokens": 2, "topk": 2, "top_indices": [[0, 1], [2, 3]]} for s in (0, 1) for layer in (1, 3)]
    (root / "router_trace_rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    seeds["megatron"].append(root / "router_trace_rank0.jsonl")
    np.save(root / "routed_experts.npy", ids)
    np.save(root / "counts.npy", np.array([[3, 1, 0, 2], [1, 1, 1, 1]], dtype=np.int64))
    seeds["vllm"].append(root / "routed_experts.npy")
    seeds["counts"].append(root / "counts.npy")
    seeds["sglang"] += _torch_seeds(root)
    seeds["trtllm"] += _trtllm_seeds(root)
    seeds["topology"] += sorted((instances.instances_dir() / "topologies").glob("*.toml"))[:2]
    seeds["model"] += sorted((instances.instances_dir() / "models").glob("*.toml"))[:2]
    placement = baseline("contiguous", 2, 8, 4, 2)
    placement_io.write_placement(placement, root / "placement.json")
    (root / "sglang.json").write_text(json.dumps({"physical_to_logical_map": placement.phy2log.tolist()}))
    seeds["placement"] += [root / "placement.json", root / "sglang.json"]
    return seeds


def _torch_seeds(root: Path) -> list[Path]:
    try:
        import torch
    except ImportError:
        return []
    ids = torch.tensor([[[0, 5, -1], [1, 2, -1]], [[3, 4, -1], [2, 1, -1]]], dtype=torch.int32)
    torch.save({"records": [{"forward_pass_id": 0, "rank": 1, "topk_ids_of_layer": ids}],
                "last_physical_to_logical_map": torch.tensor([[0, 1, 2, 3, 0, 1]] * 2)}, root / "per_token.pt")
    torch.save({"rank": 0, "logical_count": torch.ones((2, 2, 4), dtype=torch.int32),
                "average_utilization_rate_over_window": None}, root / "stat.pt")
    return [root / "per_token.pt", root / "stat.pt"]


def _trtllm_seeds(root: Path) -> list[Path]:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        return []
    directory = root / "trtllm"
    directory.mkdir()
    (directory / "meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 2}))
    save_file({f"{it}_{layer}": np.arange(4, dtype=np.int64) for it in (1, 2) for layer in (3, 4)},
              str(directory / "rank0.safetensors"))
    save_file({f"{it}_{layer}": np.array([[0, 1], [2, 3]], dtype=np.int32) for it in (1, 2) for layer in (3, 4)},
              str(directory / "token_selected_experts_rank0.safetensors"))
    return [directory]


def _hostile(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in HOSTILE.glob(pattern))


def _used(result: object) -> object:
    """Use a loaded trace downstream (summaries), so validation gaps surface as crashes."""
    return summarize(result) if isinstance(result, Trace) else result


def _placement(path: Path) -> object:
    placement = placement_io.read_placement(path, 4, 2)
    return placement_io.check_against(path, placement, instances.load_topology("h100-dgx").resized(2, 2), None)


def targets(root: Path) -> list[Target]:
    """Every importer with its seeds (valid files under ``root`` plus the hostile corpus)."""
    seeds = _write_seeds(root)
    hostile = {
        "npz": _hostile("stats__*.npz"), "shards": _hostile("stats__shard*"), "megatron": _hostile("*.jsonl"),
        "vllm": _hostile("stats__vllm*.npy", "stats__npy_garbage.npy"), "sglang": _hostile("*.pt"),
        "trtllm": _hostile("*trtllm*"), "counts": _hostile("place__counts*.npy", "stats__counts*.npy"),
        "topology": _hostile("topology__*"), "model": _hostile("model__*"), "placement": _hostile("evaluate__*"),
    }
    loaders: dict[str, Callable[[Path], object]] = {
        "npz": lambda p: _used(load_trace(p)),
        "shards": lambda p: _used(load_trace(p)),
        "esft": lambda p: _used(import_esft(p)),
        "megatron": lambda p: _used(read_megatron(p).routing),
        "vllm": lambda p: _used(read_vllm([p]).routing),
        "sglang": lambda p: _used(read_sglang_dump(p)),
        "trtllm": lambda p: _used(read_trtllm(p).routing),
        "counts": read_counts_npy,
        "topology": lambda p: instances.load_topology(str(p)),
        "model": lambda p: instances.load_model(str(p)),
        "placement": _placement,
    }
    return [Target(name, tuple(seeds[name] + hostile.get(name, [])), load)
            for name, load in loaders.items() if seeds[name]]


# ---------------------------------------------------------------- mutations


def _mutate_bytes(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One random byte-level mutation of ``data``."""
    buf = bytearray(data)
    op = rng.randrange(9)
    pos = rng.randrange(len(buf) + 1)
    span = rng.choice((1, 2, 4, 8, 64, max(1, len(buf) // 4)))
    if op == 0 and buf:
        buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1 and buf:
        buf[min(pos, len(buf) - 1)] = rng.choice(INTERESTING_BYTES)
    elif op == 2:
        del buf[pos:pos + span]
    elif op == 3:
        buf[pos:pos] = buf[pos:pos + span]
    elif op == 4:
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(min(span, 64)))
    elif op == 5:
        del buf[pos:]
    elif op == 6 and others:
        other = rng.choice(others)
        buf = buf[:pos] + other[rng.randrange(len(other) + 1):]
    elif op == 7:
        numbers = list(NUMBER.finditer(bytes(buf)))
        if numbers:
            match = rng.choice(numbers)
            buf[match.start():match.end()] = rng.choice(INTERESTING_TEXT).encode()
    elif op == 8 and len(buf) >= 8:
        at = rng.randrange(len(buf) - 7)
        buf[at:at + 8] = rng.choice((2**63 - 1, 2**32, 2**31, 0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(buf)


def _mutate_zip(data: bytes, rng: random.Random) -> bytes | None:
    """Mutate, drop or rename one member of a zip archive and re-zip it (valid CRCs); None if not a zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info, archive.read(info)) for info in archive.infolist()]
    except Exception:
        return None
    if not members:
        return None
    chosen = rng.randrange(len(members))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index, (info, payload) in enumerate(members):
            name = info.filename
            if index == chosen:
                action = rng.randrange(6)
                if action == 0:
                    continue
                if action == 1:
                    name = name[::-1]
                else:
                    payload = _mutate_bytes(payload, rng, [])
            archive.writestr(name, payload)
    return out.getvalue()


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """1-4 stacked mutations; zip containers get a member-level mutation half of the time."""
    for _ in range(rng.randint(1, 4)):
        zipped = _mutate_zip(data, rng) if data[:2] == b"PK" and rng.random() < 0.5 else None
        data = zipped if zipped is not None else _mutate_bytes(data, rng, others)
    return data


def _fresh_target(seed: Path, work: Path) -> Path:
    """``work`` emptied; for a directory seed, a copy of it there. Returns the input's path in ``work``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    target = work / seed.name
    if seed.is_dir():
        shutil.copytree(seed, target)
    return target


def materialise(seed: Path, work: Path, rng: random.Random, pool: list[bytes]) -> Path:
    """Copy ``seed`` (file or directory) into ``work`` with one of its files mutated (or deleted)."""
    target = _fresh_target(seed, work)
    if seed.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file())
        if not files:
            return target
        victim = rng.choice(files)
        if rng.random() < 0.05:
            victim.unlink()
        else:
            victim.write_bytes(mutate(victim.read_bytes(), rng, pool))
        return target
    target.write_bytes(mutate(seed.read_bytes(), rng, pool))
    return target


# ---------------------------------------------------------------- running


def _alarm(_signum: int, _frame: object) -> None:
    raise Hang()


def _frame(err: BaseException) -> str:
    """Innermost frame of the traceback, as file:line (the crash's identity)."""
    tb = traceback.extract_tb(err.__traceback__)
    last = tb[-1] if tb else None
    return f"{Path(last.filename).name}:{last.lineno}" if last else "?"


def run_one(target: Target, path: Path, timeout: float) -> tuple[str, BaseException | None]:
    """'loaded', 'refused', 'hang' or 'crash' (with the exception)."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # e.g. a silent overflowing cast
            target.load(path)
        return "loaded", None
    except InputError:
        return "refused", None
    except Hang as err:
        return "hang", err
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        return "crash", err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _save(out: Path, target: Target, path: Path, key: str, err: BaseException | None) -> None:
    """Keep the first input of a new finding (file or directory) and its traceback."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{target.name}__{re.sub(r'[^A-Za-z0-9_.]+', '_', key)}"
    saved = stem.with_name(stem.name + "".join(path.suffixes))
    if saved.exists():
        return
    if path.is_dir():
        shutil.copytree(path, saved)
    elif path.exists():
        shutil.copyfile(path, saved)
    trace = "".join(traceback.format_exception(err)) if err is not None else "hang\n"
    stem.with_name(stem.name + ".traceback.txt").write_text(trace)


def campaign(chosen: list[Target], seconds: float, iterations: int | None, seed: int, timeout: float,
             out: Path | None, work: Path) -> dict[str, Tally]:
    """Round-robin over the targets until the time or iteration budget is spent."""
    rng = random.Random(seed)
    tallies = {t.name: Tally() for t in chosen}
    pools = {t.name: [s.read_bytes() for s in t.seeds if s.is_file()] for t in chosen}
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline and (iterations is None or count < iterations * len(chosen)):
        target = chosen[count % len(chosen)]
        count += 1
        path = materialise(rng.choice(target.seeds), work / target.name, rng, pools[target.name])
        outcome, err = run_one(target, path, timeout)
        tally = tallies[target.name]
        if outcome == "loaded":
            tally.loaded += 1
        elif outcome == "refused":
            tally.refused += 1
        else:
            key = "hang" if outcome == "hang" else f"{type(err).__name__}@{_frame(err)}"
            tally.hangs += outcome == "hang"
            if outcome == "crash":
                if not tally.crashes[key]:
                    print(f"{target.name}: {key}: {str(err).splitlines()[:1]}", file=sys.stderr)
                tally.crashes[key] += 1
            if out is not None:
                _save(out, target, path, key, err)
    return tallies


def table(tallies: dict[str, Tally]) -> str:
    rows = ["| target | inputs | loaded | InputError | hangs | distinct crashes (count) |", "|---|---|---|---|---|---|"]
    for name, t in tallies.items():
        crashes = ", ".join(f"{key} ({n})" for key, n in t.crashes.items()) or "none"
        rows.append(f"| {name} | {t.tried} | {t.loaded} | {t.refused} | {t.hangs} | {crashes} |")
    return "\n".join(rows)


def _atheris(target: Target, work: Path, timeout: float, out: Path | None, extra: list[str]) -> None:
    """Coverage-guided fuzzing of one target: the input replaces the first seed (or its first file);
    libFuzzer starts from the target's file seeds and stops at the first crash (saved in ``out``)."""
    import atheris  # optional: pip install atheris

    seed = target.seeds[0]
    corpus = work.parent / "corpus"
    corpus.mkdir()
    for index, path in enumerate(p for p in target.seeds if p.is_file()):
        (corpus / f"seed{index}").write_bytes(path.read_bytes())

    def one_input(data: bytes) -> None:
        path = _fresh_target(seed, work)
        if seed.is_dir():
            min(p for p in path.rglob("*") if p.is_file()).write_bytes(data)
        else:
            path.write_bytes(data)
        outcome, err = run_one(target, path, timeout)
        if outcome in ("crash", "hang"):
            raise RuntimeError(f"{target.name}: {outcome}: {type(err).__name__}@{_frame(err)}: {err}")

    for module in [m for name, m in sys.modules.items() if name.startswith("placer")]:
        for value in vars(module).values():  # coverage of placer's own code only (all of torch is too slow)
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                atheris.instrument_func(value)
    prefix = [f"-artifact_prefix={out}/"] if out is not None else []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], *prefix, *extra, str(corpus)], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="wall-time budget (all targets)")
    parser.add_argument("--iterations", type=int, default=None, help="inputs per target (overrides time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    parser.add_argument("--targets", default=None, help="comma-separated subset of the targets")
    parser.add_argument("--out", type=Path, default=None, help="folder for crashing inputs and tracebacks")
    parser.add_argument("--atheris", metavar="TARGET", default=None, help="coverage-guided run of one target")
    args, extra = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="placer-fuzz-") as tmp:
        root = Path(tmp)
        (root / "seeds").mkdir()
        every = targets(root / "seeds")
        wanted = args.atheris or args.targets
        chosen = [t for t in every if wanted is None or t.name in wanted.split(",")]
        if not chosen:
            parser.error(f"no such target; choose from {', '.join(t.name for t in every)}")
        if args.atheris:
            _atheris(chosen[0], root / "work", args.timeout, args.out, [a for a in extra if a != "--"])
            return 0
        started = time.monotonic()
        tallies = campaign(chosen, args.seconds, args.iterations, args.seed, args.timeout, args.out, root / "work")
        print(f"{sum(t.tried for t in tallies.values())} inputs in {time.monotonic() - started:.0f} s, "
              f"seed {args.seed}\n")
        print(table(tallies))
        return int(any(t.crashes or t.hangs for t in tallies.values()))


if __name__ == "__main__":
    sys.exit(main())
