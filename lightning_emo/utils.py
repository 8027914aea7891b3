"""Small shared helpers: atomic file writes, the refusal to replace outputs, disk-full errors, file digests,
located errors and logging setup."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lightning_emo.errors import UsageError, UserError

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


class OutputExistsError(UserError, FileExistsError):
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


class OutputCollisionError(UserError, ValueError):
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


class DiskFullError(UserError, OSError):
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


class LocatedError(UserError, ValueError):
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


def _file_above(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (a folder cannot be made under it), or None."""
    for parent in list(path.parents)[::-1]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_file(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check that ``path`` can be written as a file (for option ``flag``) before any work; returns it as a Path.

    Refused with a :class:`~lightning_emo.errors.UsageError`: an existing folder, a path below an
    existing file, a suffix not in ``suffixes`` (when given).
    """
    path = Path(path)
    if path.is_dir():
        hint = f", e.g. {path / ('out' + suffixes[0])}" if suffixes else ""
        raise UsageError(f"{flag} {path}: is a folder; give the path of the file to write{hint}")
    above = _file_above(path)
    if above is not None:
        raise UsageError(f"{flag} {path}: {above} is a file, so nothing can be written below it; give another path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: expected a {' or '.join(suffixes)} file name")
    return path


def not_a_file(path: str | os.PathLike, what: str, usual: str | None = None) -> str:
    """Why an input ``path`` that is not a regular file cannot be read as a ``what``: the text after its name.

    A folder given where a file is expected is said to be a folder (not "not found"), naming the
    file of the ``usual`` name inside it when there is one (``manifest.csv`` in a corpus folder).
    """
    path = Path(path)
    if path.is_dir():
        inside = path / usual if usual else None
        if inside is not None and inside.is_file():
            return f"is a folder, not a {what}: did you mean {inside}?"
        return f"is a folder, not a {what}; give the path of the file"
    if path.exists():
        return f"is not a regular file (expected a {what})"
    return f"{what} not found"


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check that ``path`` can be (or is) a folder (for option ``flag``) before any work; returns it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, but a folder is written there; give a folder's path "
                         "(it is created if needed)")
    above = _file_above(path)
    if above is not None:
        raise UsageError(f"{flag} {path}: {above} is a file, so no folder can be made below it; give another path")
    return path


def check_device(device: str, flag: str = "--device"):
    """``device`` as a ``torch.device`` if this machine has it; else a UsageError saying what is available."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag} {device!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {device}: CUDA is not available on this machine (torch {torch.__version__}"
                             f"{', built without CUDA' if torch.version.cuda is None else ', no GPU visible'}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")
    return dev


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at each record (a captured or redirected stderr that was
    replaced after setup would otherwise be written to closed, printing a logging traceback)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
