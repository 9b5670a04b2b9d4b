"""Byte-level access to a repository root: a local directory or an fsspec URL.

Local paths use the operating system directly, which gives the two atomic
primitives the registry relies on:

* ``write_atomic``: write a temporary file in the same directory, then
  ``os.replace`` it onto the final name (readers see old or new, never half);
* ``create_exclusive``: write a temporary file, then ``os.link`` it to the
  final name, which fails if the name exists (compare-and-swap).

On object stores (fsspec URLs) a single ``put`` of an object is already
atomic, so ``write_atomic`` writes directly; ``create_exclusive`` checks for
existence first and is therefore *not* race-free there (documented in
``docs/design/repository.md``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["TRANSFER_MODES", "Storage", "open_storage"]

#: How a file enters the repository (ingest): used where it is, copied, hard-linked,
#: symlinked or moved.
TRANSFER_MODES = ("direct", "copy", "link", "symlink", "move")


class Storage:
    """A repository root. ``rel`` paths are ``/``-separated and relative."""

    def __init__(self, root: str) -> None:
        self.root = root

    # subclasses implement these
    def url(self, rel: str) -> str:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def write_atomic(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` unless it exists; return whether created."""
        raise NotImplementedError

    def list_dir(self, rel: str) -> list[tuple[str, float]]:
        """Return ``(name, mtime)`` of the entries of a directory ([] if missing)."""
        raise NotImplementedError

    def remove_file(self, rel: str) -> None:
        raise NotImplementedError

    def remove_tree(self, rel: str) -> None:
        raise NotImplementedError

    def makedirs(self, rel: str) -> None:
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    @property
    def is_local(self) -> bool:
        return False

    def local_path(self, rel: str) -> str:
        raise NotImplementedError(f"repository at {self.root!r} is not on a local filesystem")


class LocalStorage(Storage):
    """A repository in a local directory."""

    def __init__(self, root: str) -> None:
        super().__init__(os.path.abspath(os.path.expanduser(root)))

    @property
    def is_local(self) -> bool:
        return True

    def local_path(self, rel: str) -> str:
        norm = posixpath.normpath(rel) if rel else ""
        if norm.startswith(("../", "/")) or norm == "..":
            raise ValueError(f"path {rel!r} would leave the repository root {self.root!r}")
        return os.path.join(self.root, *[p for p in norm.split("/") if p and p != "."])

    def url(self, rel: str) -> str:
        return self.local_path(rel)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.local_path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with open(self.local_path(rel), "rb") as f:
            return f.read()

    def _tmp(self, path: str) -> str:
        return os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")

    def write_atomic(self, rel: str, data: bytes) -> None:
        path = self.local_path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._tmp(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self.local_path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._tmp(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # filesystems without hard links
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def list_dir(self, rel: str) -> list[tuple[str, float]]:
        out = []
        try:
            with os.scandir(self.local_path(rel)) as it:
                for entry in it:
                    try:
                        out.append((entry.name, entry.stat().st_mtime))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return []
        return out

    def remove_file(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.local_path(rel))

    def remove_tree(self, rel: str) -> None:
        path = self.local_path(rel)
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)

    def makedirs(self, rel: str) -> None:
        os.makedirs(self.local_path(rel), exist_ok=True)

    def size(self, rel: str) -> int:
        return os.path.getsize(self.local_path(rel))


class FsspecStorage(Storage):
    """A repository at any fsspec URL (``s3://``, ``gs://``, ``memory://``...)."""

    def __init__(self, root: str, **storage_options: Any) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(root, **storage_options)
        super().__init__(root.rstrip("/"))
        self.fs = fs
        self._path = path.rstrip("/")

    def _p(self, rel: str) -> str:
        norm = posixpath.normpath(rel) if rel else ""
        if norm.startswith(("../", "/")) or norm == "..":
            raise ValueError(f"path {rel!r} would leave the repository root {self.root!r}")
        return f"{self._path}/{norm}" if norm and norm != "." else self._path

    def url(self, rel: str) -> str:
        norm = posixpath.normpath(rel) if rel else ""
        return f"{self.root}/{norm}" if norm and norm != "." else self.root

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._p(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self._p(rel)))

    def write_atomic(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        if self.fs.exists(self._p(rel)):
            return False
        self.fs.pipe_file(self._p(rel), data)
        return True

    def list_dir(self, rel: str) -> list[tuple[str, float]]:
        try:
            entries = self.fs.ls(self._p(rel), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            name = posixpath.basename(str(e["name"]).rstrip("/"))
            mtime = e.get("mtime") or e.get("LastModified") or e.get("created") or 0.0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            out.append((name, float(mtime)))
        return out

    def remove_file(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._p(rel))

    def remove_tree(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._p(rel), recursive=True)

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self._p(rel), exist_ok=True)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._p(rel)))


def open_storage(root: str | os.PathLike[str], **storage_options: Any) -> Storage:
    """Return the storage for a local path or an fsspec URL."""
    text = os.fspath(root)
    if "://" in text and not text.startswith("file://"):
        return FsspecStorage(text, **storage_options)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return LocalStorage(text)


def iter_parents(rel: str) -> Iterator[str]:
    """Yield ``a/b/c``, ``a/b``, ``a`` for ``rel = 'a/b/c'``."""
    while rel and rel != ".":
        yield rel
        rel = posixpath.dirname(rel)
