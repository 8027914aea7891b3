"""Small shared helpers: atomic file writes, the refusal to replace outputs, disk-full errors, file digests,
located errors and logging setup."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger("lightning_emo")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A crash leaves either the old file or no file, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the usual permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class OutputExistsError(FileExistsError):
    """A command would replace files it was not asked to replace: nothing was written.

    Raised by :func:`check_outputs` before any work, naming the files and the option (usually
    ``--overwrite``) that allows replacing them.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], flag: str = "--overwrite", what: str = "",
                 hint: str | None = None):
        self.paths = [str(p) for p in paths]
        shown = ", ".join(self.paths[:4]) + (f" and {len(self.paths) - 4} more" if len(self.paths) > 4 else "")
        verb = "exists" if len(self.paths) == 1 else "exist"
        hint = hint or (f"Choose another output path, or pass {flag} to replace "
                        f"{'it' if len(self.paths) == 1 else 'them'}.")
        super().__init__(f"{what + ' ' if what else ''}{shown} already {verb}; nothing was written. {hint}")


class OutputCollisionError(ValueError):
    """Two inputs of one command would write the same output file."""


def check_outputs(paths: Iterable[str | os.PathLike], overwrite: bool = False, flag: str = "--overwrite",
                  what: str = "") -> list[Path]:
    """Check, before any work, that a command may write ``paths``; returns them as ``Path``.

    Raises :class:`OutputCollisionError` when two of them are the same file and
    :class:`OutputExistsError` when any exists and ``overwrite`` is false. Every command that
    writes user-visible files calls this with all the files it is about to write.
    """
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise OutputCollisionError(f"two outputs would be written to one file, {p}: give the inputs "
                                       "distinct names or write them to distinct folders")
        seen[key] = p
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputExistsError(existing, flag, what)
    return paths


def distinct_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct, readable name per input file: its stem, with parent folders only where stems collide.

    ``[a/clip.mp4, b/clip.mp4, x.mp4]`` -> ``["a-clip", "b-clip", "x"]``; the same file given twice
    is numbered (``x``, ``x-2``).
    """
    parts = [Path(os.path.abspath(p)).with_suffix("").parts[1:] or ("root",) for p in paths]
    depth = [1] * len(parts)

    def name(i: int) -> str:
        return "-".join(parts[i][-depth[i]:])

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(parts)):
            groups.setdefault(name(i), []).append(i)
        grown = False
        for members in groups.values():
            if len({parts[i] for i in members}) > 1:  # different files, one name: look one folder further up
                for i in members:
                    if depth[i] < len(parts[i]):
                        depth[i] += 1
                        grown = True
        if not grown:
            break
    counts: dict[str, int] = {}
    out = []
    for i in range(len(parts)):
        counts[name(i)] = counts.get(name(i), 0) + 1
        out.append(name(i) if counts[name(i)] == 1 else f"{name(i)}-{counts[name(i)]}")
    return out


class DiskFullError(OSError):
    """The disk (or a file-size limit) ran out while writing; the message names the file and what was kept."""


def disk_full(exc: OSError, path: str | os.PathLike | None = None, kept: str = "",
              then: str = "run the same command again") -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` if it is ENOSPC / EDQUOT / EFBIG, else None (re-raise ``exc`` then).

    Its message: what ran out, the file being written, ``kept`` (what is still there) and ``then``.
    """
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    where = path or exc.filename or "a file"
    reason = {errno.EFBIG: "the file-size limit was reached"}.get(exc.errno, "the disk is full")
    err = DiskFullError(f"{reason} while writing {where}; {kept or 'nothing else was changed'}. "
                        f"Free some space (or write elsewhere), then {then}.")
    err.errno, err.path = exc.errno, str(where)  # not OSError's filename: it would be appended to the message
    return err


class LocatedError(ValueError):
    """A bad input file; the message starts with ``FILE, line N, <kind> 'NAME':``.

    Subclasses name what ``kind`` of place they point at (a manifest ``field``, a CSV ``column``).
    """

    kind = "field"

    def __init__(self, file: str | os.PathLike, message: str, line: int | None = None, where: str | None = None):
        location = str(file)
        if line is not None:
            location += f", line {line}"
        if where is not None:
            location += f", {self.kind} '{where}'"
        super().__init__(f"{location}: {message}")
        self.file, self.line, self.where = str(file), line, where


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
