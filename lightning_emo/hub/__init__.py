"""Exported recognizers: load (local, Hub, zoo), predict, export from checkpoints, push, timeline, and the model zoo.

The public face is small: :class:`Recognizer` (``from_pretrained``, ``from_checkpoints``,
``save_pretrained``, ``predict``, ``predict_arrays``, ``timeline``), :class:`Prediction`, the zoo
functions and :class:`HubPushCallback` (imported on first use: it needs Lightning).
"""

from __future__ import annotations

from typing import Any

from lightning_emo.hub.config import RecognizerError
from lightning_emo.hub.recognizer import Prediction, Recognizer, StrictLoadError
from lightning_emo.hub.publish import add_entry, export_to_zoo
from lightning_emo.hub.zoo import ZooEntry, get_entry, list_entries

__all__ = ["HubPushCallback", "Prediction", "Recognizer", "RecognizerError", "StrictLoadError", "ZooEntry",
           "add_entry", "export_to_zoo", "get_entry", "list_entries", "load"]


def load(name: str, **kwargs: Any) -> Recognizer:
    """Load a zoo model by name (or any reference :meth:`Recognizer.from_pretrained` takes)."""
    return Recognizer.from_pretrained(name, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "HubPushCallback":
        from lightning_emo.hub.callback import HubPushCallback

        return HubPushCallback
    raise AttributeError(f"module 'lightning_emo.hub' has no attribute {name!r}")
