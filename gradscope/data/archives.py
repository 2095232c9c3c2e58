"""Extracting downloaded tar archives without letting them write outside their destination.

A tar member can name ``../../.bashrc``, an absolute path, or a link pointing
anywhere; extracting such an archive blindly overwrites files of the user
(CVE-2007-4559). Every member is checked first, with a one-line error naming the
offending member, and where Python provides it the ``"data"`` extraction filter
(PEP 706) is applied as well. Extraction goes to a temporary directory next to
the destination and its top-level entries are renamed into place at the end, so
an interrupted extraction never leaves a half-filled dataset directory that
would later look complete.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"refusing to extract {archive.name}: member {member.name!r} points outside the target")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = name.parent if member.issym() else PurePosixPath()
        if target.is_absolute() or ".." in (base / target).parts:
            raise ValueError(f"refusing to extract {archive.name}: link {member.name!r} -> {member.linkname!r} "
                             "points outside the target")
    elif not (member.isfile() or member.isdir()):
        raise ValueError(f"refusing to extract {archive.name}: member {member.name!r} is not a file or directory")


def extract_tar(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> list[Path]:
    """Safely extract a (possibly compressed) tar archive into ``destination``.

    Parameters
    ----------
    archive : path
        The ``.tar``, ``.tar.gz``, ... file.
    destination : path
        Directory receiving the archive's top-level entries (created if needed).
        Existing entries of the same name are replaced.

    Returns
    -------
    list of Path
        The top-level paths created in ``destination``.

    Raises
    ------
    ValueError
        If the archive is unreadable or a member would escape ``destination``.
    """
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python without PEP 706; members were checked above
                    tar.extractall(staging, members=members)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"cannot extract {archive}: {exc}; delete it and download it again") from None
        created = []
        for entry in sorted(staging.iterdir()):
            target = destination / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
            created.append(target)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)
