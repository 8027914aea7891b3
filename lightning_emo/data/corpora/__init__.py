"""Corpus adapters: each turns a corpus laid out on disk into a :class:`Manifest`.

One small module per corpus registers a ``prepare(root, **options) -> Manifest`` builder in
:data:`CORPORA`; ``lightning-emo prepare --corpus NAME`` looks it up by name.
"""

from lightning_emo.registry import Registry

CORPORA: Registry = Registry("corpus")

MEDIA_EXTENSIONS = (".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm", ".wav", ".mp3", ".flac", ".m4a", ".ogg")

# registration
from lightning_emo.data.corpora import (  # noqa: E402,F401
    cheavd, cremad, emodb, folder, iemocap, meld, msp_podcast, ravdess,
)

__all__ = ["CORPORA", "MEDIA_EXTENSIONS"]
