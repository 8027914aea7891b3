"""Build a Hugging Face Hub cache tree on disk, as huggingface_hub itself lays it out.

No Hub server is reachable in tests, so Hub loading paths are tested against a cache tree
built here and read with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def make_hf_cache(
    cache_dir: str | Path,
    repo_id: str,
    files: dict[str, bytes | str | Path],
    commit: str | None = None,
    refs: tuple[str, ...] = ("main",),
    repo_type: str = "model",
) -> str:
    """Write ``files`` (name -> bytes, text, or a path to copy) as one snapshot of ``repo_id``.

    Returns the 40-hex commit hash of the snapshot; each name in ``refs`` (branches, tags)
    points at it. Blobs are stored once under ``blobs/`` and linked from ``snapshots/``, as
    huggingface_hub does.
    """
    cache_dir = Path(cache_dir)
    blobs: dict[str, bytes] = {}
    for name, content in files.items():
        if isinstance(content, Path):
            content = content.read_bytes()
        elif isinstance(content, str):
            content = content.encode()
        blobs[name] = content
    if commit is None:
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(blobs):
            h.update(name.encode() + hashlib.sha256(blobs[name]).digest())
        commit = h.hexdigest()
    repo_dir = cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    for name, content in blobs.items():
        digest = hashlib.sha256(content).hexdigest()
        blob = repo_dir / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / digest)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        ref_file = repo_dir / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return commit
