"""Pretrained weight files that do not live on the Hub (torchaudio bundles, facenet-pytorch): cache, source, safe download.

Where a file is looked for is where its upstream library keeps it, so files a user already has
are found and files downloaded here are found by the upstream library too:

* torchaudio bundles: ``torch.hub.get_dir()/checkpoints/<bundle._path>`` (``$TORCH_HOME/hub/checkpoints``),
  what ``bundle.get_model()`` uses through ``torch.hub.load_state_dict_from_url``;
* facenet-pytorch: ``$TORCH_HOME/checkpoints/<file>`` (facenet-pytorch's own ``get_torch_home()``,
  see ``facenet_pytorch.models.inception_resnet_v1.load_weights``).

Where a missing file comes from: the upstream URL, or ``$LIGHTNING_EMO_WEIGHTS_URL/<file name>``
when that variable is set (a mirror: ``http(s)://`` or ``file://``). Hub files (timm, ``hf-hub:``)
go through huggingface_hub instead and follow ``HF_ENDPOINT``.

The download is written to a temporary file in the cache folder and moved into place only when
complete and checked: the byte count against ``Content-Length``, the sha256 when the source
pins one, and the file's own integrity (the CRC-32 of every member of torch's zip format, or a
full load of a legacy torch file). Neither torchaudio nor facenet-pytorch publishes sizes or
digests of these files, so no size or sha256 is pinned for them here. Every socket operation
has a timeout (``LIGHTNING_EMO_DOWNLOAD_TIMEOUT`` seconds, default 30): a refused connection, a
server that stops answering and an HTTP error each end with a message naming the URL.

Offline (``HF_HUB_OFFLINE=1``, or :func:`set_offline` from ``--offline``): nothing is downloaded;
a missing file raises :class:`~lightning_emo.extractors.base.WeightsNotFoundError` naming the
file, the cache path and the URL it would come from.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lightning_emo.errors import UserError
from lightning_emo.utils import log

if TYPE_CHECKING:
    from lightning_emo.specs import WeightsSource

__all__ = ["HUB_TIMEOUT_ENV", "MIRROR_ENV", "TIMEOUT_ENV", "WeightsDownloadError", "WeightsNotFoundError",
           "cache_path", "describe_source", "download", "fetch", "hub_failure", "hub_file", "hub_timeout", "is_cached",
           "is_offline", "set_offline", "source_url", "upstream_url"]


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights are not on this machine; the message says where to put them."""

TORCHAUDIO_URL = "https://download.pytorch.org/torchaudio/models/"  # torchaudio.pipelines._wav2vec2.utils
FACENET_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"  # facenet-pytorch load_weights
MIRROR_ENV = "LIGHTNING_EMO_WEIGHTS_URL"
TIMEOUT_ENV = "LIGHTNING_EMO_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
HUB_TIMEOUT_ENV = "LIGHTNING_EMO_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 60.0
_TRUE = ("1", "true", "yes", "on")
_offline_flag = False


class WeightsDownloadError(UserError, OSError):
    """A weight file could not be downloaded (refused, no answer, HTTP error, cut short, corrupt); nothing was kept."""


def set_offline(offline: bool = True) -> bool:
    """Forbid (or allow again) every weights download in this process (the ``--offline`` flag); returns the old value."""
    global _offline_flag
    previous, _offline_flag = _offline_flag, bool(offline)
    return previous


def is_offline() -> bool:
    """``--offline`` was given, or ``HF_HUB_OFFLINE`` is set (read now, and as huggingface_hub read it at import)."""
    if _offline_flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(hub is not None and getattr(hub, "HF_HUB_OFFLINE", False))


def cache_path(source: WeightsSource) -> Path:
    """The file the upstream library itself would load for a ``torchaudio`` or ``facenet`` source."""
    if source.kind == "torchaudio":
        return Path(torch.hub.get_dir()) / "checkpoints" / source.filename
    if source.kind == "facenet":
        from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

        return Path(get_torch_home()) / "checkpoints" / source.filename
    raise ValueError(f"weights of kind {source.kind!r} have no upstream cache file")


def upstream_url(source: WeightsSource) -> str:
    """Where the upstream library downloads the file from."""
    base = {"torchaudio": TORCHAUDIO_URL, "facenet": FACENET_URL}.get(source.kind)
    if base is None:
        raise ValueError(f"weights of kind {source.kind!r} have no upstream URL")
    return base + source.filename


def source_url(source: WeightsSource) -> str:
    """``$LIGHTNING_EMO_WEIGHTS_URL/<file name>`` when a mirror is set, else :func:`upstream_url`."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + urllib.request.quote(source.filename)
    return upstream_url(source)


def is_cached(source: WeightsSource) -> Path | None:
    """The local file of any downloadable source if it is already there (Hub sources: huggingface_hub's cache)."""
    if source.kind in ("torchaudio", "facenet"):
        p = cache_path(source)
        return p if p.is_file() else None
    if source.kind in ("hf-hub", "timm") and source.uri and source.filename:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.uri, source.filename, revision=source.revision)
        return Path(found) if isinstance(found, str) else None
    return None


def describe_source(source: WeightsSource) -> str:
    """One line: where the weights come from (for ``extract --list`` and messages)."""
    if source.kind in ("torchaudio", "facenet"):
        return f"{source.kind} {source.uri} <- {source_url(source)}"
    if source.kind in ("hf-hub", "timm"):
        from huggingface_hub import constants

        rev = f"@{source.revision}" if source.revision else ""
        return f"Hub {source.uri}{rev} {source.filename} <- {constants.ENDPOINT}"
    if source.kind == "file":
        return source.uri or "a local file (--weights PATH)"
    return "no weights"


def fetch(source: WeightsSource) -> Path:
    """The cached file of a ``torchaudio``/``facenet`` source, downloaded first when missing and allowed."""
    dst = cache_path(source)
    if dst.is_file():
        return dst
    url = source_url(source)
    if is_offline():
        raise WeightsNotFoundError(
            f"weights file {source.filename} ({source.kind} {source.uri}) is not in the cache ({dst}) and offline "
            f"mode is on (HF_HUB_OFFLINE=1 or --offline), so it is not downloaded from {url}. Download it where "
            f"there is a network and put it at {dst}, turn offline mode off, or pass a local file with --weights PATH.")
    download(url, dst, sha256=source.sha256, desc=source.filename)
    return dst


def hub_file(source: WeightsSource, cache_dir: str | os.PathLike | None = None,
             local_files_only: bool = False) -> Path:
    """A Hub file (``hf-hub``/``timm`` source) through huggingface_hub's cache, downloaded from ``HF_ENDPOINT`` if needed.

    Raises:
        WeightsNotFoundError: not cached and offline, or no such repository/file/revision.
        WeightsDownloadError: the Hub could not be reached or failed (refused, timeout, HTTP error).
    """
    import httpx2
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_files_only = local_files_only or is_offline()
    rev = source.revision or "main"
    url = hf_hub_url(source.uri, source.filename, revision=rev)
    where = Path(cache_dir or constants.HF_HUB_CACHE)
    try:
        with hub_timeout():
            return Path(hf_hub_download(source.uri, source.filename, revision=source.revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        what = ("no such revision" if isinstance(e, RevisionNotFoundError)
                else "no such repository (or it is private: log in with `hf auth login`)")
        raise WeightsNotFoundError(f"weights {source.uri}/{source.filename}@{rev}: {what} on {constants.ENDPOINT}"
                                   ) from None
    except EntryNotFoundError as e:
        failure = hub_failure(e)
        if failure is None or local_files_only:
            raise WeightsNotFoundError(
                f"weights {source.uri}/{source.filename}@{rev} are not in the Hugging Face cache ({where})"
                + (" and offline mode is on (HF_HUB_OFFLINE=1, --offline or local_files_only)" if local_files_only
                   else "") + f", so they are not downloaded from {url}. Download them where there is a network "
                f"(hf download {source.uri} {source.filename} --revision {rev}) and copy the cache, or pass a local "
                f"file with --weights PATH.") from None
        raise WeightsDownloadError(f"download of {url} failed: {failure}; the file is not in the cache ({where}) "
                                   "either. Run again to retry, or check HF_ENDPOINT.") from None
    except (HfHubHTTPError, OSError, httpx2.HTTPError) as e:  # HfHubHTTPError first: it is an httpx2.HTTPError too
        raise WeightsDownloadError(f"download of {url} failed: {hub_failure(e) or type(e).__name__}") from None


@contextlib.contextmanager
def hub_timeout(seconds: float | None = None) -> Iterator[float]:
    """Every huggingface_hub request inside waits at most ``seconds`` for the server (default: :func:`hub_timeout_s`).

    huggingface_hub's shared client has no timeout and retries a file lookup with a 60 s one, so a
    silent Hub holds a download or a push for minutes. Here its client (from the factory in use, so
    a user's proxy setup is kept; ``huggingface_hub.set_client_factory``) gets a transport that caps
    each request's connect/read/write timeouts; a transfer that keeps receiving data is not cut.
    huggingface_hub still retries a failed lookup up to 5 times with back-off (about
    ``6 * seconds + 25`` s in all).
    """
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    seconds = hub_timeout_s() if seconds is None else seconds
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    class CappedTimeout(httpx2.BaseTransport):
        def __init__(self, inner):
            self.inner = inner

        def handle_request(self, request):
            given = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {k: seconds if given.get(k) is None else min(given[k], seconds)
                                             for k in ("connect", "read", "write", "pool")}
            return self.inner.handle_request(request)

        def close(self):
            self.inner.close()

    def factory():
        client = previous()
        client._transport = CappedTimeout(client._transport)  # httpx keeps the default transport here
        return client

    set_client_factory(factory)
    try:
        yield seconds
    finally:
        set_client_factory(previous)


def hub_timeout_s() -> float:
    """Seconds a Hub request may wait for an answer: ``$LIGHTNING_EMO_HUB_TIMEOUT``, default 60."""
    raw = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_HUB_TIMEOUT
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{HUB_TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def hub_failure(e: BaseException) -> str | None:
    """Why a huggingface_hub call could not reach the Hub (refused, timeout, HTTP status), from the error's chain.

    None when the chain holds no network failure (offline mode, ``local_files_only``, a missing entry).
    """
    seen: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in seen:
        seen.append(x)
        x = x.__cause__ or x.__context__
    from huggingface_hub import constants

    for x in seen:
        name = type(x).__name__
        if name == "OfflineModeIsEnabled":
            return None
        if "Timeout" in name or isinstance(x, (socket.timeout, TimeoutError)):
            return f"no answer from {constants.ENDPOINT} in time (set {HUB_TIMEOUT_ENV} to wait longer)"
        if name == "ConnectError" or isinstance(x, ConnectionRefusedError):
            refused = "refused" in str(x).lower() or isinstance(x, ConnectionRefusedError)
            return (f"connection to {constants.ENDPOINT} refused" if refused else
                    f"cannot connect to {constants.ENDPOINT}") + " (check HF_ENDPOINT and the network)"
        response = getattr(x, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None and status >= 400 and status != 404:
            return f"{constants.ENDPOINT} answered HTTP {status}"
    return None


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def download(url: str, dst: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
             timeout: float | None = None, desc: str | None = None) -> Path:
    """Download ``url`` to ``dst`` atomically: a temporary file beside it, checked, then renamed.

    Checks: the byte count against ``Content-Length`` and ``size``, ``sha256`` when given, and
    the integrity of a torch file (see the module docstring). Nothing is left behind on failure.

    Raises:
        WeightsDownloadError: refused, no answer within ``timeout`` seconds (default
            ``$LIGHTNING_EMO_DOWNLOAD_TIMEOUT`` or 30), an HTTP error, cut short, or corrupt;
            the message names the URL and says what to do.
    """
    dst = Path(dst)
    timeout = _timeout() if timeout is None else timeout
    desc = desc or dst.name
    hint = (f"Nothing was written to {dst}. Run again to retry, or download {url} yourself and put it at {dst} "
            f"(or pass --weights PATH).")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "lightning-emo", "Accept-Encoding": "identity"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as e:
                raise WeightsDownloadError(f"download of {url} failed: the server answered HTTP {e.code} {e.reason}"
                                           + (" (a mirror must hold the file under its own name)"
                                              if e.code == 404 else "") + f". {hint}") from None
            except (urllib.error.URLError, OSError, HTTPException) as e:
                raise WeightsDownloadError(f"download of {url} failed: {_reason(e, timeout)}. {hint}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else size
                progress = _Progress(desc, total)
                got = 0
                try:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        got += len(block)
                        progress.update(got)
                except (OSError, HTTPException) as e:
                    raise WeightsDownloadError(f"download of {url} broke off after {_mb(got)}: "
                                               f"{_reason(e, timeout)}. {hint}") from None
                finally:
                    progress.close()
        expected = [n for n in (int(length) if length and length.isdigit() else None, size) if n is not None]
        for n in expected:
            if got != n:
                raise WeightsDownloadError(f"download of {url} is incomplete: {got} of {n} bytes arrived (the "
                                           f"connection was cut). {hint}")
        if sha256 and digest.hexdigest() != sha256:
            raise WeightsDownloadError(f"download of {url} is corrupt: sha256 {digest.hexdigest()}, expected {sha256}. "
                                       f"{hint}")
        problem = torch_file_problem(tmp)
        if problem:
            raise WeightsDownloadError(f"download of {url} is not a valid weights file ({problem}). {hint}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("downloaded %s (%s) to %s", url, _mb(dst.stat().st_size), dst)
    return dst


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a torch weights file, or None: zip format -> the CRC-32 of every member; legacy -> a load."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"damaged zip archive: {e}"
        return f"checksum error in member {bad}" if bad else None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated legacy pickle fails in many ways
        return f"not a readable torch file: {type(e).__name__}"
    return None


def _reason(e: BaseException, timeout: float) -> str:
    """A refused connection, a timeout or another network error, in words."""
    inner = getattr(e, "reason", e)
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused (nothing listens at that address; check the URL and LIGHTNING_EMO_WEIGHTS_URL)"
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s (set {TIMEOUT_ENV} to wait longer)"
    if isinstance(inner, socket.gaierror):
        return f"cannot resolve the host name ({inner.strerror or inner})"
    if isinstance(inner, FileNotFoundError):
        return "no such file in the mirror folder"
    return f"{type(inner).__name__}: {inner}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Progress:
    """Bytes received: a tqdm bar on a terminal (size, rate, ETA), else a short log line every few seconds."""

    def __init__(self, desc: str, total: int | None, interval: float = 5.0):
        self.desc, self.total, self.interval = desc, total, interval
        self.start = self.last = time.monotonic()
        self.done = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"download {desc}", unit="B", unit_scale=True, unit_divisor=1024,
                            file=sys.stderr, dynamic_ncols=True)
        else:
            log.info("download %s: %s", desc, _mb(total) if total else "size unknown")

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if self.bar is None and now - self.last >= self.interval:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            if self.total:
                eta = (self.total - done) / max(rate, 1e-9)
                log.info("download %s: %s of %s (%d%%), %.1f MB/s, ETA %d s", self.desc, _mb(done), _mb(self.total),
                         100 * done // self.total, rate / 1e6, eta)
            else:
                log.info("download %s: %s, %.1f MB/s", self.desc, _mb(done), rate / 1e6)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
