"""Fetching CIFAR-10 and STL-10 from their public URLs: progress, resume, checksum, atomic rename.

Only the standard library's ``urllib`` is used. Bytes arrive in
``<archive>.part``; an interrupted download is resumed with an HTTP ``Range``
request (a server that ignores the header simply sends the whole file again and
the ``.part`` is rewritten from the start). The finished file's MD5 is compared
with the published one; on a mismatch the ``.part`` is deleted, since resuming
from corrupt bytes can never succeed. Only a verified file is renamed to its
final name, so an archive under its final name is always complete.

The URL and checksum of each dataset can be overridden, for a mirror or for
tests against a local server, by arguments or by the environment variables
``GRADSCOPE_<NAME>_URL`` and ``GRADSCOPE_<NAME>_MD5`` (``<NAME>`` = ``CIFAR10``,
``STL10``).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gradscope._checks import check_choice
from gradscope.data.archives import extract_tar
from gradscope.data.locations import missing, resolve_data_dir

_USER_AGENT = "gradscope-data/1 (+urllib)"


@dataclass(frozen=True)
class Source:
    """Where a dataset archive is published and its MD5 checksum."""

    url: str
    md5: str
    filename: str


# Checksums as published with the datasets (the CIFAR page lists c58f30...; the same
# values are used by every major loader of these archives).
SOURCES: dict[str, Source] = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz"),
    "stl10": Source("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                    "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary.tar.gz"),
}


def source_for(name: str, *, url: str | None = None, md5: str | None = None) -> Source:
    """The download source of ``name``: arguments beat environment variables beat :data:`SOURCES`."""
    check_choice("downloadable dataset", name, SOURCES)
    default = SOURCES[name]
    prefix = f"GRADSCOPE_{name.upper()}_"
    return Source(url or os.environ.get(prefix + "URL") or default.url,
                  (md5 or os.environ.get(prefix + "MD5") or default.md5).lower(),
                  default.filename)


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes_at(response, offset: int) -> bool:
    """Whether ``response`` continues the ``.part`` file at ``offset`` (a 206 for exactly that range)."""
    if not offset or response.status != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return bool(match) and int(match.group(1)) == offset


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool, chunk_size: int) -> None:
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the .part is already whole
            return
        raise ValueError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
                         "check the URL or try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"could not download {url}: {reason}; check the network connection, "
                         f"or put {part.name.removesuffix('.part')} into {part.parent} yourself") from None
    with response:
        if not _resumes_at(response, offset):
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with open(part, "ab" if offset else "wb") as out, \
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    bar.update(len(chunk))
                received = out.tell()
        except (OSError, http.client.HTTPException) as exc:
            raise ValueError(f"download of {url} interrupted ({exc}); run again with --download "
                             f"to resume from {part}") from None
        if total is not None and received < total:  # http.client ends a cut connection silently
            raise ValueError(f"download of {url} interrupted after {received} of {total} bytes; run again "
                             f"with --download to resume from {part}")


def download_file(url: str, destination: str | os.PathLike[str], md5: str, *, progress: bool = True,
                  timeout: float = 60.0, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``destination``, resuming a partial download and verifying its MD5.

    Parameters
    ----------
    url : str
        ``http(s)://`` address of the file.
    destination : path
        Final path. If it already exists with the right checksum nothing is fetched;
        with a wrong one it is deleted and fetched again.
    md5 : str
        Expected hex MD5 digest.
    progress : bool
        Show a tqdm progress bar (bytes, rate, ETA) on stderr.
    timeout : float
        Seconds a connection may stay silent before the download is abandoned
        (it can then be resumed).
    chunk_size : int
        Bytes read per step.

    Returns
    -------
    Path
        ``destination``.

    Raises
    ------
    ValueError
        One line: network failure, HTTP error, or checksum mismatch (after which the
        partial file is deleted).
    """
    destination = Path(destination)
    md5 = md5.lower()
    if destination.exists():
        if file_md5(destination) == md5:
            return destination
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    _fetch_into(url, part, timeout=timeout, progress=progress, chunk_size=chunk_size)
    actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise ValueError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; "
                         "the download was deleted, run again with --download")
    os.replace(part, destination)
    return destination


def download_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                     url: str | None = None, md5: str | None = None, progress: bool = True) -> Path:
    """Download and safely extract the archive of ``name`` (``"cifar10"`` or ``"stl10"``).

    Parameters
    ----------
    name : str
        ``"cifar10"`` or ``"stl10"``.
    data_dir : path, optional
        Where the archive and its extracted directory go; default
        :func:`gradscope.data.default_data_dir`.
    url, md5 : str, optional
        Override the published source (see the module docstring).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The data directory, now holding the archive and its extracted contents.

    Examples
    --------
    >>> download_dataset("cifar10", "/data")  # doctest: +SKIP
    PosixPath('/data')
    """
    source = source_for(name, url=url, md5=md5)
    root = resolve_data_dir(data_dir)
    archive = download_file(source.url, root / source.filename, source.md5, progress=progress)
    extract_tar(archive, root)
    return root


def ensure_files(name: str, root: Path, required: list[Path], *, download: bool) -> None:
    """Make sure the extracted files ``required`` of ``name`` exist under ``root``.

    Missing files come from the archive already in ``root`` (extracted safely), or,
    with ``download=True``, from a verified download. Otherwise a one-line
    ``FileNotFoundError`` says which file is expected and how to get it.
    """
    if all(path.exists() for path in required):
        return
    archive = root / source_for(name).filename
    if download:
        download_dataset(name, root)
    elif archive.exists():
        extract_tar(archive, root)
    absent = [path for path in required if not path.exists()]
    if absent:
        raise missing(name, [absent[0], archive],
                      "pass --download to fetch it, or --data-dir pointing at the directory that holds it")
