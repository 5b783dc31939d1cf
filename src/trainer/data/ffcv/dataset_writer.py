"""ffcv 1.0.2's DatasetWriter with a write loop of our own (ffcv's `_write_common`, made robust; hooked in by
trainer.compat.ffcv_writer_base): a failing writer process (out of disk, out of memory, any exception) or an
undecodable image is noticed and reported instead of leaving the parent waiting forever. ffcv is imported only when
`writer_class()` is called."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WriteFailed", "writer_class"]


def _guarded(errors: Any, work: Callable, *args: Any) -> None:
    """Run one of ffcv's writer jobs; an exception is reported on `errors` (ffcv's own loop would wait forever)."""
    try:
        work(*args)
    except BaseException as exc:  # OSError (out of disk), MemoryError, anything: the parent reports it
        errors.put((type(exc).__name__, getattr(exc, "errno", None), " ".join(str(exc).split())))
        os._exit(1)


class WriteFailed(Exception):
    pass


def writer_class() -> type:
    """ffcv's DatasetWriter with a loop that notices failing workers and undecodable images (defined lazily:
    ffcv is imported only when writing)."""
    import multiprocessing as mp

    from tqdm import tqdm

    from trainer.compat import FFCVMemoryAllocator, ffcv_writer_base

    class Writer(ffcv_writer_base()):
        def __init__(self, *args: Any, desc: str, progress: bool, fail_fast: bool, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.desc, self.progress, self.fail_fast = desc, progress, fail_fast
            self.bad_queue = mp.SimpleQueue()
            self.bad: list[tuple[int, str, str]] = []

        def _drain_bad(self) -> None:
            while not self.bad_queue.empty():
                self.bad.append(self.bad_queue.get())

        def write_loop(self, num_samples, queue_content, work_fn, extra_worker_args):  # ffcv's, made robust
            self.num_samples = num_samples
            self.prepare()
            processes: list[Any] = []
            try:
                work = mp.Queue()
                for todo in queue_content:
                    work.put(todo)
                for _ in range(self.num_workers):
                    work.put(None)
                allocations_queue = mp.Queue()
                done = mp.Value(ctypes.c_uint64, 0)
                allocator = FFCVMemoryAllocator(self.fname, self.data_region_start, self.page_size)
                errors = mp.SimpleQueue()
                args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations_queue)
                processes = [
                    mp.Process(target=_guarded, args=(errors, work_fn, *args, *extra_worker_args), daemon=True)
                    for _ in range(self.num_workers)
                ]
                for p in processes:
                    p.start()
                allocations: list[Any] = []
                finished = 0
                with tqdm(total=num_samples, desc=self.desc, unit=" images", disable=not self.progress) as bar:
                    while finished < len(processes):
                        self._drain_bad()
                        if not errors.empty():
                            raise WriteFailed(*errors.get())
                        if self.fail_fast and self.bad:
                            return
                        with contextlib.suppress(queue.Empty):
                            while True:
                                allocations.extend(allocations_queue.get(timeout=0.05))
                                finished += 1
                        bar.update(int(done.value) - bar.n)
                        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                        if dead and errors.empty() and finished < len(processes):
                            time.sleep(0.2)  # an error report may still be on its way
                            if errors.empty():
                                raise WriteFailed("WorkerDied", None, f"a writer process exited with code {dead[0]}")
                for p in processes:
                    p.join()
                self._drain_bad()
                self.finalize(allocations)
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return Writer
