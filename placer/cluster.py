"""Summaries and solves on a Dask cluster (``--scheduler ADDRESS`` or ``--scheduler local:N``).

Dask (``dask.distributed``) is an optional extra and is imported only here, only when a
scheduler is asked for. What runs where:

* workers: each trace shard is opened *by path* on a worker, validated and summarised
  (:func:`placer.graph.summarize` of the one shard); the shard summaries are merged on
  workers, layer by layer in parallel, each layer in the merge tree of the in-process path
  (:func:`placer.graph.merge_in_order`: same order, same pairs, ``TraceSummary.merge``, the
  same streaming cap), so the result is the one ``summarize`` gives, byte for byte;
* workers: any pure function mapped over items (:meth:`Cluster.map`), e.g. the per-layer
  solves of :func:`placer.solvers.place`, results in item order;
* client: the last merged summary, building the per-layer problems, writing outputs.

Workers must see the shard paths the client names (a shared filesystem) and run the
same placer version.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from placer.errors import InputError
from placer.graph import TraceSummary, merge_in_order, summarize
from placer.trace import TraceSource

T = TypeVar("T")
R = TypeVar("R")

LOCAL = "local:"
#: seconds to wait for a scheduler (and, for ``local:N``, its workers) before giving up
CONNECT_TIMEOUT = 10.0
FIELD = "scheduler"
#: Dask's nannies set this for their workers; it makes glibc map and unmap every large
#: array, which slows placer's summaries and merges (merges ~1.7x), so local:N unsets it
TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _shard_layers(source: TraceSource, index: int, layer_ids: tuple[int, ...], max_nets: int | None
                  ) -> list[TraceSummary]:
    """Runs on a worker: read, validate and summarise shard ``index`` of ``source`` (capped to
    ``max_nets`` sets per layer if given); one single-layer summary per layer (layers merge
    independently, so in parallel)."""
    summary = summarize(source.read_shard(index), layer_ids, max_nets=max_nets)
    return [replace(summary, layer_ids=(i,), layers=(layer,)) for i, layer in zip(layer_ids, summary.layers)]


def _joined(parts: list[TraceSummary]) -> TraceSummary:
    """The summary of all layers of single-layer summaries of the same tokens."""
    return replace(parts[0], layer_ids=tuple(i for part in parts for i in part.layer_ids),
                   layers=tuple(layer for part in parts for layer in part.layers))


class Cluster:
    """A client of a Dask scheduler; ``local_cluster`` is the one it started for ``local:N``."""

    def __init__(self, client: Any, local_cluster: Any = None) -> None:
        self.client = client
        self.local_cluster = local_cluster

    @property
    def workers(self) -> int:
        """Workers connected now."""
        return len(self.client.scheduler_info()["workers"])

    def wait_for_workers(self, spec: str, timeout: float) -> None:
        """Wait until one worker is connected; InputError after ``timeout`` seconds."""
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            message = f"no worker joined the Dask scheduler within {timeout:g} s"
            raise InputError(spec, FIELD, message) from None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(item) for item in items]`` as one Dask task per item (``fn`` must be pure and
        importable on the workers); the items are scattered to workers, not put in the graph."""
        if not items:
            return []
        data = self.client.scatter(list(items), hash=False)
        return self.client.gather(self.client.map(fn, data, pure=False))

    def submit(self, fn: Callable[..., R], *args: Any) -> Any:
        """``fn(*args)`` as one task; returns its future (``.result()`` waits for it)."""
        return self.client.submit(fn, *args, pure=False)

    def summarize(self, source: TraceSource, layers: Sequence[int] | None = None, max_nets: int | None = None
                  ) -> TraceSummary:
        """:func:`placer.graph.summarize` of ``source`` (with the same ``max_nets`` cap) with the
        shards summarised and merged on the workers (identical result). Workers open the shard
        files themselves."""
        layer_ids = tuple(range(source.num_layers)) if layers is None else tuple(int(i) for i in layers)
        _ = source.num_experts  # computed once here (declared counts), shipped with ``source``

        def shard(index: int) -> list[Any]:  # submitted lazily, so each part is released once merged
            layers = self.submit(_shard_layers, source, index, layer_ids, max_nets)
            return [self.submit(operator.getitem, layers, i) for i in range(len(layer_ids))]

        def merge(first: list[Any], second: list[Any]) -> list[Any]:
            return [self.submit(TraceSummary.merge, a, b, max_nets) for a, b in zip(first, second)]

        parts = zip(source.shard_tokens, map(shard, range(len(source.shards))))
        return _joined(self.client.gather(merge_in_order(parts, merge, fold=max_nets is not None)))

    def close(self) -> None:
        self.client.close()
        if self.local_cluster is not None:
            self.local_cluster.close()


def _local_workers(spec: str) -> int:
    count = spec.removeprefix(LOCAL)
    if not count.isdigit() or int(count) <= 0:
        raise InputError(None, FIELD, f"expected local:N with N a positive worker count, got {spec!r}")
    return int(count)


@contextmanager
def connect(spec: str, timeout: float = CONNECT_TIMEOUT) -> Iterator[Cluster]:
    """A :class:`Cluster` for a scheduler address (``tcp://host:8786``) or ``local:N`` (a local
    cluster of N single-threaded worker processes, closed on exit).

    Raises InputError (field ``scheduler``) when Dask is not installed, ``local:N`` is
    malformed, the scheduler cannot be reached or no worker joins it within ``timeout`` seconds.
    """
    local = spec.startswith(LOCAL)
    workers = _local_workers(spec) if local else 0
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(None, FIELD, "needs Dask: pip install 'placer[dask]'") from None
    local_cluster = None
    try:
        if local:
            with dask.config.set({TRIM: None}):
                local_cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    silence_logs=logging.ERROR,
                )
        client = Client(local_cluster or spec, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        if local_cluster is not None:
            local_cluster.close()
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        message = f"cannot reach the Dask scheduler within {timeout:g} s ({reason})"
        raise InputError(spec, FIELD, message) from None
    cluster = Cluster(client, local_cluster)
    try:
        cluster.wait_for_workers(spec, timeout)
        yield cluster
    finally:
        cluster.close()
