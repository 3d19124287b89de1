"""Running a function over pairs in worker processes, in order, with a progress bar.

Workers are started with ``spawn`` (no inherited OpenCV thread pools or locks) and run
OpenCV single-threaded, so ``--workers K`` means K busy cores. On any error, Ctrl-C or
SIGTERM the pool is terminated at once instead of finishing the queue.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

import cv2
from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def _init_worker() -> None:
    cv2.setNumThreads(1)


def parallel_map(
    func: Callable[[Job], Result], jobs: Sequence[Job], *, workers: int, desc: str
) -> list[Result]:
    """``[func(job) for job in jobs]`` over ``workers`` processes (1: in this process)."""
    progress = {"total": len(jobs), "desc": desc, "unit": "pair", "leave": False, "disable": None}
    if workers <= 1 or len(jobs) <= 1:
        return [func(job) for job in tqdm(jobs, **progress)]
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(min(workers, len(jobs)), initializer=_init_worker)
    try:
        results = list(tqdm(pool.imap(func, jobs), **progress))
        pool.close()
        return results
    finally:
        pool.terminate()
        pool.join()
