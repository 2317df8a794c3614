"""Where an artifact's files live: a local directory, or an object store named by a URI.

    store = open_store("s3://bucket/runs/llama")   # or "/data/artifact", "gs://bucket/x", "memory://x"
    store.read("layer_3.safetensors")              # bytes; FileNotFoundError when there is no such file
    store.write("layer_3.safetensors", data)       # whole or not at all
    store.stamp(name)                              # changes whenever the file does; None when absent
    store.names()                                  # the files directly under the location
    store.display                                  # the location for logs and messages, secrets masked

A local directory is written with a temporary file, fsync and rename. An object store has no rename,
but it stores an object whole (a PUT, or a multipart upload, becomes visible only when complete), so a
reader sees the old object or the new one: the artifact's rule that a layer's file is written before
the manifest naming it is what keeps a depth from appearing half-written.

Remote stores go through fsspec (`s3://` with s3fs, `gs://` with gcsfs, `az://` with adlfs). Credentials
and endpoints come from the environment, as those libraries read it (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, ~/.aws, an instance role; GOOGLE_APPLICATION_CREDENTIALS, ...);
a URI carrying credentials (user:password@ or a query string) is refused, and `mask` hides them in any
text that names a location. Failures other than a missing file raise `StorageError`. Imports no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["StorageError", "ArtifactStore", "LocalStore", "RemoteStore", "is_uri", "location_key", "mask",
           "open_store", "write_atomic"]

# object stores: a PUT replaces an object whole, so the publishing order is all the atomicity needed
OBJECT_STORES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                 "abfss": "adlfs", "memory": None}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# userinfo of any URL (scheme://user:secret@host) and the value of every query parameter
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]*@")
_QUERY_VALUE = re.compile(r"([?&][^=&#\s'\"]+=)[^&#\s'\"]*")


class StorageError(OSError):
    """The store failed (unreachable, timed out, refused access), not the artifact. `retryable`: False
    when retrying cannot help (access denied, a missing bucket, a configuration error)."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def mask(text: str) -> str:
    """`text` with the userinfo of every URL and the value of every query parameter replaced by ***."""
    return _QUERY_VALUE.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))


def is_uri(location: str | os.PathLike) -> bool:
    """True for `scheme://...` other than `file://` (a local path written as a URL)."""
    if not isinstance(location, str):
        return False
    match = _SCHEME.match(location)
    return match is not None and match.group(1).lower() != "file"


def location_key(location: str | os.PathLike) -> str:
    """One string per location, to compare two ways of naming it (a local path resolved; a URI without a
    trailing slash)."""
    if is_uri(location):
        return str(location).rstrip("/")
    return str(Path(_local_path(location)).resolve())


def _local_path(location: str | os.PathLike) -> str:
    text = os.fspath(location)
    return text[len("file://"):] if text.startswith("file://") else text


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to the local file `path` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


class ArtifactStore:
    """The files of one artifact location. `local`: a directory of this machine (no download needed)."""

    local: bool
    display: str

    def where(self, name: str) -> Path | str:
        """A file of the store as messages name it (a path, or the masked URI)."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def stamp(self, name: str):
        """Something hashable that changes whenever the file changes (None: no such file)."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        return self.stamp(name) is not None

    def names(self) -> list[str]:
        """The names of the files directly under the location ([] when it does not exist)."""
        raise NotImplementedError


class LocalStore(ArtifactStore):
    """A directory on this machine."""

    local = True

    def __init__(self, location: str | os.PathLike):
        self.path = Path(_local_path(location))
        self.display = str(self.path)

    def where(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StorageError(f"{e.strerror or e}", retryable=not isinstance(e, PermissionError)) from None

    def write(self, name: str, data: bytes) -> None:
        try:
            write_atomic(self.path / name, data)
        except OSError as e:
            raise StorageError(f"cannot write {self.path / name}: {e.strerror or e}",
                               retryable=not isinstance(e, PermissionError)) from None

    def stamp(self, name: str):
        try:
            st = os.stat(self.path / name)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def names(self) -> list[str]:
        try:
            return [p.name for p in self.path.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            return []


class RemoteStore(ArtifactStore):
    """An object store through fsspec (s3://, gs://, az://; memory:// for tests)."""

    local = False

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.display = mask(self.uri)
        scheme = _SCHEME.match(self.uri).group(1).lower()
        if scheme not in OBJECT_STORES:
            raise StorageError(f"{self.display}: {scheme}:// is not an object store this dsla-serve writes "
                               f"artifacts to; use a local path or one of "
                               f"{', '.join(s + '://' for s in OBJECT_STORES if s != 'memory')}", retryable=False)
        if mask(self.uri) != self.uri:
            raise StorageError(f"{self.display}: credentials do not belong in the URI (it is logged and written into "
                               "Serve configs); set them in the environment the storage library reads "
                               "(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)",
                               retryable=False)
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        except ImportError:
            package = OBJECT_STORES[scheme]
            raise StorageError(f"{self.display}: {scheme}:// needs the {package} package: pip install {package}",
                               retryable=False) from None
        self.root = self.root.rstrip("/")

    def where(self, name: str) -> str:
        return f"{self.display}/{name}"

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _failed(self, doing: str, name: str, e: Exception) -> StorageError:
        refused = isinstance(e, PermissionError) or type(e).__name__ in ("NoCredentialsError",
                                                                          "PartialCredentialsError")
        return StorageError(f"cannot {doing} {self.where(name)}: {type(e).__name__}: {mask(str(e))}",
                            retryable=not refused)

    def read(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(name))
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - every transport failure (botocore, aiohttp, ...) is one kind
            raise self._failed("read", name, e) from None

    def write(self, name: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._key(name), data)
        except Exception as e:  # noqa: BLE001
            raise self._failed("write", name, e) from None

    def stamp(self, name: str):
        key = self._key(name)
        try:
            self.fs.invalidate_cache(key)  # fsspec remembers listings; the manifest changes under it
            info = self.fs.info(key)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001
            raise self._failed("look up", name, e) from None
        return tuple(str(info.get(k)) for k in ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime",
                                                "updated", "created", "size"))

    def names(self) -> list[str]:
        try:
            self.fs.invalidate_cache(self.root)
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise self._failed("list", "", e) from None


def open_store(location: str | os.PathLike) -> ArtifactStore:
    """The store of an artifact location: a URI (s3://, gs://, az://, memory://) or a local path (or file://).
    StorageError for a URI that cannot be used (unknown scheme, credentials in it, its library missing)."""
    return RemoteStore(location) if is_uri(location) else LocalStore(location)
