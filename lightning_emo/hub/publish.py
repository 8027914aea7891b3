"""Putting recognizers into the zoo: list an exported folder (after loading it), or export checkpoints into it.

The zoo (:mod:`lightning_emo.hub.zoo`) only reads and writes entries; this module sits above both
it and :class:`~lightning_emo.hub.recognizer.Recognizer`, so the dependency runs one way:
publish -> recognizer -> zoo.
"""

from __future__ import annotations

import os
from typing import Any

from lightning_emo.hub.recognizer import Recognizer
from lightning_emo.hub.zoo import ZooEntry, check_name, write_entry, zoo_dir

__all__ = ["add_entry", "export_to_zoo"]


def add_entry(name: str, model_dir: str | os.PathLike, *, zoo: str | os.PathLike | None = None,
              repo_id: str | None = None, revision: str | None = None, description: str | None = None) -> ZooEntry:
    """Write ``<zoo>/<name>.yaml`` for an exported recognizer and regenerate the README.

    The model is loaded once first, so only a recognizer that loads gets listed. Arguments are
    those of :func:`lightning_emo.hub.zoo.write_entry`.
    """
    check_name(name)
    Recognizer.from_pretrained(model_dir)  # refuse to list a model that does not load
    return write_entry(name, model_dir, zoo=zoo, repo_id=repo_id, revision=revision, description=description)


def export_to_zoo(name: str, checkpoints, fusion: Any = None, *, zoo: str | os.PathLike | None = None,
                  description: str | None = None, **kwargs: Any) -> ZooEntry:
    """Export trained checkpoints (+ fusion rule) into ``<zoo>/models/<name>/`` and list it in the zoo.

    ``checkpoints``, ``fusion`` and ``kwargs`` are those of
    :func:`lightning_emo.hub.export.build_from_checkpoints` (``features``, ``manifest``,
    ``license``...). The folder holds only ``config.json``, ``model.safetensors`` (heads, and
    weights only for file-sourced extractors) and ``README.md``. Returns the entry.
    """
    check_name(name)  # before anything is written under <zoo>/models/<name>
    kwargs.setdefault("name", name)
    kwargs.setdefault("description", description)
    model = Recognizer.from_checkpoints(checkpoints, fusion=fusion, **kwargs)
    out = zoo_dir(zoo) / "models" / name
    model.save_pretrained(out)
    return add_entry(name, out, zoo=zoo, description=description)
