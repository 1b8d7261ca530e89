"""A device-side routing buffer that feeds a window without a host sync per step.

:class:`RoutingRecorder` appends each step's top-k ids ``[tokens, layers, k]``
to a preallocated buffer on the ids' device (one slice copy: the token count
is a host-side shape, so nothing waits on the GPU). When the buffer is full
it starts one asynchronous device-to-host copy into pinned memory on a side
stream, records a CUDA event and switches to its second buffer; later steps
poll the event (``Event.query()`` never blocks) and hand the host rows to
the sink (for instance a rebalancer's ``observe``) once the copy has landed.
The engine thread blocks only when a full buffer's worth of steps has
passed and the previous copy still has not finished, or on :meth:`flush`.

Memory: two device buffers and two pinned host buffers of ``capacity x
layers x k`` ids each (int16: DeepSeek-V3's 58 MoE layers x 8 at 16,384
tokens is 14.5 MiB per buffer). Without CUDA (CPU tensors, numpy) the copy
is an ordinary synchronous copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from placer.engine_policies.inputs import EngineInputError, check_count

__all__ = ["RoutingRecorder", "Sink"]

Sink = Callable[[np.ndarray], None]
"""Receives top-k ids [tokens, layers, k] int16 (a view, valid during the call); padded tokens
(first id -1: both engines mask a padded token's ids to -1 throughout) are left out."""


class RoutingRecorder:
    """Double-buffered top-k accumulator on the ids' device (see the module docstring).

    layers: which layer columns of the recorded ids to keep (for example the
    MoE layers ``range(first_dense_layers, num_hidden_layers)``); None keeps
    all ``num_layers``. stride: keep every stride-th token (1 keeps all).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        num_layers: int,
        top_k: int,
        capacity: int = 16384,
        layers: Sequence[int] | None = None,
        stride: int = 1,
        device: object = None,
    ) -> None:
        import torch

        self._torch = torch
        self.sink = sink
        self.num_layers = check_count(num_layers, "num_layers", 1)
        self.top_k = check_count(top_k, "top_k", 1)
        self.capacity = check_count(capacity, "capacity", 1)
        self.stride = check_count(stride, "stride", 1)
        keep = list(range(self.num_layers)) if layers is None else [int(x) for x in layers]
        if not keep or min(keep) < 0 or max(keep) >= self.num_layers:
            raise EngineInputError("layers", f"expected layer indices in [0, {self.num_layers}), got {keep}")
        self.layers = keep
        self.device = torch.device(device if device is not None else "cpu")
        self._cuda = self.device.type == "cuda"
        shape = (self.capacity, len(keep), self.top_k)
        self._device = [torch.full(shape, -1, dtype=torch.int16, device=self.device) for _ in range(2)]
        self._host = [torch.empty(shape, dtype=torch.int16, pin_memory=self._cuda) for _ in range(2)]
        contiguous = keep == list(range(keep[0], keep[0] + len(keep)))
        self._layer_slice = slice(keep[0], keep[0] + len(keep)) if contiguous else None
        self._layer_index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._active = 0
        self._fill = 0
        self._pending: tuple[int, int, object] | None = None
        self.tokens_recorded = 0
        self.tokens_delivered = 0

    def record(self, topk_ids: object) -> None:
        """Append one step's ids [tokens, num_layers, k] (any integer dtype, on ``device``)."""
        ids = topk_ids if isinstance(topk_ids, self._torch.Tensor) else self._torch.as_tensor(np.asarray(topk_ids))
        if ids.ndim != 3 or ids.shape[1] != self.num_layers or ids.shape[2] != self.top_k:
            raise EngineInputError("topk_ids", f"expected [tokens, {self.num_layers}, {self.top_k}], "
                                   f"got {list(ids.shape)}")
        if self.stride > 1:
            ids = ids[:: self.stride]
        if self._layer_slice is not None:
            ids = ids[:, self._layer_slice]  # a view: the copy below is the only one
        else:
            ids = ids.index_select(1, self._layer_index.to(ids.device))
        for start in range(0, ids.shape[0], self.capacity):
            self._append(ids[start : start + self.capacity])
        self.poll()

    def _append(self, rows: object) -> None:
        """Copy up to ``capacity`` rows into the active buffer, switching buffers when it is full."""
        count = int(rows.shape[0])
        if self._fill + count > self.capacity:
            self._launch()
        target = self._device[self._active][self._fill : self._fill + count]
        target.copy_(rows, non_blocking=True)  # converts dtype and device in the one copy
        self._fill += count
        self.tokens_recorded += count

    def _launch(self) -> None:
        """Start copying the active buffer to the host; the other buffer becomes active."""
        if self._fill == 0:
            return
        if self._pending is not None:
            self._wait_and_deliver()
        index, fill = self._active, self._fill
        source, host = self._device[index][:fill], self._host[index][:fill]
        event = None
        if self._cuda:
            torch = self._torch
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                host.copy_(source, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
        else:
            host.copy_(source)
        self._pending = (index, fill, event)
        self._active, self._fill = 1 - index, 0

    def _wait_and_deliver(self) -> None:
        event = self._pending[2]
        if event is not None:
            event.synchronize()
        self._deliver()

    def _deliver(self) -> None:
        index, fill, _ = self._pending
        self._pending = None
        rows = self._host[index][:fill].numpy()
        real = rows[:, 0, 0] >= 0  # the engines mask a padded token's ids to -1 throughout
        if not real.all():
            rows = rows[real]
        self.sink(rows)
        self.tokens_delivered += int(rows.shape[0])

    def poll(self) -> bool:
        """Deliver a finished copy to the sink, never blocking; True when something was delivered."""
        if self._pending is None:
            return False
        event = self._pending[2]
        if event is not None and not event.query():
            return False
        self._deliver()
        return True

    def flush(self) -> None:
        """Copy out whatever is buffered and deliver it now (blocks on the copy)."""
        self._launch()
        if self._pending is not None:
            self._wait_and_deliver()
