"""`Loader`: ffcv's Loader made safe for Lightning (imports ffcv: import it after
trainer.data.ffcv.format.require_ffcv(), which keeps torch's threads as they were).

ffcv recycles `batches_ahead + 2` output buffers and assumes the consumer holds one batch; Lightning holds two (it
fetches the next batch before training on the current one), so one more buffer than the queue can fill is kept. The
epoch that seeds the order comes from the trainer, and QUASI_RANDOM no longer depends on how many orders were drawn
before (a resumed run reads the order the uninterrupted one would), `before_epoch` runs as each epoch's iterator is
made (the moment its buffers are sized: progressive resizing), an abandoned epoch's thread is stopped when the next
one starts, the buffers are reused from epoch to epoch while their shapes hold (ffcv makes new ones every epoch), the
pipeline is compiled again only when those shapes change (ffcv's `recompile=True` compiles it every epoch: about
1 s per epoch and process on the sample set, docs/data.md), and torch's thread count is left alone (ffcv sets it to
its loader threads).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ffcv.loader import Loader as _FFCVLoader
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order import QuasiRandom

from trainer.compat import FFCVEpochIterator, FFCVGraph, set_ffcv_compiler_torch

__all__ = ["Loader"]


class _TorchKeepingThreads:
    """torch, as ffcv's compiler module sees it, minus `set_num_threads` (ffcv would set torch's intra-op threads
    to its loader threads for the whole process, e.g. 1 for `data.num_workers=1`, slowing CPU training; the
    change made by importing ffcv is undone by trainer.data.ffcv.format.require_ffcv)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def set_num_threads(n: int) -> None:
        pass


set_ffcv_compiler_torch(_TorchKeepingThreads())


def _describe(requirements: Mapping[str, Mapping[int, Any]]) -> tuple:
    """The shapes, dtypes and devices of a pipeline's allocation queries (what its buffers must be)."""

    def one(query: Any) -> Any:
        if isinstance(query, AllocationQuery):
            return (tuple(int(d) for d in query.shape), str(query.dtype), str(query.device))
        if isinstance(query, Sequence):
            return tuple(one(q) for q in query)
        return None

    return tuple((kind, node, one(q)) for kind, queries in sorted(requirements.items()) for node, q in queries.items())


def _on_cuda(buffer: Any) -> bool:
    if isinstance(buffer, (tuple, list)):
        return any(_on_cuda(b) for b in buffer)
    return isinstance(buffer, torch.Tensor) and buffer.is_cuda


class _EpochIterator(FFCVEpochIterator):
    def start(self) -> None:
        # The Loader was built with one more batch ahead than asked (one more buffer); the queue keeps the asked
        # depth, so the producer never refills the buffer of the batch Lightning is still training on.
        self.output_queue = queue.Queue(max(1, self.loader.batches_ahead - 1))
        super().start()

    def close(self, timeout: float = 30.0) -> None:
        # ffcv's close() only asks the thread to stop; a thread that has finished its batches blocks forever
        # putting its end marker into a full queue. Drain the queue until the thread is gone.
        super().close()
        if threading.current_thread() is self or not self.is_alive():
            return
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    self.output_queue.get_nowait()
            self.join(0.05)


class Loader(_FFCVLoader):
    """ffcv's Loader, safe for a consumer that holds two batches (see the module docstring). `epoch` returns the
    epoch whose order to read next (the trainer's current epoch); `batches_ahead` is the prefetch depth."""

    def __init__(
        self,
        *args: Any,
        batches_ahead: int = 3,
        epoch: Callable[[], int] | None = None,
        before_epoch: Callable[[int], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, batches_ahead=int(batches_ahead) + 1, **kwargs)
        self._epoch = epoch
        self._before_epoch = before_epoch
        self._current: _EpochIterator | None = None
        self._buffers: tuple[Any, Any] | None = None  # (what they were made for, the buffers)
        self.graph.allocate_memory = self._allocate_memory
        # the buffers the pipeline's code was generated for (ffcv's __init__ generated it)
        self._compiled_for: tuple | None = _describe(self.graph.collect_requirements()[0])

    def _allocate_memory(self, batch_size: int, slots: int) -> Any:
        # ffcv allocates every buffer afresh for every epoch: gigabytes of new pages to fault in per epoch at
        # ImageNet sizes (several % of a fast epoch). The same buffers serve the next epoch when nothing about them
        # changed (a new resolution makes new ones); __iter__ has stopped the previous epoch's thread by then.
        requirements, _ = self.graph.collect_requirements()
        key = (batch_size, slots, _describe(requirements))
        if self._buffers is not None and self._buffers[0] == key:
            if any(_on_cuda(b) for kind in self._buffers[1].values() for b in kind.values()):
                torch.cuda.synchronize()  # every stream: the last epoch's copies and reads are done
            return self._buffers[1]
        buffers = FFCVGraph.allocate_memory(self.graph, batch_size, slots)
        self._buffers = (key, buffers)
        return buffers

    def __iter__(self) -> _EpochIterator:
        self.close()
        if self._epoch is not None:
            self.next_epoch = int(self._epoch())
        skip = 0
        if self._before_epoch is not None:  # the epoch's decoder size and seed; the batches a resumed run skips
            skip = int(self._before_epoch(self.next_epoch) or 0)
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        selected = order[: len(self) * self.batch_size][skip * self.batch_size :]  # skipped images are not read
        self.next_epoch += 1
        # ffcv recompiles every epoch with `recompile=True`; here the pipeline is compiled again only when what it
        # was compiled for changed: its buffers' shapes (a decoder's new output size, progressive resizing)
        compiled_for = _describe(self.graph.collect_requirements()[0])
        if self.code is None or self.recompile or compiled_for != self._compiled_for:
            self.generate_code()
            self._compiled_for = compiled_for
        self._current = _EpochIterator(self, selected)
        return self._current

    def next_traversal_order(self) -> Any:
        # ffcv 1.0.2's QuasiRandom shuffles its page table in place, so an epoch's order depended on how many
        # orders were drawn before it; drawn from the pristine table, the order is a function of (seed, epoch).
        order = self.traversal_order
        if isinstance(order, QuasiRandom):
            pristine = getattr(self, "_pristine_pages", None)
            if pristine is None:
                pristine = self._pristine_pages = order.page_to_samples_array.copy()
            order.page_to_samples_array = pristine.copy()
        return super().next_traversal_order()

    def close(self) -> None:
        """Stop the epoch being read, if any (its thread and buffers)."""
        if self._current is not None:
            self._current.close()
            if self._current.is_alive():  # a thread that would not stop keeps its buffers
                self._buffers = None
            self._current = None
