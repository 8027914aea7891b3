"""Face detection, tracking and cropping: MTCNN on real photos and an MP4, the tracker, the `none` detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torchvision.ops import box_iou

from lightning_emo.extractors.face_detect import (
    FACE_DETECTORS,
    build_face_detector,
    crop_boxes,
    square_boxes,
    track_main_face,
)

# the astronaut's face in skimage.data.astronaut() (512 x 512), labelled by hand: x1, y1, x2, y2
ASTRONAUT_FACE = torch.tensor([[175.0, 55.0, 275.0, 180.0]])


@pytest.fixture(scope="module")
def mtcnn():
    return build_face_detector("mtcnn")


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut())


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = F.interpolate(img.permute(2, 0, 1)[None].float(), size=size, mode="bilinear", antialias=True)
    return x[0].round().clamp(0, 255).byte().permute(1, 2, 0).contiguous()


def test_registered_detectors():
    assert {"mtcnn", "none"} <= set(FACE_DETECTORS.names())


def test_mtcnn_finds_the_astronaut(mtcnn, astronaut):
    frames = astronaut[None].repeat(3, 1, 1, 1)
    dets = mtcnn.detect(frames)
    assert all(len(d) == 1 for d in dets)
    assert box_iou(dets[0][:, :4], ASTRONAUT_FACE).item() > 0.6
    assert dets[0][0, 4] > 0.99

    faces = mtcnn(frames, crop_size=100)
    assert faces.crops.shape == (3, 3, 100, 100) and faces.crops.dtype == torch.float32
    assert faces.mask.tolist() == [True, True, True]
    assert 0.0 <= faces.crops.min() and faces.crops.max() <= 1.0
    # the square crop box holds the whole face, with the margin
    box = faces.boxes[0]
    assert (box[2] - box[0]).item() == pytest.approx((box[3] - box[1]).item(), abs=1e-3)
    assert box_iou(box[None], ASTRONAUT_FACE).item() > 0.5
    assert box[0] <= ASTRONAUT_FACE[0, 0] + 10 and box[2] >= ASTRONAUT_FACE[0, 2] - 10
    # deterministic
    again = mtcnn(frames, crop_size=100)
    assert torch.equal(again.crops, faces.crops) and torch.equal(again.boxes, faces.boxes)


def test_mtcnn_marks_frames_without_a_face(mtcnn):
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(np.stack([
        _rgb(skdata.brick()), _rgb(skdata.grass()), _rgb(skdata.gravel()),
        np.full((512, 512, 3), 128, np.uint8), rng.integers(0, 256, (512, 512, 3), dtype=np.uint8),
    ]))
    faces = mtcnn(frames, crop_size=160)
    assert faces.mask.tolist() == [False] * 5
    assert faces.crops.abs().sum() == 0 and faces.boxes.abs().sum() == 0 and faces.scores.abs().sum() == 0


def test_mtcnn_in_an_mp4(mtcnn, astronaut, tmp_path):
    face = _resize(astronaut, (256, 256))
    blank = torch.zeros_like(face)
    frames = torch.stack([face, face, face, blank, blank, face])
    path = tmp_path / "clip.mp4"
    try:
        from lightning_emo.data.media import load_frames, write_video
    except ImportError:  # the media module is optional for this test: write and read with PyAV
        load_frames = write_video = None
    if write_video is not None:
        write_video(path, frames, fps=5)
        decoded, _ = load_frames(path)
    else:
        import av

        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=5)
            s.width, s.height, s.pix_fmt = 256, 256, "yuv420p"
            for f in frames.numpy():
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode())
        with av.open(str(path)) as c:
            decoded = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    assert decoded.shape == (6, 256, 256, 3) and decoded.dtype == torch.uint8
    faces = mtcnn(decoded, crop_size=160)
    assert faces.mask.tolist() == [True, True, True, False, False, True]
    expected = ASTRONAUT_FACE / 2
    assert box_iou(faces.boxes[0][None], expected).item() > 0.4
    assert faces.crops[3].abs().sum() == 0


def test_mtcnn_keeps_the_large_face_when_a_smaller_one_appears(mtcnn, astronaut):
    small = _resize(astronaut, (256, 256))
    canvas = torch.zeros(5, 512, 800, 3, dtype=torch.uint8)
    canvas[:, :, :512] = astronaut
    canvas[2:, 100:356, 530:786] = small  # a second, smaller face from frame 2 on
    canvas[3, :, :512] = 0  # the main face is gone in frame 3: no face, not the other one
    faces = mtcnn(canvas, crop_size=64)
    assert faces.mask.tolist() == [True, True, True, False, True]
    for t in (0, 1, 2, 4):
        assert box_iou(faces.boxes[t][None], ASTRONAUT_FACE).item() > 0.5


def _box(cx, cy, side, score=0.99):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, score]


def test_tracker_prefers_the_large_consistent_face():
    dets = []
    for t in range(8):
        frame = [_box(100 + 2 * t, 100, 80)]  # the main face, drifting right
        if 2 <= t <= 5:
            frame.append(_box(300, 60, 40))  # a smaller face
        if t == 6:
            frame = [_box(300, 60, 40)]  # only the other face is detected
        if t == 7:
            frame.append(_box(200, 250, 200, 0.95))  # a one-frame, larger false positive
        dets.append(torch.tensor(frame))
    track = track_main_face(dets, smooth=0)
    assert track.found.tolist() == [True] * 6 + [False, True]
    centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    for t in (0, 1, 2, 3, 4, 5, 7):
        assert centres[t] == pytest.approx(100 + 2 * t)
    assert track.boxes[6].abs().sum() == 0 and track.scores[6] == 0


def test_tracker_smooths_and_restarts_after_a_long_gap():
    jitter = [0, 6, -6, 6, -6, 0]
    dets = [torch.tensor([_box(100 + j, 100, 80)]) for j in jitter]
    track = track_main_face(dets, smooth=2)
    centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    assert (centres - 100).abs().max() < 4  # smoothed
    # after more than max_gap frames without the main face, the track moves to the face that is there
    dets = [torch.tensor([_box(100, 100, 80)])] * 4 + [torch.tensor([_box(400, 300, 60)])] * 5
    track = track_main_face(dets, max_gap=2, smooth=0)
    assert track.found.tolist() == [True] * 4 + [False, False, True, True, True]
    assert track_main_face([torch.zeros(0, 5)] * 3).found.tolist() == [False] * 3


def test_square_boxes_and_crops():
    boxes = square_boxes(torch.tensor([[10.0, 20.0, 50.0, 40.0], [-20.0, -20.0, 20.0, 20.0]]), 0.5, 100, 120)
    side = boxes[:, 2] - boxes[:, 0]
    assert torch.allclose(side, torch.tensor([60.0, 60.0])) and torch.allclose(boxes[:, 3] - boxes[:, 1], side)
    assert (boxes >= 0).all()  # moved inside the frame
    frames = torch.zeros(1, 100, 120, 3, dtype=torch.uint8)
    frames[0, 20:80, 30:90] = 255
    crop = crop_boxes(frames, torch.tensor([[30.0, 20.0, 90.0, 80.0]]), 16)
    assert crop.shape == (1, 3, 16, 16)
    assert torch.equal(crop[..., 1:-1, 1:-1], torch.ones(1, 3, 14, 14)) and crop.min() > 0.95  # bilinear edges


def test_crop_batch_matches_per_clip(mtcnn, astronaut):
    face = _resize(astronaut, (256, 256))
    blank = torch.zeros_like(face)
    clip_a = torch.stack([face, blank, face])
    clip_b = torch.stack([blank, face, blank])
    padded = torch.stack([clip_a, clip_b])
    batch = mtcnn.crop_batch(padded, torch.tensor([3, 2]), crop_size=64)
    assert batch.crops.shape == (2, 3, 3, 64, 64) and batch.mask.shape == (2, 3)
    assert batch.mask.tolist() == [[True, False, True], [False, True, False]]
    for i, (clip, n) in enumerate([(clip_a, 3), (clip_b, 2)]):
        single = mtcnn(clip[:n], crop_size=64)
        assert torch.allclose(batch.crops[i, :n], single.crops, atol=1e-6)
        assert torch.equal(batch.mask[i, :n], single.mask)
    # a list of differently sized clips works too
    listed = mtcnn.crop_batch([clip_a, clip_b[:2, :200, :240]], crop_size=64)
    assert listed.mask.shape == (2, 3) and listed.mask[1, 2].item() is False


def test_none_detector_resizes_and_masks_blank_frames():
    det = build_face_detector("none")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    frames = torch.from_numpy(np.stack([img, np.full_like(img, 0), np.full_like(img, 200), img]))
    frames[2, 0, 0] = 201  # nearly uniform is still blank
    faces = det(frames, crop_size=32)
    assert faces.mask.tolist() == [True, False, False, True]
    assert faces.crops.shape == (4, 3, 32, 32)
    assert faces.boxes[0].tolist() == [10.0, 0.0, 70.0, 60.0]  # the centred square
    assert faces.crops[1:3].abs().sum() == 0
    exact = crop_boxes(frames[:1], faces.boxes[:1], 60)  # no resampling at the native size
    assert torch.allclose(exact[0], frames[0, :, 10:70].permute(2, 0, 1).float() / 255, atol=1e-6)


def test_detectors_reject_bad_frames(mtcnn):
    with pytest.raises(ValueError, match=r"uint8 tensor \(N, H, W, 3\)"):
        mtcnn(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match=r"uint8 tensor \(N, H, W, 3\)"):
        build_face_detector("none")(torch.zeros(64, 64, 3, dtype=torch.uint8))
    with pytest.raises(KeyError, match="unknown face detector"):
        build_face_detector("retinaface")


def test_crop_boxes_equals_roi_align_over_whole_frames():
    """Cropping each box's region before converting to float gives what roi_align over whole frames gives."""
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (6, 72, 96, 3), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[10.3, 5.7, 50.2, 45.6],     # inside
                          [-12.5, -8.0, 30.0, 34.5],   # over the top-left corner
                          [70.4, 40.2, 110.9, 80.7],   # over the bottom-right corner
                          [0.0, 0.0, 96.0, 72.0],      # the whole frame
                          [-40.0, -30.0, -5.0, 5.0],   # outside
                          [94.6, 70.1, 95.4, 71.9]])   # a sliver at the edge
    whole = frames.permute(0, 3, 1, 2).float().div(255.0)
    rois = torch.cat([torch.arange(6, dtype=torch.float32)[:, None], boxes], dim=1)
    reference = roi_align(whole, rois, output_size=(24, 24), spatial_scale=1.0, sampling_ratio=-1,
                          aligned=True).clamp(0, 1)
    torch.testing.assert_close(crop_boxes(frames, boxes, 24), reference, atol=1e-5, rtol=1e-5)
    assert crop_boxes(frames[:0], boxes[:0], 24).shape == (0, 3, 24, 24)
