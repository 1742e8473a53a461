"""Local paths and `s3://bucket/prefix` URIs: the one place that touches a filesystem.

Everything goes through `pyarrow.fs`, so Ray Data reads through the very same
filesystem object that ingest wrote with:

    fs, path = resolve("s3://bucket/datasets/mafl")   # S3FileSystem, "bucket/datasets/mafl"
    write_bytes_atomic(join(uri, "train/part-00000.parquet"), data)

S3 credentials come only from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`, and
`AWS_ENDPOINT_URL` for S3-compatible stores such as MinIO or moto), never from the
URI. Errors raised here are `StorageError`s whose messages pass through `redact`:
no key, secret or URL userinfo reaches a log, a manifest or MLflow.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .errors import UserError

_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# Temporary names written next to their final file: ".<name>.<hex>.tmp"
TMP_SUFFIX = ".tmp"
_CHUNK = 8 << 20


class StorageError(UserError):
    """A path that cannot be read or written; the message names it (credentials redacted)."""


def redact(text: str) -> str:
    """`text` with URL userinfo and the values of the AWS secret variables replaced by `***`."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _s3_filesystem() -> pafs.S3FileSystem:
    """An S3FileSystem from the standard AWS variables (endpoint, region and keys)."""
    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc.rpartition("@")[2] + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme or "https"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, `file://` URI or `s3://bucket/prefix`."""
    uri = str(uri)
    if is_s3(uri):
        parts = urlsplit(uri)
        if "@" in parts.netloc:
            raise StorageError(
                f"{redact(uri)}: credentials in an s3:// URI are not accepted; "
                "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
            )
        if not parts.netloc:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        path = (parts.netloc + "/" + parts.path.strip("/")).rstrip("/")
        return _s3_filesystem(), path
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise StorageError(f"{redact(uri)}: unsupported scheme; use a local path or s3://bucket/prefix")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute_storage(storage_path: str) -> str:
    """A local path made absolute (a URI as it is): what Ray Train and Tune want as a storage path."""
    if "://" in storage_path:
        return storage_path
    return os.path.abspath(storage_path)


def join(uri: str, *parts: str) -> str:
    """Join path parts with '/' (works for local paths and s3:// URIs alike)."""
    out = str(uri)
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = out.rstrip("/") + "/" + part if out else part
    return out


def _wrap(err: Exception, uri: str, action: str) -> StorageError:
    return StorageError(f"cannot {action} {redact(uri)}: {redact(str(err))}")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as err:
        raise _wrap(err, uri, "stat") from None


def file_info(uri: str) -> pafs.FileInfo:
    """pyarrow FileInfo (type, size, mtime) of `uri`."""
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise _wrap(err, uri, "stat") from None


def list_files(uri: str, recursive: bool = True) -> dict[str, int]:
    """Files under the directory `uri`: relative '/'-separated path -> size in bytes, sorted.

    A directory that does not exist has no files.
    """
    fs, base = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    except OSError as err:
        raise _wrap(err, uri, "list") from None
    prefix = base.rstrip("/") + "/"
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.path.startswith(prefix):
            out[info.path[len(prefix):].replace(os.sep, "/")] = info.size
    return dict(sorted(out.items()))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{redact(uri)}: no such file") from None
    except OSError as err:
        raise _wrap(err, uri, "read") from None


def iter_chunks(uri: str, chunk_size: int = _CHUNK):
    """Yield the bytes of `uri` in chunks (hashing without holding the whole file)."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(chunk_size):
                yield chunk
    except FileNotFoundError:
        raise StorageError(f"{redact(uri)}: no such file") from None
    except OSError as err:
        raise _wrap(err, uri, "read") from None


def tmp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"


def is_tmp_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(TMP_SUFFIX)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` so that `uri` is either absent, its old content, or complete (see `write_atomic`)."""
    fs, path = resolve(uri)
    write_atomic(fs, path, data, display=uri)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes, display: str | None = None) -> None:
    """`write_bytes_atomic` on an already resolved (filesystem, path), e.g. inside a Ray task.

    Local: a hidden temp file beside the target, fsync, rename. S3: one upload of the
    final key, started only once all bytes are in hand (an object is not visible
    before its PUT or multipart upload completes).
    """
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            parent, name = os.path.split(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, tmp_name(name))
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)
    except OSError as err:
        raise _wrap(err, display or path, "write") from None


def write_json_atomic(uri: str, obj: Any, sort_keys: bool = False) -> None:
    """`obj` as indented JSON, written with `write_bytes_atomic`: readers never see half a file.

    numpy scalars and paths are written as numbers and strings.
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default)
    write_bytes_atomic(uri, (text + "\n").encode())


def _json_default(value: Any) -> Any:
    """`json.dumps(default=...)`: what JSON has no type for."""
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as err:
        raise StorageError(f"{redact(uri)}: not valid JSON ({err})") from None


def delete(uri: str, missing_ok: bool = True) -> None:
    """Delete a file, or a directory with everything under it."""
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif not missing_ok:
            raise StorageError(f"{redact(uri)}: no such file or directory")
    except OSError as err:
        raise _wrap(err, uri, "delete") from None
