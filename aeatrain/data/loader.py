"""The training stream: endless batches of paired random crops, for step-based DDP training.

:func:`train_loader` cuts LR and HR at the same place (optionally with the same D4
flip/rotation on both, aeatrain/data/d4.py) from the training regions of any source
(aeatrain/data/sources.py). How it reads, and why:

- A reader opens ``manifest.json`` and the build-time index of each train shard, nothing
  else, before the first batch (aeatrain/data/manifest.py); each member is checked
  against its index's sha256 when it is read.
- Decoding PNGs is the cost (~12 ms per 960x944 region image on one core), cropping is
  cheap. So regions are decoded into a *pool* and each pool serves ``crops_per_region``
  crops per region before it is replaced. The schedule is fixed in steps: pool epoch
  ``e`` covers steps ``[e * P, (e + 1) * P)`` with ``P = ceil(pool_size *
  crops_per_region / batch_size)``. Decoded regions also stay in a cache (``cache_mib``)
  across pools, so a dataset of the paper's size is decoded once, as the published code
  holds every image in memory.
- Everything random is drawn from ``numpy.random.default_rng([seed, rank, stream, n])``
  with ``n`` the pool epoch (which regions) or the step (which crops, which D4 op). So the
  batch at step ``s`` on rank ``r`` is a pure function of (dataset, seed, s, r, settings):
  a run resumed at ``start_step`` sees exactly the batches an uninterrupted run would, and
  the number of worker threads or where the bytes come from changes nothing.
- Node splitting: NONE, on purpose. Every rank draws regions, with replacement, from every
  region of every shard, with its own RNG stream (seeded by its rank). Ranks therefore see
  different crops, never run dry and never wait for each other, even with fewer shards than
  ranks (the paper's 22 pairs fit in ONE train shard). This is webdataset's "resampled
  shards" done per region instead of per shard, so a pool mixes pairs from every shard.
- ``num_workers`` threads split the work by pool epoch: worker ``w`` of ``W`` makes
  every batch of epochs ``e0 + w, e0 + w + W, ...``, handed back in epoch order, so the
  trainer's thread only takes finished batches (why threads and not DataLoader
  processes: :func:`_threaded_batches`).
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import statistics
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count

import numpy as np
import torch

from aeatrain.data import d4
from aeatrain.data.format import DatasetError
from aeatrain.data.manifest import check_pairs
from aeatrain.data.sources import DataSource, IndexedRegion, decode_pair, resolve, scan
from aeatrain.files.images import to_float

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 8
MAX_CROPS_PER_REGION = 16
DEFAULT_CACHE_MIB = 512  # decoded regions kept per loader: the paper's 22 pairs need ~40

# Separate RNG streams so the region choice and the crop choice never share draws.
_POOL_STREAM = 0
_CROP_STREAM = 1


@dataclass(frozen=True)
class _TrainSettings:
    """Everything the batch at a step depends on, besides the dataset and the step."""

    seed: int
    rank: int
    batch_size: int
    crop_hw: tuple[int, int]
    augment: bool
    pool_size: int
    crops_per_region: int
    pin_memory: bool = False  # where the batch lives (page-locked host memory), not its values

    @property
    def steps_per_pool(self) -> int:
        return max(1, math.ceil(self.pool_size * self.crops_per_region / self.batch_size))


def _pool_plan(
    settings: _TrainSettings, n_regions: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (region index per pool slot (pool_size,), slot per crop of the epoch (P * B,)).

    Regions are drawn with replacement from all regions (no node splitting, see the module
    docstring); every slot serves ``crops_per_region`` crops, in a shuffled order.
    """
    rng = np.random.default_rng([settings.seed, settings.rank, _POOL_STREAM, epoch])
    regions = rng.integers(0, n_regions, size=settings.pool_size)
    crops = settings.steps_per_pool * settings.batch_size
    slots = rng.permutation(np.arange(crops) % settings.pool_size)
    return regions, slots


def _crop_draws(settings: _TrainSettings, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (fractional offsets (B, 2) in [0, 1) as (y, x), D4 op (B,)) for one step."""
    rng = np.random.default_rng([settings.seed, settings.rank, _CROP_STREAM, step])
    fractions = rng.random((settings.batch_size, 2))
    ops = rng.integers(0, 8, size=settings.batch_size)  # drawn even without augment
    return fractions, ops


def crop_origin(region_hw: tuple[int, int], crop_hw: tuple[int, int], fraction) -> tuple[int, int]:
    """Top-left (y0, x0) of a crop inside a region, from fractions in [0, 1): uniform."""
    y0 = int(fraction[0] * (region_hw[0] - crop_hw[0] + 1))
    x0 = int(fraction[1] * (region_hw[1] - crop_hw[1] + 1))
    return y0, x0


def _decode_regions(regions: Sequence[IndexedRegion], wanted: Sequence[int]) -> dict[int, tuple]:
    """Decode regions: index -> (lr, hr) (H, W) uint8|uint16; each shard opened once and
    only the wanted samples' images read."""
    by_url: dict[str, list[int]] = {}
    for index in wanted:
        by_url.setdefault(regions[index].url, []).append(index)
    decoded = {}
    for indices in by_url.values():
        shard = regions[indices[0]].shard
        with shard.open() as reader:
            for index in indices:
                region = regions[index]
                files = shard.read(reader, region.sample, ("lr.png", "hr.png"))
                decoded[index] = decode_pair(shard.url, region.key, files)
                if decoded[index][0].shape != (region.height, region.width):
                    raise DatasetError(
                        f"{shard.url}: sample {region.key} is {decoded[index][0].shape[::-1]} "
                        f"pixels, its index says {region.width}x{region.height}"
                    )
    return decoded


class IndexedRegionCache:
    """Decoded regions kept across pools, least recently used out first, up to a byte budget.

    A pool redraws regions every few steps; a small dataset (the paper's 22 pairs are
    ~40 MB decoded at 8 bit) then stays decoded, as the published code keeps every image
    in memory, while a large one costs at most ``capacity_bytes``. Only speed depends on
    the cache, never which pixels a step gets. Shared by the worker threads: two may
    decode the same missing region at once (wasted work, same result), never corrupt it.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.entries: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def fetch(self, regions: Sequence[IndexedRegion], chosen: Sequence[int]) -> dict[int, tuple]:
        """Index -> (lr, hr) for every chosen region, decoding only the missing ones."""
        wanted = sorted({int(i) for i in chosen})
        with self.lock:
            pool = {i: self.entries[i] for i in wanted if i in self.entries}
            for index in pool:
                self.entries.move_to_end(index)
        fresh = _decode_regions(regions, [i for i in wanted if i not in pool])  # no lock held
        with self.lock:
            for index, pair in fresh.items():
                self._put(index, pair)
        return {**pool, **fresh}

    def _put(self, index: int, pair: tuple[np.ndarray, np.ndarray]) -> None:
        if index in self.entries:
            return
        self.entries[index] = pair
        self.bytes += sum(image.nbytes for image in pair)
        while self.bytes > self.capacity_bytes and self.entries:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= sum(image.nbytes for image in evicted)


@dataclass(frozen=True)
class _Pool:
    """The decoded regions of one pool epoch and which slot serves which crop."""

    epoch: int
    chosen: np.ndarray  # (pool_size,) region index per slot
    slots: np.ndarray  # (steps_per_pool * batch_size,) slot per crop
    images: dict[int, tuple[np.ndarray, np.ndarray]]  # region index -> (lr, hr)


def _batch_tensors(shape: tuple[int, ...], pinned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's LR and HR float32 tensors, to be filled through ``.numpy()``.

    Pinned ones come from torch's caching host allocator, which holds each block until
    the asynchronous copy to the GPU that reads it has finished; a numpy array wrapped
    by ``torch.from_numpy`` would not be tracked so.
    """
    if pinned:
        return tuple(torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in "lh")
    return tuple(torch.from_numpy(np.empty(shape, np.float32)) for _ in "lh")


def _make_batch(
    pool: _Pool, regions: list[IndexedRegion], settings: _TrainSettings, step: int
) -> dict:
    """The batch of ``step`` from its pool epoch: crop, D4, scale to [0, 1]."""
    height, width = settings.crop_hw
    batch = settings.batch_size
    lr_batch, hr_batch = _batch_tensors((batch, 1, height, width), settings.pin_memory)
    lr_out, hr_out = lr_batch.numpy(), hr_batch.numpy()  # (B, 1, h, w), filled in place
    fractions, ops = _crop_draws(settings, step)
    first = (step - pool.epoch * settings.steps_per_pool) * batch
    names, boxes = [], np.zeros((batch, 3), np.int64)
    for i in range(batch):
        index = int(pool.chosen[pool.slots[first + i]])
        lr, hr = pool.images[index]
        y0, x0 = crop_origin(lr.shape, (height, width), fractions[i])
        op = int(ops[i]) if settings.augment else 0
        op = op if height == width else d4.shape_preserving(op)
        for source, out in ((lr, lr_out), (hr, hr_out)):
            view = d4.transform(source[y0 : y0 + height, x0 : x0 + width], op)
            to_float(view, out=out[i, 0])  # 8 and 16 bit: each by its own maximum
        names.append(regions[index].pair)
        boxes[i] = (x0, y0, op)
    return {
        "lr": lr_batch,
        "hr": hr_batch,
        "pair": names,
        "step": step,
        "crop": torch.from_numpy(boxes),  # (B, 3): x0, y0 in the region, D4 op
    }


class _TrainEpochs:
    """The training stream cut into pool epochs of ``steps_per_pool`` steps."""

    def __init__(
        self,
        regions: list[IndexedRegion],
        settings: _TrainSettings,
        start_step: int,
        cache_bytes: int,
    ):
        self.regions = regions
        self.settings = settings
        self.start_step = start_step
        self.first_epoch = start_step // settings.steps_per_pool
        self.cache = IndexedRegionCache(cache_bytes)

    def epoch_batches(self, epoch: int) -> Iterator[dict]:
        """The batches of one pool epoch, from ``start_step`` on; decodes when started."""
        chosen, slots = _pool_plan(self.settings, len(self.regions), epoch)
        pool = _Pool(epoch, chosen, slots, self.cache.fetch(self.regions, chosen))
        first = epoch * self.settings.steps_per_pool
        for step in range(max(first, self.start_step), first + self.settings.steps_per_pool):
            yield _make_batch(pool, self.regions, self.settings, step)


def _batches(epochs: _TrainEpochs, num_workers: int) -> Iterator[dict]:
    """Batches from ``start_step`` on, made here or by ``num_workers`` threads."""
    if num_workers > 0:
        yield from _threaded_batches(epochs, num_workers)
    else:
        for epoch in count(epochs.first_epoch):
            yield from epochs.epoch_batches(epoch)


def _threaded_batches(epochs: _TrainEpochs, workers: int) -> Iterator[dict]:
    """Worker ``w`` makes every batch of epochs ``first + w, first + w + W, ...``.

    Threads, not DataLoader processes: decoding (OpenCV) and converting (numpy) release
    the GIL, so threads run in parallel, share one region cache, and hand batches over
    without the trip through shared memory that process workers pay (a process variant
    of this loader, 2 workers, gave 146 crops/s of 256^2 where these threads give 961,
    and cost the trainer's thread 340 us per crop where these cost it 4; docs/
    benchmarks.md). Signals reach only the main thread, so the trainer's preemption
    handler is never bypassed, and daemon threads never hold up exit. Each worker keeps
    at most one finished epoch ready; closing this generator stops them.
    """
    handoff = [queue.Queue(maxsize=1) for _ in range(workers)]
    stop = threading.Event()
    threads = []
    for worker in range(workers):
        args = (epochs, worker, workers, handoff[worker], stop)
        name = f"aeatrain-loader-{worker}"
        threads.append(threading.Thread(target=_produce, args=args, name=name, daemon=True))
    live = (stop, tuple(threads))
    with _live_lock:
        _live_streams.add(live)
    for thread in threads:
        thread.start()
    try:
        for turn in count():
            item = handoff[turn % workers].get()
            if isinstance(item, BaseException):
                raise item  # a DatasetError stays one line; a bug keeps its traceback
            yield from item
    finally:
        # Stop AND join: a daemon thread still inside OpenCV or torch when the interpreter
        # exits can abort the process ("terminate called without an active exception").
        stop.set()
        for thread in threads:
            thread.join(timeout=_JOIN_SECONDS)
        with _live_lock:
            _live_streams.discard(live)


_JOIN_SECONDS = 60  # one batch at most: workers check the stop flag between batches
_live_streams: set = set()  # (stop flag, worker threads) of every stream not yet closed
_live_lock = threading.Lock()


@atexit.register
def _stop_live_streams() -> None:
    """At exit, stop and join the workers of streams nobody closed (a process that ends
    after ``next(stream)``): atexit runs while the interpreter is whole, and a worker
    still inside OpenCV or torch when it is torn down can abort the process."""
    with _live_lock:
        live = list(_live_streams)
    for stop, _ in live:
        stop.set()
    for _, threads in live:
        for thread in threads:
            thread.join(timeout=_JOIN_SECONDS)


def _produce(epochs: _TrainEpochs, worker: int, workers: int, out: queue.Queue, stop) -> None:
    """A worker thread's loop: whole epochs into ``out`` until ``stop`` is set (checked
    between batches, so a closed stream stops its workers within one batch)."""
    try:
        for epoch in count(epochs.first_epoch + worker, workers):
            batches = []
            for batch in epochs.epoch_batches(epoch):
                if stop.is_set():
                    return
                batches.append(batch)
            if not _hand_over(out, batches, stop):
                return
    except Exception as err:  # the consumer raises it in the trainer's thread
        _hand_over(out, err, stop)


def _hand_over(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` once there is room; False when told to stop first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _crop_hw(
    crop_size: int | None, regions: list[IndexedRegion], where: str, multiple: int
) -> tuple[int, int]:
    """Check the crop size against the smallest training region and the model's input
    multiple; None = the whole region, floored to the multiple."""
    smallest = min(regions, key=lambda r: min(r.height, r.width))
    if crop_size is None:
        height = min(r.height for r in regions) // multiple * multiple
        width = min(r.width for r in regions) // multiple * multiple
        return height, width
    if crop_size <= 0 or crop_size % multiple:
        raise DatasetError(f"crop_size {crop_size} is not a positive multiple of {multiple}")
    if crop_size > min(smallest.height, smallest.width):
        raise DatasetError(
            f"crop_size {crop_size} is larger than the training region of pair "
            f"{smallest.pair!r} ({smallest.width}x{smallest.height}) in {where}"
        )
    return crop_size, crop_size


def default_crops_per_region(regions: Sequence[IndexedRegion], crop_hw: tuple[int, int]) -> int:
    """Crops a decoded region serves: about its area over the crop's, at most 16.

    So a decode's pixels are used about once: 14 crops of 256^2 from a 944x960 region, 3
    of 512^2, 1 of the whole region (more would repeat the same picture).
    """
    area = statistics.median(r.height * r.width for r in regions)
    return max(1, min(MAX_CROPS_PER_REGION, round(area / (crop_hw[0] * crop_hw[1]))))


def train_loader(
    source: DataSource,
    *,
    crop_size: int | None,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    augment: bool = False,
    pairs: Sequence[str] | None = None,
    num_workers: int = 0,
    crops_per_region: int | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    cache_mib: float = DEFAULT_CACHE_MIB,
    cache_dir: str | None = None,
    pin_memory: bool = False,
    input_multiple: int = 1,
) -> Iterator[dict]:
    """Endless batches of paired crops from the training regions, starting at ``start_step``.

    Each batch: ``{"lr": float32 (B, 1, h, w) in [0, 1], "hr": same, "pair": list[str],
    "step": int, "crop": int64 (B, 3) [x0, y0, d4 op]}``.

    - ``input_multiple``: the model's (``aeatrain.models.input_multiple``); crop sides
      must be multiples of it. ``crop_size`` None takes the whole training region
      (floored to that multiple; the smallest region when pairs differ); rotations by 90
      degrees are only drawn for square crops.
    - ``crops_per_region`` None: see :func:`default_crops_per_region`.
    - ``cache_mib`` bounds the decoded regions this loader keeps across pools (0:
      decode every pool afresh); it changes speed, never data.
    - ``cache_dir``: a node-local folder into which each shard used is staged once
      (aeatrain/data/shardio.py); None reads shards where they are. Speed, never data.
    - 8- and 16-bit pairs both map to [0, 1] by their own maximum, through
      ``aeatrain.files.images.to_float`` (the conversion evaluation and prediction use).
    - The batch at step s on this rank is a pure function of (dataset, seed, s, rank,
      crop/augment/pool settings), whatever ``start_step`` and ``num_workers``; see the
      module docstring for the design.
    - ``world_size`` only checks ``rank``: ranks never split the data, they draw from
      all of it with different random streams.
    - ``num_workers`` > 0: that many background threads make batches ahead (see
      :func:`_threaded_batches`); 0: batches are made when asked for.
    - ``pin_memory``: batches in page-locked memory (needs CUDA), so that a
      ``.to("cuda", non_blocking=True)`` runs while the GPU computes.
    """
    if batch_size < 1 or pool_size < 1 or not 0 <= rank < world_size or start_step < 0:
        raise ValueError(
            f"bad loader settings: batch_size={batch_size} pool_size={pool_size} "
            f"rank={rank} world_size={world_size} start_step={start_step}"
        )
    shards, manifest = resolve(source, "train", cache_dir)
    where = manifest.path if manifest is not None else shards[0].url
    regions = scan(shards)
    if not regions:
        raise DatasetError(f"{where}: no training samples")
    wanted = check_pairs(pairs, sorted({r.pair for r in regions}), where)
    chosen = set(wanted)
    regions = [r for r in regions if r.pair in chosen]
    crop_hw = _crop_hw(crop_size, regions, where, input_multiple)
    if crops_per_region is None:
        crops_per_region = default_crops_per_region(regions, crop_hw)
    settings = _TrainSettings(
        seed, rank, batch_size, crop_hw, augment, pool_size, max(1, crops_per_region), pin_memory
    )
    log.info(
        "training stream (rank %d): %d regions of %d pairs, crops %dx%d, pool of %d regions "
        "renewed every %d steps, %d workers",
        rank, len(regions), len(wanted), crop_hw[1], crop_hw[0], pool_size,
        settings.steps_per_pool, num_workers,
    )  # fmt: skip
    epochs = _TrainEpochs(regions, settings, start_step, cache_bytes=int(cache_mib * 2**20))
    return _batches(epochs, num_workers)
