"""Where the data layer caches what it learns about a file (scan masks, decoded frame lists).

One root for every data-layer cache: the ``cache_dir`` argument, else ``$USFAST_CACHE_DIR``, else
``~/.cache/usfast``; each cache has its own sub-folder (``scan_masks/``, ``clip_index/``). Entries are
keyed by :func:`file_key` (resolved path, size, mtime and a version salt), so editing or replacing a
file makes its entries stale instead of wrong. Nothing here writes into the folders holding the data:
read-only dataset mounts are common, and files appearing beside a user's data are a surprise.

Writes go to a temp file in the cache folder and are renamed into place, so a reader (another
DataLoader worker, a second run) sees a whole entry or none; readers still validate what they load
and treat an unreadable entry as a miss. A cache that cannot be written (read-only home, full disk)
costs recomputation, never the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("usfast")

CACHE_ENV = "USFAST_CACHE_DIR"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The data layer's cache root: ``cache_dir`` if given, else ``$USFAST_CACHE_DIR``, else ``~/.cache/usfast``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "usfast"


def file_key(path: str | Path, *salt: object) -> str:
    """A short hex key naming ``path`` as it is now: resolved path, size, mtime (ns) and ``salt``."""
    path = Path(path)
    st = path.stat()
    raw = "|".join([str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), *map(str, salt)])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def entry_name(path: str | Path, key: str, suffix: str) -> str:
    """A cache file name that a person can still match to its media file: ``<stem>-<key><suffix>``."""
    stem = Path(path).stem[:48]
    return f"{stem}-{key}{suffix}"


def publish(target: Path, write: Callable[[Path], None]) -> bool:
    """Write a cache entry: ``write(tmp)`` fills a temp file in ``target``'s folder, then it is renamed
    to ``target``. Returns False (and logs at debug level) when the folder cannot be written."""
    # No fsync: a cache entry lost or torn by a crash is detected on read and recomputed. (The
    # project's durable writer is usjepa_fast.fileio; caches do not need its fsync.)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    except OSError as exc:
        log.debug("cache %s not writable (%s); continuing without caching", target.parent, exc)
        return False
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        log.debug("could not write cache entry %s (%s)", target, exc)
        tmp.unlink(missing_ok=True)
        return False
    return True
