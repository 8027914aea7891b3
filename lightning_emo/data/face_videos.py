"""Videos of real faces in motion, for tests and benchmarks: scikit-image's astronaut and camera photographs under a
moving virtual camera (pans, zooms), with shot cuts, faces that leave the frame, shots with no face and two faces.

A video is a list of :class:`Shot`: each shows one *canvas* (a photograph placed on a wider
textured canvas, see :data:`CANVASES`) through a virtual camera whose centre and zoom move
linearly through the shot's waypoints. :func:`render_frames` yields the frames with the ground
truth of where each face of the canvas lands (its box in frame pixels and the share of it that
is inside the frame); :func:`write_face_video` encodes them with PyAV as they are rendered (a
60 s 720p video never sits in memory whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = ["CANVASES", "FrameTruth", "SCENES", "Shot", "canvas", "render_frames", "scene", "talking_head_shots",
           "write_face_video"]

# Face boxes (x1, y1, x2, y2) in the photographs' pixels, as MTCNN finds them at full resolution.
_ASTRONAUT_FACE = (180.3, 60.7, 268.4, 172.2)
_CAMERA_FACE = (197.0, 115.7, 254.8, 196.4)

# name -> what it shows; every canvas is 512 px high.
CANVASES = {
    "astronaut": "the astronaut photograph (512 x 512) with 512 px of brick texture on each side",
    "camera": "the cameraman photograph (grey, 512 x 512) with 512 px of gravel texture on each side",
    "pair": "the astronaut photograph (face ~88 px) with the cameraman scaled by 0.75 (face ~44 px) pasted on its "
            "right: two faces of different sizes",
    "empty": "brick and gravel textures: no face",
}


@lru_cache(maxsize=None)
def canvas(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image (512, W, 3) uint8, faces (K, 4) float32 boxes in canvas pixels)`` of a canvas in :data:`CANVASES`."""
    from skimage import data, transform

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 2 else x[..., :3]

    brick, gravel = rgb(data.brick()), rgb(data.gravel())
    astronaut, camera = data.astronaut(), rgb(data.camera())
    if name == "astronaut":
        img, faces = np.concatenate([brick, astronaut, brick], axis=1), [_ASTRONAUT_FACE]
        faces = [(x1 + 512, y1, x2 + 512, y2) for x1, y1, x2, y2 in faces]
    elif name == "camera":
        img = np.concatenate([gravel, camera, gravel], axis=1)
        faces = [(x1 + 512, y1, x2 + 512, y2) for x1, y1, x2, y2 in [_CAMERA_FACE]]
    elif name == "pair":
        # the cameraman's head and shoulders scaled by 0.75 pasted over the right of the astronaut photograph
        cut = camera[60:300, 130:330]
        small = (transform.rescale(cut, 0.75, channel_axis=-1, anti_aliasing=True) * 255).round().astype(np.uint8)
        photo = astronaut.copy()
        photo[40:40 + small.shape[0], 350:350 + small.shape[1]] = small
        img = np.concatenate([brick, photo, brick], axis=1)
        x1, y1, x2, y2 = _CAMERA_FACE
        faces = [(_ASTRONAUT_FACE[0] + 512, _ASTRONAUT_FACE[1], _ASTRONAUT_FACE[2] + 512, _ASTRONAUT_FACE[3]),
                 (512 + 350 + (x1 - 130) * 0.75, 40 + (y1 - 60) * 0.75, 512 + 350 + (x2 - 130) * 0.75,
                  40 + (y2 - 60) * 0.75)]
    elif name == "empty":
        img, faces = np.concatenate([brick, gravel, brick], axis=1), []
    else:
        raise ValueError(f"unknown canvas {name!r}; known: {', '.join(CANVASES)}")
    return np.ascontiguousarray(img), np.asarray(faces, dtype=np.float32).reshape(-1, 4)


@dataclass
class Shot:
    """One shot: ``frames`` frames of ``canvas`` seen by a camera moving through ``path``.

    ``path`` holds waypoints ``(cx, cy, zoom)``: the canvas point at the frame's centre and the
    frame pixels per canvas pixel, spread evenly over the shot and interpolated linearly (one
    waypoint: a still camera). ``cx`` is in canvas pixels; the photograph of the ``astronaut`` and
    ``camera`` canvases spans ``512 <= cx < 1024``.
    """

    canvas: str
    frames: int
    path: Sequence[tuple[float, float, float]] = ((768.0, 256.0, 1.0),)

    def camera(self, i: int) -> tuple[float, float, float]:
        if len(self.path) == 1 or self.frames <= 1:
            return tuple(self.path[0])
        pos = i / (self.frames - 1) * (len(self.path) - 1)
        k = min(int(pos), len(self.path) - 2)
        a, b, w = np.asarray(self.path[k]), np.asarray(self.path[k + 1]), pos - k
        return tuple(float(v) for v in (1 - w) * a + w * b)


@dataclass
class FrameTruth:
    """Where the canvas's faces are in one frame: ``boxes (K, 4)`` frame pixels (may reach outside the frame) and
    ``visible (K,)``, the share of each box inside the frame; ``shot`` is the shot's index."""

    shot: int
    boxes: np.ndarray
    visible: np.ndarray = field(default_factory=lambda: np.zeros(0))


def render_frames(shots: Sequence[Shot], height: int, width: int) -> Iterator[tuple[np.ndarray, FrameTruth]]:
    """Yield ``(frame (height, width, 3) uint8 RGB, truth)`` for every frame of every shot (bilinear sampling; the
    part of the view outside the canvas is black)."""
    import torch
    import torch.nn.functional as F

    for s, shot in enumerate(shots):
        img, faces = canvas(shot.canvas)
        src = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        ch, cw = img.shape[:2]
        u = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2
        v = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2
        for i in range(shot.frames):
            cx, cy, zoom = shot.camera(i)
            # only the part of the canvas in view (and 2 px around it) is resampled
            x0 = int(max(0, np.floor(cx - width / 2 / zoom) - 2))
            x1 = int(min(cw, np.ceil(cx + width / 2 / zoom) + 2))
            y0 = int(max(0, np.floor(cy - height / 2 / zoom) - 2))
            y1 = int(min(ch, np.ceil(cy + height / 2 / zoom) + 2))
            if x1 - x0 < 2 or y1 - y0 < 2:
                frame = np.zeros((height, width, 3), np.uint8)
            else:
                part = src[..., y0:y1, x0:x1]
                scale = min(zoom, 1.0)  # shrinking: an anti-aliased copy at the output scale first
                if scale < 1.0:
                    part = F.interpolate(part, scale_factor=scale, mode="bilinear", antialias=True,
                                         align_corners=False)
                gx = (cx - x0 + u / zoom) / (x1 - x0) * 2 - 1  # [-1, 1] spans the part, at any resampled size
                gy = (cy - y0 + v / zoom) / (y1 - y0) * 2 - 1
                grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
                out = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                frame = out[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            boxes = np.stack([(faces[:, 0] - cx) * zoom + width / 2, (faces[:, 1] - cy) * zoom + height / 2,
                              (faces[:, 2] - cx) * zoom + width / 2, (faces[:, 3] - cy) * zoom + height / 2],
                             axis=1) if len(faces) else np.zeros((0, 4), np.float32)
            inside = np.clip(np.minimum(boxes[:, 2], width) - np.maximum(boxes[:, 0], 0), 0, None) * \
                np.clip(np.minimum(boxes[:, 3], height) - np.maximum(boxes[:, 1], 0), 0, None)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            yield np.ascontiguousarray(frame), FrameTruth(s, boxes.astype(np.float32),
                                                          (inside / np.maximum(area, 1e-6)).astype(np.float32))


def write_face_video(path: str | Path, shots: Sequence[Shot], height: int, width: int, fps: float,
                     crf: int = 23) -> list[FrameTruth]:
    """Encode the shots as an H.264 MP4 (PyAV, frame by frame, atomically) and return each frame's :class:`FrameTruth`."""
    import av

    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    truth: list[FrameTruth] = []
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for n, (frame, t) in enumerate(render_frames(shots, height, width)):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
                vf.pts, vf.time_base = n, 1 / rate
                out.mux(stream.encode(vf))
                truth.append(t)
            out.mux(stream.encode())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return truth


def talking_head_shots(seconds: float, fps: float, height: int, seed: int = 0) -> list[Shot]:
    """A talking-head video: the astronaut framed head and shoulders (face about 30% of the frame's height), the
    camera drifting and zooming slowly, and every 27 s a cut to the cameraman for 6 s and 1 s without a face."""
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * fps))
    base = 2.0 * height / 720  # frame pixels per photograph pixel: the view stays inside the 512 px photograph
    shots: list[Shot] = []
    done, k = 0, 0
    while done < frames:
        n = min(frames - done, int(round(fps * (20, 6, 1)[k % 3])))
        if k % 3 == 0:  # the main speaker: the head drifts within the frame, gentle zoom, a waypoint every 2 s
            path = [(768 + rng.uniform(-40, 40), 215 + rng.uniform(-10, 10), base * rng.uniform(1.0, 1.2))
                    for _ in range(max(2, int(n / fps / 2) + 1))]
            shots.append(Shot("astronaut", n, path))
        elif k % 3 == 1:  # the other person
            shots.append(Shot("camera", n, [(760, 190, base * 1.05), (780, 185, base * 1.1)]))
        else:  # a cutaway without a face
            shots.append(Shot("empty", n, [(700, 256, base)]))
        done += n
        k += 1
    return shots


# Test scenes at 5 fps for 320 x 240 frames (faces 50-90 px): name -> (canvas, frames, camera path) per shot.
SCENES: dict[str, list[tuple[str, int, list[tuple[float, float, float]]]]] = {
    # the camera pans across and zooms in and out; the face stays in view
    "pan_zoom": [("astronaut", 25, [(700, 150, 0.7), (820, 120, 1.0), (740, 170, 0.75)])],
    # the camera pans away until the face is out of the frame, holds, and pans back
    "leave_reenter": [("astronaut", 30, [(740, 150, 0.8), (740, 150, 0.8), (1100, 150, 0.8), (1100, 150, 0.8),
                                         (740, 150, 0.8), (740, 150, 0.8)])],
    # a cut from the astronaut to the cameraman
    "cut": [("astronaut", 12, [(740, 150, 0.8), (760, 140, 0.85)]), ("camera", 12, [(760, 170, 0.9), (740, 160, 0.9)])],
    # the astronaut, a cutaway with no face, the astronaut again
    "gap": [("astronaut", 10, [(740, 150, 0.8)]), ("empty", 7, [(700, 256, 0.8)]),
            ("astronaut", 10, [(760, 140, 0.8), (730, 150, 0.85)])],
    # two faces of different sizes (the astronaut's is about twice the cameraman's): the large one is the main face
    "two_faces": [("pair", 15, [(830, 150, 1.0), (800, 140, 0.95)])],
}


def scene(name: str, height: int = 240) -> list[Shot]:
    """The shots of :data:`SCENES` ``name`` for frames ``height`` high (4:3; zooms scale with the height)."""
    f = height / 240
    return [Shot(c, n, [(x, y, z * f) for x, y, z in path]) for c, n, path in SCENES[name]]
