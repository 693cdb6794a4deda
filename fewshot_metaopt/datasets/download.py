"""Fetching data files safely: checksummed downloads, HTML-page detection, safe unzipping.

A download goes to a temporary file beside its destination and is renamed into place only
after every check passed, so a destination folder never holds a half-written or unverified
file. ``urllib`` does the fetching, so ``http://``, ``https://`` and ``file://`` URLs all work
(a local mirror is just a ``file://`` URL).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from ..atomic_files import make_temp_dir, make_temp_file

_CHUNK = 1 << 20
_HTML_PREFIXES = (b"<!doctype", b"<html")


class ChecksumError(ValueError):
    """A downloaded file's checksum is not the expected one."""


def is_html(payload: bytes) -> bool:
    """Whether ``payload`` starts like an HTML page (an error or login page saved as data).

    Leading whitespace and a UTF-8 byte-order mark are skipped; the test is case-insensitive.
    """
    head = payload.lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    head = head[:16].lower()
    return any(head.startswith(prefix) for prefix in _HTML_PREFIXES)


def is_safe_member(name: str) -> bool:
    """Whether an archive member name stays inside the folder it is extracted to.

    Refuses empty names, absolute paths (``/x``, ``\\x``, ``C:x``) and ``..`` components.
    """
    if not name or name[0] in "/\\" or (len(name) > 1 and name[1] == ":"):
        return False
    return ".." not in name.replace("\\", "/").split("/")


def _open_url(url: str):
    try:
        return urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise FileNotFoundError(f"{url} answered 404 (not found); check the base URL") from None
        raise ConnectionError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):
            raise FileNotFoundError(f"{url} does not exist; check the base URL") from None
        raise ConnectionError(
            f"could not download {url}: {err.reason}; check the network or the base URL"
        ) from None


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically; return ``dest``.

    The payload is written to a temporary file in ``dest``'s folder, refused if it is an HTML
    page, checked against ``md5`` (when given; raises :class:`ChecksumError`) and against
    ``validate(tmp_path)`` (when given; it raises to refuse), then renamed onto ``dest``.
    On any failure nothing is left behind.
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    # With the umask's mode, which the renamed file keeps (tempfile.mkstemp's is 0600).
    fd, tmp = make_temp_file(target.parent, prefix="." + target.name + ".", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            with _open_url(url) as response:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        with open(tmp, "rb") as f:
            if is_html(f.read(1024)):
                raise ValueError(
                    f"{url} returned an HTML page, not {target.name}; the URL is wrong or the "
                    f"server refused the download (fetch it by hand into {target.parent})"
                )
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise ChecksumError(
                f"checksum mismatch for {target.name} downloaded from {url}: expected md5 {md5}, "
                f"got {got}; the file was not kept (retry, or use a mirror holding the official file)"
            )
        if validate is not None:
            validate(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def safe_extract(archive: str | os.PathLike | zipfile.ZipFile, dest: str | os.PathLike) -> list[Path]:
    """Extract a zip archive into ``dest``, refusing any member that would land outside it.

    Every member name is checked before anything is written. Extraction goes to a temporary
    folder inside ``dest`` and its top-level entries are then moved into place (entries that
    already exist in ``dest`` are kept as they are). Returns the top-level paths in ``dest``.
    """
    if isinstance(archive, zipfile.ZipFile):
        return _safe_extract(archive, Path(dest), archive.filename or "archive")
    with zipfile.ZipFile(archive) as zf:
        return _safe_extract(zf, Path(dest), str(archive))


def check_members(names: Iterable[str], label: str) -> None:
    """Refuse an archive with any member named by an absolute path or through ``..``."""
    for name in names:
        if not is_safe_member(name):
            raise ValueError(
                f"refusing {label}: member {name!r} is an absolute path or contains '..'; "
                f"the archive is corrupt or malicious"
            )


def _safe_extract(zf: zipfile.ZipFile, dest: Path, label: str) -> list[Path]:
    check_members(zf.namelist(), label)
    dest.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(dest, prefix=".extract.")
    try:
        zf.extractall(staging)
        placed = []
        for entry in sorted(staging.iterdir()):
            final = dest / entry.name
            if not final.exists():
                os.replace(entry, final)
            placed.append(final)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
