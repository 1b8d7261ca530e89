"""Routing traces: the in-memory model, the native ``.npz`` format, and its validation.

A trace records, for every token and every MoE layer, the ``k`` experts the
router chose (``topk_ids: [tokens, layers, k]``, ``-1`` = padding for a token
that chose fewer than ``k``). A trace on disk is one ``.npz`` file or a
directory of ``.npz`` shards joined in sorted file-name order; shards are read
one at a time so a trace larger than memory can be streamed
(:meth:`TraceSource.chunks`). All checks of untrusted arrays live here; code
that receives a :class:`Trace` trusts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numba
import numpy as np

from placer.atomic import atomic_output, write_text_atomic
from placer.checks import check_count, check_type
from placer.errors import InputError
from placer.inputs import MAX_JSON_BYTES, input_path, open_input, read_input_text
from placer.topology import MAX_EXPERTS

PADDING = -1
#: what numpy's .npy/.npz readers raise on corrupt input (header parsing, shapes, zip members;
#: RuntimeError: an encrypted member)
NUMPY_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    OverflowError,
    MemoryError,
    NotImplementedError,
    SyntaxError,
    RuntimeError,
    zipfile.BadZipFile,
    KeyError,
    tokenize.TokenError,
    zlib.error,
)
OPTIONAL_ARRAYS = ("topk_weights", "num_experts", "src_rank", "seq_lens", "layer_ids", "format_version")
#: native trace format version written; version 1 (no ``format_version`` member) had no layer ids
FORMAT_VERSION = 2
ARRAYS = ("topk_ids", *OPTIONAL_ARRAYS)
TRACE_ARRAYS = ("topk_weights", "src_rank", "seq_lens", "layer_ids")
"""The optional arrays a :class:`Trace` holds."""
#: largest GPU rank accepted in ``src_rank`` (ranks index per-GPU arrays)
MAX_RANK = 1 << 20
#: largest uncompressed/compressed size ratio of a large .npz member (real traces compress
#: 2-5x; a member of zeros compresses ~1000x: a decompression bomb)
MAX_COMPRESSION_RATIO = 200
#: members smaller than this are read whatever their ratio
BOMB_CHECK_BYTES = 64 << 20
BLOCK_TOKENS = 1 << 18
"""Tokens per block a trace is summarised in, whatever its storage (:func:`token_blocks`)."""


@dataclass(frozen=True)
class Trace:
    """Validated routing decisions.

    topk_ids: [tokens, layers, k] int16/int32, expert ids or -1 padding.
    topk_weights: [tokens, layers, k] float32 or None.
    src_rank: [tokens] int64, the GPU each token starts on, or None.
    seq_lens: [sequences] int64, tokens per sequence in order (sums to tokens), or None.
    layer_ids: [layers] int64, the model's decoder-layer index of each trace layer (strictly
        increasing; dense layers are absent), or None when the source did not record them.
    """

    topk_ids: np.ndarray
    num_experts: int
    topk_weights: np.ndarray | None = None
    src_rank: np.ndarray | None = None
    seq_lens: np.ndarray | None = None
    layer_ids: np.ndarray | None = None
    checked: bool = field(default=False, repr=False, compare=False)
    """True when built from arrays already validated (placer's own constructors); a Trace a
    caller builds is validated here (:func:`validate_arrays`), so nothing unchecked reaches
    compiled code."""

    def __post_init__(self) -> None:
        if self.checked:
            return
        check_count(self.num_experts, "num_experts", 1, MAX_EXPERTS)
        arrays = {name: getattr(self, name) for name in ("topk_ids", *TRACE_ARRAYS) if getattr(self, name) is not None}
        if any(not isinstance(value, np.ndarray) for value in arrays.values()):
            raise InputError(None, "trace", f"expected numpy arrays ({', '.join(('topk_ids', *TRACE_ARRAYS))})")
        valid = validate_arrays("trace", arrays, int(self.num_experts))
        for name in ("topk_ids", *TRACE_ARRAYS, "num_experts", "checked"):
            object.__setattr__(self, name, getattr(valid, name))

    @property
    def num_tokens(self) -> int:
        return int(self.topk_ids.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.topk_ids.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[2])

    def sequence_slice(self, first: int, stop: int) -> Trace:
        """The trace of sequences ``first..stop-1`` (needs ``seq_lens``)."""
        assert self.seq_lens is not None
        bounds = np.concatenate([[0], np.cumsum(self.seq_lens)])
        lo, hi = int(bounds[first]), int(bounds[stop])
        return replace(
            self,
            topk_ids=self.topk_ids[lo:hi],
            topk_weights=None if self.topk_weights is None else self.topk_weights[lo:hi],
            src_rank=None if self.src_rank is None else self.src_rank[lo:hi],
            seq_lens=self.seq_lens[first:stop],
        )


def concatenate(traces: list[Trace]) -> Trace:
    """Join traces token-wise; optional arrays are kept only if every part has them."""
    first = traces[0]

    def joined(name: str) -> np.ndarray | None:
        parts = [getattr(t, name) for t in traces]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    ids = [None if t.layer_ids is None else tuple(t.layer_ids.tolist()) for t in traces]
    if len(set(ids)) > 1:
        raise InputError(None, "layer_ids", f"parts record different layer ids {sorted(set(map(str, ids)))}")
    return Trace(
        topk_ids=np.concatenate([t.topk_ids for t in traces]),
        num_experts=max(t.num_experts for t in traces) if traces else first.num_experts,
        topk_weights=joined("topk_weights"),
        src_rank=joined("src_rank"),
        seq_lens=joined("seq_lens"),
        layer_ids=first.layer_ids,
        checked=True,
    )


def id_dtype(num_experts: int) -> np.dtype:
    """The smallest signed integer dtype holding ids ``-1..num_experts-1``."""
    return np.dtype(np.int16) if num_experts <= np.iinfo(np.int16).max else np.dtype(np.int32)


# ---------------------------------------------------------------- validation


def _integer_array(source: str, name: str, value: np.ndarray, ndim: int) -> np.ndarray:
    if value.dtype.kind not in "iu":
        raise InputError(source, name, f"expected an integer array, got dtype {value.dtype}")
    if value.ndim != ndim:
        raise InputError(source, name, f"expected {ndim} dimension(s), got shape {tuple(value.shape)}")
    return value


def _declared_num_experts(source: str, arrays: Mapping[str, np.ndarray]) -> int | None:
    if "num_experts" not in arrays:
        return None
    value = np.asarray(arrays["num_experts"])
    if value.dtype.kind not in "iu" or value.size != 1:
        raise InputError(source, "num_experts", "expected one integer (a scalar)")
    number = int(value.reshape(()))
    if number <= 0:
        raise InputError(source, "num_experts", f"expected a positive count, got {number}")
    return number


def validate_arrays(source: str, arrays: Mapping[str, np.ndarray], num_experts: int | None = None) -> Trace:
    """Check raw arrays (from a file or a caller) and build a :class:`Trace`.

    arrays: ``topk_ids`` [tokens, layers, k] plus the optional arrays of the format.
    num_experts: an expert count that overrides the file's (used for shards).
    Raises :class:`InputError` naming ``source`` and the field at fault.
    """
    if "topk_ids" not in arrays:
        raise InputError(source, "topk_ids", "missing (the native trace format requires it)")
    ids = _integer_array(source, "topk_ids", np.asarray(arrays["topk_ids"]), 3)
    tokens, layers, k = ids.shape
    if tokens == 0:
        raise InputError(source, "topk_ids", "holds zero tokens")
    if layers == 0 or k == 0:
        raise InputError(source, "topk_ids", f"expected layers > 0 and k > 0, got shape {ids.shape}")
    lowest = int(ids.min())
    if lowest < PADDING:
        raise InputError(source, "topk_ids", f"negative expert id {lowest} (only -1 is allowed, as padding)")
    highest = int(ids.max())
    declared = _declared_num_experts(source, arrays)
    experts = num_experts or declared or highest + 1
    if highest < 0:
        raise InputError(source, "topk_ids", "every entry is -1 padding: no routing decisions")
    if experts > MAX_EXPERTS:
        raise InputError(
            source,
            "num_experts" if num_experts or declared else "topk_ids",
            f"{experts:,} experts exceed placer's limit of {MAX_EXPERTS:,}",
        )
    if highest >= experts:
        where = np.argwhere(ids >= experts)[0]
        raise InputError(
            source,
            "topk_ids",
            f"expert id {highest} >= num_experts {experts} (first at token {where[0]}, layer {where[1]})",
        )
    ids = ids.astype(id_dtype(experts), copy=False)
    row = _first_repeat(ids.reshape(-1, k))
    if row >= 0:
        token, layer = divmod(row, layers)
        values, times = np.unique(ids[token, layer], return_counts=True)
        expert = int(values[(values != PADDING) & (times > 1)][0])
        raise InputError(
            source,
            "topk_ids",
            f"expert {expert} repeated within one token's top-k (token {token}, layer {layer})",
        )
    return Trace(
        topk_ids=ids,
        num_experts=experts,
        topk_weights=_weights(source, arrays, ids.shape),
        src_rank=_src_rank(source, arrays, tokens),
        seq_lens=_seq_lens(source, arrays, tokens),
        layer_ids=check_layer_ids(source, arrays.get("layer_ids"), layers),
        checked=True,
    )


def check_layer_ids(source: str, value: np.ndarray | None, layers: int) -> np.ndarray | None:
    """``layer_ids`` [layers]: non-negative, strictly increasing decoder-layer indices (or None)."""
    if value is None:
        return None
    ids = _integer_array(source, "layer_ids", np.asarray(value), 1)
    if ids.shape[0] != layers:
        raise InputError(source, "layer_ids", f"expected {layers} entries (one per trace layer), got {ids.shape[0]}")
    if ids.min() < 0 or (np.diff(ids) <= 0).any():
        raise InputError(
            source, "layer_ids", f"expected strictly increasing non-negative layer ids, got {ids.tolist()}"
        )
    return ids.astype(np.int64, copy=False)


def check_format_version(source: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """The ``format_version`` member, if any, is one this placer reads (1 or 2)."""
    if "format_version" not in arrays:
        return
    value = np.asarray(arrays["format_version"])
    if value.dtype.kind not in "iu" or value.size != 1 or int(value.reshape(())) not in (1, FORMAT_VERSION):
        raise InputError(
            source,
            "format_version",
            f"{value.tolist()!r} is not supported; this placer reads native trace versions 1 and {FORMAT_VERSION}",
        )


REPEAT_BLOCK = 1024
"""Rows per block of :func:`_first_repeat` (their columns stay in the L1 cache)."""


@numba.njit(nogil=True, cache=True)
def _first_repeat(rows):  # pragma: no cover - jitted
    """Index of the first row of rows: [n, k] holding an id (>= 0) twice, or -1. Each block's
    columns are compared pairwise, vectorised over the block's rows."""
    n, k = rows.shape
    cols = np.empty((k, REPEAT_BLOCK), rows.dtype)
    for lo in range(0, n, REPEAT_BLOCK):
        m = min(REPEAT_BLOCK, n - lo)
        for i in range(k):
            for t in range(m):
                cols[i, t] = rows[lo + t, i]
        hits = 0
        for i in range(k):
            for j in range(i + 1, k):
                for t in range(m):
                    hits += (cols[i, t] == cols[j, t]) & (cols[i, t] >= 0)
        if hits:
            for t in range(m):
                for i in range(k):
                    for j in range(i + 1, k):
                        if cols[i, t] >= 0 and cols[i, t] == cols[j, t]:
                            return lo + t
    return -1


def _weights(source: str, arrays: Mapping[str, np.ndarray], shape: tuple) -> np.ndarray | None:
    if "topk_weights" not in arrays:
        return None
    weights = np.asarray(arrays["topk_weights"])
    if weights.dtype.kind != "f":
        raise InputError(source, "topk_weights", f"expected a float array, got dtype {weights.dtype}")
    if weights.shape != shape:
        raise InputError(
            source,
            "topk_weights",
            f"shape {tuple(weights.shape)} does not match topk_ids shape {tuple(shape)}",
        )
    if not np.isfinite(weights).all():
        bad = np.argwhere(~np.isfinite(weights))[0]
        raise InputError(source, "topk_weights", f"NaN or infinite weight at token {bad[0]}, layer {bad[1]}")
    return weights.astype(np.float32, copy=False)


def _src_rank(source: str, arrays: Mapping[str, np.ndarray], tokens: int) -> np.ndarray | None:
    if "src_rank" not in arrays:
        return None
    ranks = _integer_array(source, "src_rank", np.asarray(arrays["src_rank"]), 1)
    if ranks.shape[0] != tokens:
        raise InputError(source, "src_rank", f"expected {tokens} entries (one per token), got {ranks.shape[0]}")
    if ranks.min() < 0:
        raise InputError(source, "src_rank", f"negative GPU rank {int(ranks.min())}")
    if int(ranks.max()) >= MAX_RANK:
        raise InputError(source, "src_rank", f"GPU rank {int(ranks.max()):,} exceeds placer's limit of {MAX_RANK:,}")
    return ranks.astype(np.int64, copy=False)


def _seq_lens(source: str, arrays: Mapping[str, np.ndarray], tokens: int) -> np.ndarray | None:
    if "seq_lens" not in arrays:
        return None
    lens = _integer_array(source, "seq_lens", np.asarray(arrays["seq_lens"]), 1)
    if lens.size == 0 or lens.min() <= 0:
        raise InputError(source, "seq_lens", "expected positive sequence lengths")
    if lens.size > tokens or int(lens.max()) > tokens:  # each length <= tokens: the sum cannot wrap
        raise InputError(
            source,
            "seq_lens",
            f"{lens.size:,} lengths up to {int(lens.max()):,} cannot sum to the trace's {tokens:,} tokens",
        )
    lens = lens.astype(np.int64, copy=False)
    total = int(lens.sum())
    if total != tokens:
        raise InputError(source, "seq_lens", f"lengths sum to {total:,}, but the trace has {tokens:,} tokens")
    return lens


# ---------------------------------------------------------------- files


@contextlib.contextmanager
def numpy_input(path: str | Path, what: str) -> Iterator[None]:
    """Around reading a numpy file: its warnings silenced, and whatever numpy raises on a
    corrupt file turned into an :class:`InputError` saying it is not a readable ``what``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except NUMPY_READ_ERRORS as err:
        raise InputError(path, None, f"not a readable {what} ({err.__class__.__name__}: {err})") from None


def _check_member(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a large member whose compression ratio only a decompression bomb reaches."""
    if info.file_size > BOMB_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise InputError(
            path,
            info.filename.removesuffix(".npy"),
            f"{info.file_size:,} bytes compressed into {info.compress_size:,}: refused as a "
            f"decompression bomb (ratio above {MAX_COMPRESSION_RATIO})",
        )


def _read_npz(path: Path, names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
    """The arrays ``names`` (default: the format's) that the .npz file holds; other members are
    never decompressed."""
    with (
        numpy_input(path, ".npz trace"),
        open_input(path, ".npz trace") as handle,
        np.load(handle, allow_pickle=False) as npz,
    ):
        if "format_version" in npz.files:
            check_format_version(path, {"format_version": npz["format_version"]})
        wanted = [name for name in npz.files if name in names]
        for name in wanted:
            _check_member(path, npz.zip.getinfo(f"{name}.npy"))
        return {name: npz[name] for name in wanted}


def _header_shape(path: Path) -> tuple[int, ...]:
    """Shape of ``topk_ids`` in an .npz shard, read from the array header only; the shape must
    account for exactly the bytes the member holds (a forged header cannot claim more)."""
    with numpy_input(path, ".npz trace"), open_input(path, ".npz trace") as handle, zipfile.ZipFile(handle) as archive:
        if "topk_ids.npy" not in archive.namelist():
            raise InputError(path, "topk_ids", "missing (the native trace format requires it)")
        info = archive.getinfo("topk_ids.npy")
        _check_member(path, info)
        with archive.open(info) as member:
            major, _ = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
            declared = math.prod(shape) * dtype.itemsize
            held = info.file_size - member.tell()
        if declared != held:
            raise InputError(
                path,
                "topk_ids",
                f"header declares shape {tuple(shape)} ({declared:,} bytes) but the file holds {held:,} bytes of data",
            )
        return tuple(shape)


MANIFEST = "placer-shards.json"
"""The file naming every shard of a complete shard set and its tokens (written last)."""
MANIFEST_FORMAT = "placer-shards"


def write_shard_manifest(folder: Path, shards: list[tuple[str, int]]) -> None:
    """Record ``(file name, tokens)`` of every shard of a complete set in ``folder``."""
    doc = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "tokens": sum(t for _, t in shards),
        "shards": [{"file": name, "tokens": tokens} for name, tokens in shards],
    }
    write_text_atomic(folder / MANIFEST, json.dumps(doc, indent=1) + "\n")


def _manifest(folder: Path) -> dict[str, int] | None:
    """``{file name: tokens}`` of the folder's manifest, None if it has none."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(read_input_text(path, "shard manifest JSON", MAX_JSON_BYTES))
        entries = {e["file"]: e["tokens"] for e in doc["shards"]} if doc.get("format") == MANIFEST_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        entries = None
    if entries is None or not all(isinstance(n, str) and type(t) is int and t > 0 for n, t in entries.items()):
        raise InputError(path, "shards", f"not a {MANIFEST_FORMAT} manifest (a list of file and tokens)")
    return entries


def check_shard_manifest(folder: Path, shards: list[Path]) -> None:
    """With a manifest, the folder must hold exactly the shards it lists (an interrupted or
    mixed set is refused); a folder without one is taken as it is."""
    listed = _manifest(folder)
    if listed is None:
        return
    names = {shard.name for shard in shards}
    missing, extra = sorted(set(listed) - names), sorted(names - set(listed))
    if missing:
        raise InputError(folder, MANIFEST, f"incomplete shard set: {missing[0]} is listed but missing")
    if extra:
        raise InputError(folder, MANIFEST, f"{extra[0]} is not in the shard set the manifest lists")


def check_shard_tokens(folder: Path, shards: list[Path], tokens: list[int]) -> None:
    """Each shard holds the tokens the folder's manifest (if any) records for it."""
    listed = _manifest(folder)
    for shard, count in zip(shards, tokens):
        if listed is not None and listed[shard.name] != count:
            raise InputError(
                shard,
                "topk_ids",
                f"{count:,} tokens; the shard manifest records {listed[shard.name]:,} (a truncated or replaced shard)",
            )


@dataclass(frozen=True)
class TraceChunk:
    """One shard of a trace with its position in the whole.

    token_offset: global row of the chunk's first token.
    sequence_offset: global index of the chunk's first sequence (0 if no seq_lens).
    """

    trace: Trace
    token_offset: int
    sequence_offset: int


class TraceSource:
    """A trace on disk (one .npz or a directory of shards), read shard by shard."""

    def __init__(self, path: str | Path) -> None:
        self.path = input_path(path, "trace")
        if self.path.is_dir():
            self.shards = sorted(self.path.glob("*.npz"))
            if not self.shards:
                raise InputError(self.path, None, "directory holds no .npz trace shards")
            check_shard_manifest(self.path, self.shards)
        elif self.path.exists():
            self.shards = [self.path]
        else:
            raise InputError(self.path, None, "no such file or directory")
        shapes = [_header_shape(shard) for shard in self.shards]
        if self.path.is_dir():
            check_shard_tokens(self.path, self.shards, [shape[0] if shape else 0 for shape in shapes])
        for shard, shape in zip(self.shards, shapes):
            if len(shape) != 3:
                raise InputError(shard, "topk_ids", f"expected 3 dimensions, got shape {shape}")
            if shape[1:] != shapes[0][1:]:
                raise InputError(
                    shard,
                    "topk_ids",
                    f"layers x k {shape[1:]} differs from the first shard's {shapes[0][1:]}",
                )
        self.shard_tokens = [int(shape[0]) for shape in shapes]
        self.num_tokens = sum(self.shard_tokens)
        self.num_layers, self.top_k = shapes[0][1], shapes[0][2]
        self._num_experts: int | None = None
        self._layer_ids: tuple[np.ndarray | None] | None = None
        self._digest: Any = None  # of the ids streamed so far, when asked for
        self._digested = 0

    @property
    def layer_ids(self) -> np.ndarray | None:
        """The shards' ``layer_ids`` [layers] (they must agree), or None if they record none."""
        if self._layer_ids is None:
            found = [_read_npz(shard, ("layer_ids",)).get("layer_ids") for shard in self.shards]
            ids = [
                None if f is None else check_layer_ids(str(s), f, self.num_layers) for s, f in zip(self.shards, found)
            ]
            if len({None if i is None else tuple(i.tolist()) for i in ids}) > 1:
                raise InputError(self.path, "layer_ids", "shards record different layer ids")
            self._layer_ids = (ids[0],)
        return self._layer_ids[0]

    @property
    def num_experts(self) -> int:
        """Declared by the shards (must agree) or, failing that, the largest id + 1."""
        if self._num_experts is None:
            self._num_experts = self._shard_num_experts()
        return self._num_experts

    def _shard_num_experts(self) -> int:
        """The count the shards declare (read alone, without the ids), else the largest id + 1
        (each shard's ids read and checked)."""
        declared: set[int] = set()
        for shard in self.shards:
            number = _declared_num_experts(str(shard), _read_npz(shard, ("num_experts",)))
            if number is not None:
                declared.add(number)
        if len(declared) > 1:
            raise InputError(self.path, "num_experts", f"shards declare different counts {sorted(declared)}")
        if declared:
            return declared.pop()
        return max(validate_arrays(str(shard), _read_npz(shard, ("topk_ids",))).num_experts for shard in self.shards)

    def read_shard(self, index: int) -> Trace:
        """Shard ``index`` read and validated (against the shards' common expert count)."""
        shard = self.shards[index]
        return validate_arrays(str(shard), _read_npz(shard), self.num_experts if len(self.shards) > 1 else None)

    def chunks(self) -> Iterator[TraceChunk]:
        """Validated shards in order, with their global token and sequence offsets."""
        token_offset = sequence_offset = 0
        present: dict[str, bool] = {}
        for index, shard in enumerate(self.shards):
            trace = self.read_shard(index)
            for name in ("seq_lens", "src_rank", "topk_weights"):
                has = getattr(trace, name) is not None
                if present.setdefault(name, has) != has:
                    raise InputError(shard, name, "present in some shards but not in others")
            tokens, sequences = trace.num_tokens, 0 if trace.seq_lens is None else len(trace.seq_lens)
            if self._digest is not None and self._digested == token_offset:
                _digest_ids(self._digest, trace.topk_ids)
                self._digested += tokens
            yield TraceChunk(trace, token_offset, sequence_offset)
            del trace  # not held while the next shard is read
            token_offset += tokens
            sequence_offset += sequences

    def load(self) -> Trace:
        """The whole trace in memory."""
        return concatenate([chunk.trace for chunk in self.chunks()])

    def digest_while_reading(self) -> None:
        """Digest the routing decisions as :meth:`chunks` streams them (the first pass in token
        order), so that :func:`trace_digest` after a whole pass needs no second read."""
        self._digest, self._digested = hashlib.sha256(), 0

    def streamed_digest(self) -> Any:
        """A copy of the digest of every token's ids, once a pass has streamed them all since
        :meth:`digest_while_reading`; else None."""
        complete = self._digest is not None and self._digested == self.num_tokens
        return self._digest.copy() if complete else None


def block_sizes(num_tokens: int) -> list[int]:
    """Tokens of each block :func:`token_blocks` cuts a ``num_tokens``-token trace into."""
    return [min(BLOCK_TOKENS, num_tokens - lo) for lo in range(0, num_tokens, BLOCK_TOKENS)]


def token_blocks(source: Trace | TraceSource) -> Iterator[Trace]:
    """The routing decisions in consecutive blocks of :data:`BLOCK_TOKENS` tokens (the last one
    shorter), whatever the shard boundaries: what is computed block by block depends on the
    tokens and their order only, never on how they are stored. Blocks carry ``topk_ids``
    ([block, layers, k]) and ``num_experts`` only; at most one shard and about one block are
    held."""
    block_tokens = BLOCK_TOKENS
    if isinstance(source, Trace):
        for lo in range(0, source.num_tokens, block_tokens):
            yield Trace(source.topk_ids[lo : lo + block_tokens], source.num_experts, checked=True)
        return
    pending: list[np.ndarray] = []
    held = 0
    for chunk in source.chunks():
        ids = chunk.trace.topk_ids
        del chunk
        while len(ids):
            take = min(block_tokens - held, len(ids))
            pending.append(ids[:take])
            held += take
            ids = ids[take:]
            if held == block_tokens:
                yield Trace(_joined(pending), source.num_experts, checked=True)
                pending, held = [], 0
        if pending:  # this shard's tail waits for the next shard: a copy, so the shard is released
            pending[-1] = pending[-1].copy()
        del ids  # an empty view still holds its shard too
    if pending:
        yield Trace(_joined(pending), source.num_experts, checked=True)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_block(source: Trace | TraceSource, index: int) -> Trace:
    """Block ``index`` of :func:`token_blocks`, reading only the shards it overlaps."""
    lo = index * BLOCK_TOKENS
    hi = min(lo + BLOCK_TOKENS, source.num_tokens)
    if isinstance(source, Trace):
        return Trace(source.topk_ids[lo:hi], source.num_experts, checked=True)
    parts, start = [], 0
    for shard, tokens in enumerate(source.shard_tokens):
        if start < hi and start + tokens > lo:
            ids = source.read_shard(shard).topk_ids
            parts.append(ids[max(lo - start, 0) : min(hi - start, tokens)])
        start += tokens
    return Trace(_joined(parts), source.num_experts, checked=True)


def chunk_count(source: Trace | TraceSource) -> int:
    """How many chunks ``source`` is read in (shards; an in-memory trace is one)."""
    return len(source.shards) if isinstance(source, TraceSource) else 1


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace file or shard directory into memory."""
    return TraceSource(path).load()


def save_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as a compressed native .npz (format version 2: ``layer_ids`` kept), atomically."""
    check_type(trace, "trace", Trace)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "topk_ids": trace.topk_ids,
        "num_experts": np.asarray(trace.num_experts, dtype=np.int64),
    }
    for name in ("topk_weights", "src_rank", "seq_lens", "layer_ids"):
        value = getattr(trace, name)
        if value is not None:
            arrays[name] = value
    with atomic_output(path) as handle:
        np.savez_compressed(handle, **arrays)


def trace_digest(source: Trace | TraceSource) -> str:
    """SHA-256 of the routing decisions (ids as little-endian int32, token-major, plus num_experts).

    Anything else with a ``counts`` array (expert load counts) is digested as int64 counts.
    """
    if hasattr(source, "counts"):
        return hashlib.sha256(np.ascontiguousarray(source.counts, dtype="<i8").tobytes()).hexdigest()
    digest = source.streamed_digest() if isinstance(source, TraceSource) else None
    if digest is None:  # no whole pass has digested the ids: read them
        digest = hashlib.sha256()
        for chunk in source.chunks() if isinstance(source, TraceSource) else [TraceChunk(source, 0, 0)]:
            _digest_ids(digest, chunk.trace.topk_ids)
    digest.update(str(source.num_experts).encode())
    return digest.hexdigest()


def _digest_ids(digest: Any, ids: np.ndarray) -> None:
    """Add ``ids`` [tokens, layers, k] to ``digest`` as little-endian int32, token-major."""
    for start in range(0, len(ids), 1 << 16):  # slices: no whole-shard int32 copy
        digest.update(np.ascontiguousarray(ids[start : start + (1 << 16)], dtype="<i4").tobytes())
