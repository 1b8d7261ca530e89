"""Time and memory of every hostile input: each must be answered within 10 s and 2 GB.

Run from the repository root:

    python benchmarks/hostile_bounds.py [--limit-s 10] [--limit-gb 2] [--only SUBSTRING]

Runs each case of the hostile corpus (``tests/hostile`` and ``tests/hostile/fuzz``, with the
command ``tests/test_hostile.py`` gives it) plus generated cases that cannot be committed
(FIFOs, ``/dev/zero``, a 1 GiB ignored ``.npz`` member, a decompression bomb, 250 MB and
16 MB placement JSON, ``--nodes 1000000``) as a fresh ``placer`` process, and measures its wall
time and peak resident memory (``os.wait4``: the process and nothing else). A process still
running after 3 x the time limit is killed and counted as a hang. Prints a markdown table of
the slowest and largest cases and the generated ones, the worst case of each, and how many exceeded a limit (exit
code 1 if any did). Process start-up (imports, ~1-2 s) is included in the times.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "hostile"


def _corpus_command():
    """``command(path, out)`` of tests/test_hostile.py (the one mapping of case to command)."""
    spec = importlib.util.spec_from_file_location("test_hostile", ROOT / "tests" / "test_hostile.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(module)
    return module.CASES, module.command


def _zip_member(path: Path, name: str, size: int, ids: np.ndarray | None) -> None:
    """An .npz with ``ids`` as topk_ids (if given) and ``name`` holding ``size`` zero bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if ids is not None:
            buffer = io.BytesIO()
            np.save(buffer, ids)
            archive.writestr("topk_ids.npy", buffer.getvalue())
        with archive.open(name, "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (size,)})
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)


def generated_cases(folder: Path, sample: str) -> dict[str, list[str]]:
    """Cases made per run: name -> placer arguments."""
    os.mkfifo(folder / "fifo.npz")
    os.mkfifo(folder / "fifo.json")
    ids = np.array([[[0, 1]], [[2, 3]]], dtype=np.int16)
    _zip_member(folder / "ignored_1gib.npz", "extra.npy", 1 << 30, ids)
    _zip_member(folder / "bomb.npz", "topk_ids.npy", 1 << 30, None)
    row = [e % 64 for e in range(32768)]  # 32,768 slots (4,096 GPUs x 8), ~126 kB of JSON per layer
    for name, layers in (("huge.json", 2000), ("just_under_cap.json", 130)):  # ~250 MB and ~16 MB
        with open(folder / name, "w") as handle:
            json.dump({"physical_to_logical_map": [row] * layers}, handle)
    out = str(folder / "out.json")
    return {
        "trace FIFO": ["stats", str(folder / "fifo.npz")],
        "trace /dev/zero": ["stats", "/dev/zero"],
        "placement FIFO": ["evaluate", "--trace", sample, "--placement", str(folder / "fifo.json")],
        "ignored 1 GiB npz member": ["stats", str(folder / "ignored_1gib.npz")],
        "1 GiB topk_ids bomb": ["stats", str(folder / "bomb.npz")],
        "250 MB placement JSON": ["evaluate", "--trace", sample, "--placement", str(folder / "huge.json")],
        "16 MB placement JSON (parsed)": ["evaluate", "--trace", sample, "--placement",
                                          str(folder / "just_under_cap.json")],
        "--nodes 1000000": ["place", "--trace", sample, "--nodes", "1000000", "--out", out],
        "--out /dev/null": ["place", "--trace", sample, "--solver", "contiguous", "--out", "/dev/null"],
    }


def run(args: list[str], limit_s: float) -> tuple[float, float, int | None]:
    """(wall s, peak RSS GiB, exit code or None if killed as a hang) of ``placer ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "placer", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = started + 3 * limit_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            code = None
            break
        time.sleep(0.02)
    proc.returncode = -1  # reaped here, not by Popen
    return time.perf_counter() - started, usage.ru_maxrss / 2**20, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-s", type=float, default=10.0)
    parser.add_argument("--limit-gb", type=float, default=2.0)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    cases, command = _corpus_command()
    from placer.bundled import sample_trace

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        todo = {f"{p.parent.name}/{p.name}": command(p, folder / "out.json") for p in cases}
        generated = generated_cases(folder, str(sample_trace("test")))
        todo.update(generated)
        for name, arguments in todo.items():
            if args.only in name:
                results.append((name, *run(arguments, args.limit_s)))
    over = [r for r in results if r[3] is None or r[1] > args.limit_s or r[2] > args.limit_gb]
    print(f"{len(results)} hostile inputs, limits {args.limit_s:g} s and {args.limit_gb:g} GiB (startup included)\n")
    print("| case | wall s | peak RSS GiB | exit |\n|---|---:|---:|---:|")
    shown = (sorted(results, key=lambda r: -r[1])[:8] + sorted(results, key=lambda r: -r[2])[:8]
             + [r for r in results if r[0] in generated])
    for name, wall, rss, code in dict.fromkeys(shown):
        print(f"| {name} | {wall:.2f} | {rss:.2f} | {'hang' if code is None else code} |")
    if not results:
        sys.exit(f"no case matches {args.only!r}")
    worst_s, worst_gb = max(r[1] for r in results), max(r[2] for r in results)
    print(f"\nworst wall {worst_s:.2f} s, worst peak RSS {worst_gb:.2f} GiB; {len(over)} over a limit"
          + "".join(f"\n- over: {name}" for name, *_ in over))
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
