"""Upload an exported recognizer folder to the Hugging Face Hub (``create_repo`` + ``upload_folder``), token-safe, with timeouts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lightning_emo.errors import UserError
from lightning_emo.extractors.weights import HUB_TIMEOUT_ENV, hub_timeout, hub_timeout_s
from lightning_emo.hub.config import HUB_FILES, RecognizerError

__all__ = ["PushError", "PushResult", "push_folder"]


class PushError(UserError, RuntimeError):
    """The upload cannot happen (offline, no token, Hub error); the message never holds the token."""


@dataclass
class PushResult:
    """What was uploaded: ``repo_id``, ``url``, ``commit`` (the new commit's hash, for pinning), ``revision`` (branch),
    ``files``, ``private``."""

    repo_id: str
    url: str
    commit: str | None
    revision: str
    private: bool
    files: list[str] = field(default_factory=list)


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.is_offline_mode() or env)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _network_failure(e: BaseException, endpoint: str, timeout: float) -> str | None:
    """A refused connection or a silent server, in words; None for other errors."""
    import httpx2

    if isinstance(e, httpx2.TimeoutException):
        return f"no answer from {endpoint} within {timeout:g} s (set {HUB_TIMEOUT_ENV} to wait longer)"
    if isinstance(e, httpx2.ConnectError):
        how = "refused" if "refused" in str(e).lower() else "failed"
        return f"connection to {endpoint} {how} (check HF_ENDPOINT and the network)"
    if isinstance(e, httpx2.HTTPError):
        return f"{type(e).__name__} talking to {endpoint}"
    return None


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, branch: str | None = None,
                commit_message: str | None = None) -> PushResult:
    """Create ``repo_id`` (if needed) and upload the folder's ``config.json``, ``model.safetensors`` and ``README.md``.

    The folder is loaded first (strictly), so only a recognizer that loads is uploaded. The
    token comes from ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token()``) and is
    never printed or put in a message.

    Args:
        folder: an exported recognizer (``lightning-emo export``).
        repo_id: ``org/name`` on the Hub.
        private: create the repository private (an existing repository keeps its visibility).
        branch: upload to this branch (created from ``main`` if needed); default ``main``.
        commit_message: default "Upload lightning-emo recognizer <name>".

    Raises:
        RecognizerError: the folder is not a loadable recognizer.
        PushError: offline, no token, the Hub refused, could not be reached or did not answer
            within ``$LIGHTNING_EMO_HUB_TIMEOUT`` seconds (default 60) per request (the message says
            what to do).
    """
    import httpx2
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from lightning_emo.hub.recognizer import Recognizer
    from lightning_emo.hub.resolve import parse_hub_reference

    folder = Path(folder)
    missing = [f for f in HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise RecognizerError(f"{folder}: not an exported recognizer (missing {', '.join(missing)}); run "
                              "`lightning-emo export` first")
    model = Recognizer.from_pretrained(folder)
    parse_hub_reference(repo_id)  # org/name
    if _offline():
        raise PushError("cannot push: offline mode is on (HF_HUB_OFFLINE=1); unset it on a machine with network")
    token = get_token()
    if not token:
        raise PushError("cannot push: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    api = HfApi(token=token)
    message = commit_message or f"Upload lightning-emo recognizer {model.config.get('name') or folder.name}"
    try:
        timeout = hub_timeout_s()
    except ValueError as e:
        raise PushError(str(e)) from None
    try:
        with hub_timeout(timeout):
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if branch and branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=branch,
                                     commit_message=message, allow_patterns=list(HUB_FILES))
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: " (the token is invalid or expired: `hf auth login`)",
                403: " (the token may not write to this namespace)"}.get(status, "")
        raise PushError(_scrub(f"push to {repo_id} failed: {type(e).__name__}{f' {status}' if status else ''}{hint}",
                               token)) from None
    except OSError as e:
        raise PushError(_scrub(f"push to {repo_id} failed: {type(e).__name__}: {e}", token)) from None
    except httpx2.HTTPError as e:
        raise PushError(_scrub(f"push to {repo_id} failed: {_network_failure(e, api.endpoint, timeout)}",
                               token)) from None
    except (ValueError, KeyError, TypeError) as e:  # an answer that does not parse as the Hub API's JSON
        raise PushError(_scrub(f"push to {repo_id} failed: {api.endpoint} answered something that is not the Hugging "
                               f"Face Hub API ({type(e).__name__}); check HF_ENDPOINT", token)) from None
    commit = getattr(info, "oid", None)
    return PushResult(repo_id=repo_id, url=str(getattr(url, "url", url)), commit=commit, revision=branch or "main",
                      private=private, files=list(HUB_FILES))
