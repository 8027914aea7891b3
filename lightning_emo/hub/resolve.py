"""Where a recognizer's files come from: a local folder, a zoo name, or a Hub repository at a pinned commit.

:func:`resolve_reference` turns what a user wrote (``DIR``, ``synthetic-demo``,
``hf-hub:org/name@rev``, ``org/name``) into a folder or a repo id and revision, asking the zoo
(:mod:`lightning_emo.hub.zoo`) for names; :func:`download` fetches ``config.json`` and
``model.safetensors`` of one commit through huggingface_hub's cache, with request timeouts and
errors that tell "refused", "offline and not cached" and "no such repo/revision" apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_emo.hub import zoo as zoo_mod
from lightning_emo.hub.config import CONFIG_NAME, WEIGHTS_NAME, RecognizerError
from lightning_emo.utils import log

__all__ = ["download", "parse_hub_reference", "resolve_reference"]


def parse_hub_reference(ref: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@revision]`` (or ``org/name[@revision]``) -> ``(repo_id, revision or None)``."""
    body = ref[len("hf-hub:"):] if ref.startswith("hf-hub:") else ref
    repo_id, _, rev = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise RecognizerError(f"expected 'hf-hub:org/name[@revision]', got {ref!r}")
    return repo_id, rev or None


def resolve_reference(name: str | os.PathLike, revision: str | None = None,
                      zoo: str | os.PathLike | None = None) -> tuple[str, str | Path, str | None]:
    """What ``from_pretrained`` loads: ``("dir", path, None)`` or ``("hub", repo_id, revision)``.

    Order: an existing directory; ``hf-hub:org/name[@rev]``; a zoo entry name; ``org/name[@rev]``.
    """
    text = str(name)
    if os.path.isdir(text):
        return "dir", Path(text), None
    if os.path.exists(text):
        raise RecognizerError(f"{text} is a file; give the exported folder that holds it (config.json, "
                              "model.safetensors)")
    head = Path(text.split("@", 1)[0]).parts
    if not text.startswith("hf-hub:") and len(head) > 1 and os.path.isdir(head[0]):
        raise RecognizerError(f"{text}: no such directory (and {head[0]}/ is a local folder, so this is no Hub "
                              "repo id; write hf-hub:org/name to mean the Hub)")
    if text.startswith("hf-hub:") or ("/" in text and not text.startswith((".", "/", "~"))
                                      and not os.path.exists(text)):
        if not text.startswith("hf-hub:"):
            if text in zoo_mod.entry_names(zoo):
                return _from_zoo(text, revision, zoo)
        repo_id, rev = parse_hub_reference(text)
        if rev and revision and rev != revision:
            raise RecognizerError(f"{text!r} pins revision {rev!r} but revision={revision!r} was also given")
        return "hub", repo_id, rev or revision
    if text in zoo_mod.entry_names(zoo):
        return _from_zoo(text, revision, zoo)
    known = ", ".join(zoo_mod.entry_names(zoo)) or "none"
    raise RecognizerError(f"{text!r} is not a directory, a 'hf-hub:org/name[@revision]' reference or a zoo model "
                          f"(zoo: {known})")


def _from_zoo(name: str, revision: str | None, zoo: str | os.PathLike | None) -> tuple[str, str | Path, str | None]:
    entry = zoo_mod.get_entry(name, zoo)
    if revision is not None:
        raise RecognizerError(f"zoo model {name!r} pins its own revision; load 'hf-hub:...@{revision}' instead")
    if entry.path is not None:
        return "dir", entry.local_path(), None
    return "hub", entry.repo_id, entry.revision


def download(repo_id: str, revision: str | None, cache_dir, force_download: bool, local_files_only: bool,
              token) -> tuple[Path, Path, str | None]:
    """``config.json`` and ``model.safetensors`` of one commit: the weights are fetched at the config's commit."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    import httpx2

    from lightning_emo.extractors.face import snapshot_revision
    from lightning_emo.extractors.weights import hub_failure, hub_timeout

    where = f"{repo_id}@{revision or 'main'}"
    kwargs = dict(cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only, token=token)
    try:
        with hub_timeout():  # a silent Hub ends in an error, not a wait of minutes
            config_file = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **kwargs))
            commit = snapshot_revision(config_file)
            weights_file = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=commit or revision, **kwargs))
    except LocalEntryNotFoundError as e:
        failure = None if local_files_only else hub_failure(e)
        if failure is not None:  # the Hub could not be reached: say so, not "offline"
            raise RecognizerError(f"{where}: cannot download {CONFIG_NAME}/{WEIGHTS_NAME}: {failure}; they are not in "
                                  f"the Hugging Face cache either. Run again when the Hub answers.") from None
        from huggingface_hub import constants

        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise RecognizerError(
            f"{where}: {CONFIG_NAME}/{WEIGHTS_NAME} are not in the Hugging Face cache "
            f"({cache_dir or constants.HF_HUB_CACHE}) and cannot be downloaded (offline, or local_files_only). "
            f"Download them where there is a network ({fetch}) and copy the cache.") from None
    except RepositoryNotFoundError:
        raise RecognizerError(f"{repo_id}: no such model repository on the Hub (or it is private: log in with "
                              "`hf auth login`)") from None
    except RevisionNotFoundError:
        raise RecognizerError(f"{where}: no such revision in {repo_id}") from None
    except EntryNotFoundError as e:
        raise RecognizerError(f"{where}: not an exported lightning-emo recognizer ({e.__class__.__name__}: a file "
                              f"of {CONFIG_NAME}, {WEIGHTS_NAME} is missing)") from None
    except (HfHubHTTPError, OSError, httpx2.HTTPError) as e:
        raise RecognizerError(f"{where}: download failed ({hub_failure(e) or type(e).__name__})") from None
    log.debug("loaded %s from %s", repo_id, config_file.parent)
    return config_file, weights_file, commit
