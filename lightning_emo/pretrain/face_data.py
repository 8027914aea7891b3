"""Face-identity source-task data: an identity folder (``root/<identity>/*.jpg|png``) as a seeded train/val split.

CFW, FaceScrub, CASIA-WebFace and VGGFace2 are distributed (or prepared) as one folder of face
crops per identity; :func:`scan_identity_folder` reads that layout, and
:class:`IdentityFolderDataModule` serves it to :class:`FaceCNNPretraining` with the usual
augmentation (random resized crop, horizontal flip, colour jitter) at the face CNN's input size.
Images come out as ``(3, S, S)`` float32 in [0, 1], exactly what the ``face_cnn`` extractor is
given at extraction time.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_emo.errors import UserError
from lightning_emo.utils import log

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class IdentityFolderError(UserError, ValueError):
    """An identity folder that cannot be used; the message names the folder or image file."""


@dataclass
class IdentityFolder:
    """The images of an identity folder and their seeded split.

    Attributes:
        root: the folder of identity folders.
        identities: identity names (folder names), sorted; a label is an index into this list.
        images: ``(path relative to root, label index, split)`` with split ``train`` or ``val``.
        notes: what was left out and why.
    """

    root: Path
    identities: list[str]
    images: list[tuple[str, int, str]]
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[tuple[str, int]]:
        return [(p, y) for p, y, s in self.images if s == name]

    def summary(self) -> str:
        n_train, n_val = len(self.split("train")), len(self.split("val"))
        lines = [f"identity folder {self.root}: {len(self.identities)} identities, {len(self.images)} images "
                 f"(train {n_train}, val {n_val})"]
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def scan_identity_folder(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    min_images: int = 1,
    skip_small: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> IdentityFolder:
    """List ``root/<identity>/*`` images and split each identity's images into train/val.

    The split is per identity, deterministic and seeded (the same ``seed`` gives the same split
    on every machine and rank): an identity with ``n >= 2`` images puts ``round(val_fraction *
    n)`` of them (at least one, at most ``n - 1``) in ``val``.

    Args:
        root: the folder holding one sub-folder per identity.
        val_fraction: share of each identity's images held out for validation.
        seed: seed of the split.
        min_images: identities with fewer images are an error, or left out (with a note)
            when ``skip_small``.
        skip_small: leave out empty/small identity folders instead of failing.
        extensions: image file name endings accepted (case-insensitive).

    Raises:
        IdentityFolderError: ``root`` missing or without identity folders; an identity folder
            with fewer than ``min_images`` images (named) unless ``skip_small``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root)
    if not root.is_dir():
        raise IdentityFolderError(f"{root}: identity folder root not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise IdentityFolderError(f"{root}: no identity folders (expected root/<identity>/*.jpg|png)")
    exts = tuple(e.lower() for e in extensions)
    identities: list[str] = []
    images: list[tuple[str, int, str]] = []
    skipped: list[str] = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if len(files) < max(min_images, 1):
            if skip_small:
                skipped.append(folder.name)
                continue
            others = sum(1 for p in folder.iterdir() if p.is_file())
            what = "no images" if not files else f"{len(files)} images (fewer than min_images={min_images})"
            raise IdentityFolderError(f"{folder}: identity folder has {what}"
                                      + (f" ({others} other files; accepted: {', '.join(exts)})" if others else "")
                                      + "; remove it, add images, or pass skip_small=True")
        label = len(identities)
        identities.append(folder.name)
        rels = [p.relative_to(root).as_posix() for p in files]
        random.Random(f"{seed}:{folder.name}").shuffle(rels)
        n_val = 0
        if val_fraction > 0 and len(rels) >= 2:
            n_val = min(max(round(val_fraction * len(rels)), 1), len(rels) - 1)
        images += [(r, label, "val" if i < n_val else "train") for i, r in enumerate(rels)]
    notes = []
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        notes.append(f"{len(skipped)} identity folders with fewer than {max(min_images, 1)} images left out: {shown}")
        log.warning("identity folder %s: %s", root, notes[-1])
    if not identities:
        raise IdentityFolderError(f"{root}: no identity folder has at least {max(min_images, 1)} images")
    return IdentityFolder(root, identities, images, notes)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``(3, H, W)`` uint8 RGB; an unreadable file raises naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise IdentityFolderError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(rgb)


def face_transforms(size: int = 100, train: bool = True, scale: tuple[float, float] = (0.7, 1.0),
                    flip: bool = True, jitter: float = 0.3) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision v2 transforms: uint8 ``(3, H, W)`` -> float32 ``(3, size, size)`` in [0, 1].

    Training: random resized crop (``scale`` of the area, aspect 3/4..4/3), horizontal flip,
    colour jitter (brightness, contrast, saturation ``jitter``, hue ``jitter / 6``). Evaluation:
    a plain resize, as the extraction pipeline's crops are resized.
    """
    from torchvision.transforms import v2

    if train:
        ops: list[Any] = [v2.RandomResizedCrop((size, size), scale=scale, ratio=(3 / 4, 4 / 3), antialias=True)]
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if jitter > 0:
            ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter / 6, 0.5)))
    else:
        ops = [v2.Resize((size, size), antialias=True)]
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True)])


class IdentityImageDataset(Dataset):
    """``(path, label)`` pairs as ``{"image": (3, S, S) float32 in [0, 1], "label": long, "path": str}``."""

    def __init__(self, root: str | os.PathLike, items: Sequence[tuple[str, int]], transform: Callable):
        self.root = Path(root)
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rel, label = self.items[i]
        image = self.transform(load_image(self.root / rel))
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "path": rel}


class IdentityFolderDataModule(pl.LightningDataModule):
    """Face crops of ``root/<identity>/*`` for identity classification.

    :attr:`identities` (the class names, after :meth:`setup`) is what
    :class:`FaceCNNPretraining` sizes its output layer from. Batches are ``{"image": (B, 3, S,
    S) float32 in [0, 1], "label": (B,) long, "path": list[str]}``.

    Args:
        root: the folder of identity folders.
        image_size: the face CNN's input side (100 in the paper).
        val_fraction: share of each identity's images held out (seeded, per identity).
        seed: seed of the split.
        batch_size: images per batch (per device).
        num_workers: DataLoader workers.
        min_images: identities with fewer images are an error, or skipped with ``skip_small``.
        skip_small: leave out (and report) identities with fewer than ``min_images`` images.
        verify_images: open every image in :meth:`setup` so that an unreadable file fails
            before training rather than mid-epoch (slow on large sets).
        crop_scale: area range of the random resized crop.
        flip: random horizontal flip.
        color_jitter: brightness/contrast/saturation jitter strength (0 = off).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 100,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        min_images: int = 1,
        skip_small: bool = False,
        verify_images: bool = False,
        crop_scale: tuple[float, float] = (0.7, 1.0),
        flip: bool = True,
        color_jitter: float = 0.3,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.min_images = min_images
        self.skip_small = skip_small
        self.verify_images = verify_images
        self.crop_scale = tuple(crop_scale)
        self.flip = flip
        self.color_jitter = color_jitter
        self.folder: IdentityFolder | None = None

    @property
    def identities(self) -> list[str]:
        if self.folder is None:
            raise RuntimeError("IdentityFolderDataModule.setup() has not run yet")
        return self.folder.identities

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def setup(self, stage: str | None = None) -> None:
        if self.folder is not None:
            return
        self.folder = scan_identity_folder(self.root, self.val_fraction, self.seed, self.min_images, self.skip_small)
        if self.verify_images:
            from PIL import Image

            for rel, _, _ in self.folder.images:
                try:
                    with Image.open(self.folder.root / rel) as im:
                        im.verify()
                except Exception as e:  # PIL raises many types for broken files
                    raise IdentityFolderError(f"{self.folder.root / rel}: unreadable image "
                                              f"({type(e).__name__}: {e})") from None
        log.info(self.folder.summary())

    def _loader(self, split: str, train: bool) -> DataLoader:
        assert self.folder is not None, "call setup() first"
        tf = face_transforms(self.image_size, train, self.crop_scale, self.flip, self.color_jitter)
        ds = IdentityImageDataset(self.folder.root, self.folder.split(split), tf)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=train, num_workers=self.num_workers,
                          drop_last=False, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if self.folder and self.folder.split("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)
