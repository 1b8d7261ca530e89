"""A short, deterministic run of the importer fuzzer (benchmarks/fuzz_importers.py runs the long campaign)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from placer.errors import InputError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_importers.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_importers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def every_target(fuzz, tmp_path_factory):
    return fuzz.targets(tmp_path_factory.mktemp("seeds"))


def test_every_importer_has_seeds_that_load(every_target, fuzz):
    names = {t.name for t in every_target}
    assert {"npz", "shards", "esft", "megatron", "vllm", "counts", "topology", "model", "placement"} <= names
    for target in every_target:
        valid = [s for s in target.seeds if "hostile" not in s.parts]
        assert valid, target.name
        for seed in valid:
            assert fuzz.run_one(target, seed, timeout=60) == ("loaded", None), (target.name, seed)


def test_mutations_change_bytes_and_reach_inside_zip_members(fuzz):
    import io
    import random
    import zipfile

    rng = random.Random(0)
    data = bytes(range(64)) * 4
    assert any(fuzz.mutate(data, rng, []) != data for _ in range(5))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("a.npy", data)
    mutated = [fuzz._mutate_zip(packed.getvalue(), rng) for _ in range(20)]
    readable = [m for m in mutated if m is not None and zipfile.ZipFile(io.BytesIO(m)).testzip() is None]
    assert len(readable) == 20  # re-zipped with valid checksums, so parsers behind the container are reached


def test_short_campaign_finds_no_crash(fuzz, every_target, tmp_path):
    tallies = fuzz.campaign(every_target, seconds=120, iterations=25, seed=0, timeout=30, out=tmp_path / "found",
                            work=tmp_path / "work")
    assert all(t.tried == 25 for t in tallies.values())
    crashes = {name: dict(t.crashes) for name, t in tallies.items() if t.crashes or t.hangs}
    assert not crashes, (crashes, fuzz.table(tallies))


def test_a_crash_is_reported_not_hidden(fuzz, tmp_path):
    def broken(path: Path) -> None:
        if path.read_bytes()[:1] == b"x":
            raise InputError(path, None, "refused")
        raise IndexError("bug")

    (tmp_path / "seed.bin").write_bytes(b"xyz")
    target = fuzz.Target("broken", (tmp_path / "seed.bin",), broken)
    tallies = fuzz.campaign([target], seconds=60, iterations=30, seed=1, timeout=5, out=tmp_path / "found",
                            work=tmp_path / "work")
    assert tallies["broken"].crashes and tallies["broken"].refused
    assert any(p.name.endswith(".traceback.txt") for p in (tmp_path / "found").iterdir())
