"""Bytes of dataset files wherever they are: local paths, ``http(s)://`` URLs, ``pipe:``.

The readers (aeatrain/data/sources.py) ask for exactly the members they decode, by the
byte offsets of the shard index (aeatrain/data/format.py), through :func:`open_shard`:

- a local shard is opened and read at those offsets;
- an ``http(s)://`` shard gets one range request per sample (its members lie next to
  each other in the tar), so a rank downloads only what it decodes, never whole shards;
- with a cache folder (``data.cache_dir``, node-local disk), each shard is staged whole
  into it ONCE, by whichever process of the node gets there first (a file lock keeps
  the others waiting), checked against the manifest's sha256 on arrival and again by
  each process that finds it there (a damaged copy is fetched again, once), and read
  locally from then on; webdataset's ``wids`` works the same way. ``pipe:`` shards
  cannot be read at an offset, so they are always staged (into a private temporary
  folder when no cache folder is set).

Every network call has a timeout: a server that does not answer is an error naming the
URL, never a hang. Errors a user can cause raise :class:`DatasetError` (one line).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from aeatrain.data.format import DatasetError, sha256_file

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60.0  # per connection attempt and per read on a socket
_COPY_BLOCK = 1 << 20


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def is_stream(url: str) -> bool:
    """True for URLs that can only be read from the start (``pipe:`` commands)."""
    return url.startswith("pipe:")


def local_path(url: str) -> Path | None:
    """The file behind a plain path or ``file:`` URL; None for anything remote."""
    if url.startswith("file:"):
        return Path(url[len("file:") :].removeprefix("//"))
    if is_stream(url) or "://" in url:
        return None
    return Path(url)


def join(root: str, name: str) -> str:
    """``name`` inside a DATA root that is a folder or a URL."""
    return f"{root.rstrip('/')}/{name}" if "://" in root else os.path.join(root, name)


# ----------------------------------------------------------------------------- HTTP


def _http_open(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as err:
        raise DatasetError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:  # refused, unknown host, timeout
        raise DatasetError(f"{url}: cannot reach ({getattr(err, 'reason', err)})") from None


def _http_read(url: str, response, size: int | None = None) -> bytes:
    try:
        data = response.read() if size is None else response.read(size)
    except OSError as err:  # a timeout or a dropped connection mid-body
        raise DatasetError(f"{url}: transfer failed ({err})") from None
    if size is not None and len(data) != size:
        raise DatasetError(f"{url}: sent {len(data)} of {size} bytes (connection cut)")
    return data


def read_file(url: str) -> bytes:
    """A whole small file (a manifest, an index) from a path or an http(s) URL."""
    if is_http(url):
        with _http_open(url) as response:
            return _http_read(url, response)
    path = local_path(url)
    if path is None:
        raise DatasetError(f"{url}: cannot read a manifest or index through {url.split(':')[0]}:")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None
    except OSError as err:
        raise DatasetError(f"{path}: unreadable ({err.strerror or err})") from None


def read_range(url: str, offset: int, size: int, shard_bytes: int) -> bytes:
    """``size`` bytes at ``offset`` of an http(s) shard of ``shard_bytes`` bytes (a range
    request; the server's total must be the index's, or the index is not this shard's)."""
    if size == 0:
        return b""
    with _http_open(url, {"Range": f"bytes={offset}-{offset + size - 1}"}) as response:
        if response.status != 206:
            raise DatasetError(
                f"{url}: the server ignores range requests (HTTP {response.status}); stage "
                "each shard whole into a node-local folder: train.py --data.cache_dir DIR, "
                "evaluate --cache-dir DIR (or copy DATA to a local folder and give that)"
            )
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        if total != str(shard_bytes):
            raise DatasetError(
                f"{url}: the shard is {total or 'of unknown size'} bytes, its index says "
                f"{shard_bytes} (the index does not match its shard)"
            )
        return _http_read(url, response, size)


# ----------------------------------------------------------------------------- readers


class ShardReader:
    """Reads byte ranges of one shard; a context manager. ``shard_bytes`` None skips the
    size check (a shard without a build-time index)."""

    def __init__(self, url: str, shard_bytes: int | None, path: Path | None):
        self.url = url
        self.shard_bytes = shard_bytes
        self.handle = None
        if path is not None:
            try:
                self.handle = open(path, "rb")  # noqa: SIM115 (closed by close())
            except OSError as err:
                raise DatasetError(f"{path}: cannot open shard ({err.strerror or err})") from None
            actual = os.fstat(self.handle.fileno()).st_size
            if shard_bytes is not None and actual != shard_bytes:
                self.close()
                raise DatasetError(
                    f"{url}: the shard is {actual} bytes, its index says {shard_bytes} (the "
                    f"index does not match its shard)"
                )

    def read(self, offset: int, size: int) -> bytes:
        if self.handle is None:
            return read_range(self.url, offset, size, self.shard_bytes)
        self.handle.seek(offset)
        data = self.handle.read(size)
        if len(data) != size:
            raise DatasetError(f"{self.url}: ends before byte {offset + size} (truncated shard)")
        return data

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_shard(
    url: str, *, shard_bytes: int | None, sha256: str | None, cache_dir: str | None
) -> ShardReader:
    """A reader of ``url``: local, range requests, or a copy staged in ``cache_dir``."""
    if cache_dir is not None or is_stream(url):
        return ShardReader(url, shard_bytes, stage(url, cache_dir, sha256, shard_bytes))
    if is_http(url):
        return ShardReader(url, shard_bytes, None)
    return ShardReader(url, shard_bytes, local_path(url))


# ----------------------------------------------------------------------------- staging

_staged: dict[tuple[str, str | None], Path] = {}  # (url, cache folder) -> staged copy
_staged_lock = threading.Lock()
_private_dir: list[Path] = []  # this process's temporary folder for pipe: shards


def stage(
    url: str, cache_dir: str | None, sha256: str | None, shard_bytes: int | None = None
) -> Path:
    """The local copy of a shard in ``cache_dir`` (or a private temporary folder), made
    once per node: the first process copies, the others wait on its lock and reuse it.
    A copy whose sha256 differs from the manifest's is an error and is not kept. A copy
    found there already is checked first (its size and sha256, where known): a damaged
    one is fetched again, once."""
    key = (url, cache_dir)
    with _staged_lock:
        if key in _staged:
            return _staged[key]
    folder = Path(cache_dir) if cache_dir is not None else _private_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"{folder}: cannot create data.cache_dir ({err.strerror})") from None
    label = sha256[:16] if sha256 else _url_label(url)
    target = folder / f"{label}-{_base_name(url)}"
    with _node_lock(target.with_name(target.name + ".lock")):
        if target.is_file() and not _cached_copy_sound(target, sha256, shard_bytes):
            log.warning("%s: cached copy of %s is damaged; fetching it again", target, url)
            target.unlink()
        if not target.is_file():
            _copy_checked(url, target, sha256)
    with _staged_lock:
        _staged[key] = target
    return target


def _cached_copy_sound(target: Path, sha256: str | None, shard_bytes: int | None) -> bool:
    """A staged copy has the size and sha256 its index and manifest give (where known)."""
    if shard_bytes is not None and target.stat().st_size != shard_bytes:
        return False
    return sha256 is None or sha256_file(target) == sha256


def _copy_checked(url: str, target: Path, sha256: str | None) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            _copy_into(url, out)
        if sha256 is not None and sha256_file(partial) != sha256:
            raise DatasetError(
                f"{url}: sha256 of the staged copy differs from the manifest (changed or "
                f"corrupt shard)"
            )
        os.replace(partial, target)
    except OSError as err:
        raise DatasetError(f"{target}: cannot stage {url} ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _copy_into(url: str, out) -> None:
    if is_http(url):
        with _http_open(url) as response:
            shutil.copyfileobj(response, out, _COPY_BLOCK)  # OSError: see _copy_checked
        return
    if is_stream(url):
        _copy_pipe(url, out)
        return
    path = local_path(url)
    try:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, out, _COPY_BLOCK)
    except FileNotFoundError:
        raise DatasetError(f"{path}: shard missing") from None


def _copy_pipe(url: str, out) -> None:
    from webdataset.gopen import gopen  # webdataset's pipe: (exit status checked on close)

    try:
        stream = gopen(url, "rb")
        shutil.copyfileobj(stream, out, _COPY_BLOCK)
        stream.close()
    except Exception as err:  # gopen raises whatever the command's failure gives
        raise DatasetError(f"{url}: cannot read shard ({err})") from None


@contextlib.contextmanager
def _node_lock(path: Path):
    """An exclusive lock shared by every process on the node (and thread: flock locks
    belong to the open file, and each caller opens its own)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _private_folder() -> Path:
    with _staged_lock:
        if not _private_dir:
            _private_dir.append(Path(tempfile.mkdtemp(prefix="aeatrain-shards-")))
            atexit.register(shutil.rmtree, _private_dir[0], True)
        return _private_dir[0]


def _base_name(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].split()[-1] if url.strip() else "shard"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[-80:] or "shard.tar"


def _url_label(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
