"""What a person reads while a command runs: progress (a live bar on a terminal, a short line now and then in a log)
and upstream banners kept out.

:class:`Progress` is the one progress reporter of the package (corpus synthesis, extraction,
downloads): on a terminal a tqdm bar with size, rate and ETA; when the output is a file or a
pipe, a log line every ``interval`` seconds and one at the end (``synth: 120/210 clips,
4.1 clips/s, ETA 0:00:22``) instead of carriage-return redraws that end up as one huge line.

:func:`quiet_upstream` drops what the user cannot act on: Lightning's "GPU available / TPU
available" device banner, its litlogger tip, and the ``LeafSpec`` deprecation warning that
Lightning's own pytree helper triggers in torch (nothing of ours to change). Importing this
module imports neither torch nor Lightning.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import IO, Iterable, Iterator, TypeVar

from lightning_emo.utils import log

__all__ = ["Progress", "format_seconds", "is_interactive", "quiet_upstream", "track"]

T = TypeVar("T")

# Lightning's informational banners that say nothing a user of this package can act on.
_BANNERS = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "💡 Tip:")
# Lightning logs them through these (a filter on the emitting logger holds whatever handlers exist;
# one on Lightning's own console handler catches records of its other modules).
_UPSTREAM_LOGGERS = tuple(f"{pkg}{sub}" for pkg in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric",
                                                    "lightning.fabric")
                          for sub in ("", ".utilities.rank_zero"))


def is_interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal, where live progress bars belong."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``; ``?`` for an unknown (infinite) duration."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _format_size(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:g}" if isinstance(n, float) else str(n)
    for prefix in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or prefix == "TB":
            return f"{n:.0f} {prefix}" if prefix == "B" else f"{n:.1f} {prefix}"
        n /= 1000
    return str(n)


class Progress:
    """Progress of ``total`` units of work: a tqdm bar on a terminal, else a log line every ``interval`` seconds.

    Args:
        total: how many units there are (``None``: unknown, no ETA).
        desc: what is being done, e.g. ``"synth"`` or ``"download hubert_base.pth"``.
        unit: the unit's name (``"clip"``); ``"B"`` shows sizes in kB/MB/GB and rates per second.
        interval: seconds between log lines when the output is not a terminal.
        enabled: ``False`` reports nothing (``--quiet``).
        stream: where the bar goes (default stderr); the log lines go to the package logger.

    Use as a context manager, or call :meth:`close`; :meth:`update` adds finished units.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", interval: float = 10.0,
                 enabled: bool = True, stream: IO[str] | None = None):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.enabled = enabled
        self.done: float = 0
        self.start = self.last = time.monotonic()
        self._bar = None
        self._closed = False
        stream = sys.stderr if stream is None else stream
        if enabled and is_interactive(stream):
            from tqdm.auto import tqdm

            scale = dict(unit_scale=True, unit_divisor=1000) if unit == "B" else {}
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, **scale)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def update(self, n: float = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info(self.line())

    def line(self) -> str:
        """The progress as one short line: done/total, rate, ETA."""
        elapsed = max(self.elapsed, 1e-9)
        rate = self.done / elapsed
        unit = self.unit if self.unit == "B" else f"{self.unit}s"
        done = _format_size(self.done, self.unit)
        if self.total is None:
            return f"{self.desc}: {done} {'' if self.unit == 'B' else unit}, {_format_size(rate, self.unit)}/s".replace(" ,", ",")
        total = _format_size(self.total, self.unit)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        amount = f"{done}/{total}" + ("" if self.unit == "B" else f" {unit}")
        rate_text = f"{_format_size(rate, self.unit)}/s" if self.unit == "B" else f"{rate:.2f} {unit}/s"
        return f"{self.desc}: {amount}, {rate_text}, ETA {format_seconds(eta)}"

    def close(self) -> None:
        """Finish the bar, or log the final line (with the elapsed time) when not on a terminal."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done:
            log.info(f"{self.line().split(', ETA')[0]}, done in {format_seconds(self.elapsed)}")


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs) -> Iterator[T]:
    """Iterate ``items`` reporting progress (see :class:`Progress`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, **kwargs) as p:
        for item in items:
            yield item
            p.update(1)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(_BANNERS)


_FILTER = _DropBanners()


def quiet_upstream() -> None:
    """Keep Lightning's device banner, its litlogger tip and torch's ``LeafSpec`` deprecation out of the output.

    Idempotent; called by the commands that run a Lightning Trainer.
    """
    for name in _UPSTREAM_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:  # Lightning attaches its own console handler
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    # Lightning's pytree helper builds LeafSpec() objects, which torch deprecates (a FutureWarning
    # per stage); it is raised inside Lightning, not by anything this package does.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
