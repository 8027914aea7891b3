"""Detect-and-track against per-frame detection on videos of real faces in motion (pans, a face leaving and coming
back, shot cuts, a stretch with no face, two faces, an occlusion), and its settings in stores, configs and infer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from lightning_emo.data.face_videos import SCENES, Shot, render_frames, scene, write_face_video
from lightning_emo.data.media import load_frames
from lightning_emo.extractors.face_detect import build_face_detector, track_main_face
from lightning_emo.extractors.face_track import TrackingPolicy, shot_cuts

# One short video with everything the tracker must get right (5 fps, 320 x 240):
#   0-5   the astronaut, the camera drifting;       6-8   panning away until her face has left;
#   9-10  no face (the pan holds on the wall);       11-13 panning back, the face re-enters;
#   14-19 cut to the cameraman;                      20-22 cut to a wall (no face);  23-27 cut to the astronaut.
STORY = [
    Shot("astronaut", 6, [(740, 150, 0.8), (760, 140, 0.85)]),
    Shot("astronaut", 8, [(760, 140, 0.85), (1110, 150, 0.85), (1110, 150, 0.85), (760, 140, 0.85)]),
    Shot("camera", 6, [(760, 170, 0.9), (745, 160, 0.9)]),
    Shot("empty", 3, [(700, 256, 0.8)]),
    Shot("astronaut", 5, [(750, 150, 0.8), (735, 155, 0.82)]),
]


class Counting:
    """Wraps a detector's ``detect`` to count the frames it is run on."""

    def __init__(self, det):
        self.det, self.frames = det, 0
        self.inner, det.detect = det.detect, self

    def __call__(self, frames):
        self.frames += len(frames)
        return self.inner(frames)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    path = tmp_path_factory.mktemp("faces") / "story.mp4"
    truth = write_face_video(path, STORY, 240, 320, fps=5)
    frames, _ = load_frames(path)
    assert len(frames) == len(truth) == 28
    ref = build_face_detector("mtcnn", detect_every=1)
    trk = build_face_detector("mtcnn")  # the default: detect-and-track
    counter = Counting(trk)
    per_frame, tracked = ref(frames), trk(frames)
    return {"frames": frames, "truth": truth, "per_frame": per_frame, "tracked": tracked, "calls": counter.frames}


def _ious(a, b):
    both = a.mask & b.mask
    return box_iou(a.boxes[both], b.boxes[both]).diag(), both


def test_detect_and_track_is_the_default():
    det = build_face_detector("mtcnn")
    assert det.policy == TrackingPolicy() and det.policy.detect_every == 5
    assert build_face_detector("mtcnn", detect_every=1).policy.per_frame
    opts = det.cache_options()
    assert opts["detect_every"] == 5 and opts["detect_size"] == det.detect_size and "cut_threshold" in opts


def test_tracked_boxes_match_per_frame_detection(story):
    a, b = story["per_frame"], story["tracked"]
    ious, both = _ious(a, b)
    assert (a.mask == b.mask).float().mean() >= 0.95, (a.mask.tolist(), b.mask.tolist())
    assert ious.mean() >= 0.9 and ious.min() >= 0.75, ious
    assert story["calls"] <= 0.7 * len(story["frames"])  # the point: fewer detector runs


def test_masks_around_gaps_and_cuts(story):
    truth, b = story["truth"], story["tracked"]
    mask = b.mask.tolist()
    gone = [t for t, x in enumerate(truth) if not len(x.visible) or x.visible.max() == 0]
    assert {9, 10, 20, 21, 22} <= set(gone)
    assert not any(mask[t] for t in gone)  # really gone: masked, not carried
    assert (b.crops[~b.mask] == 0).all() and (b.boxes[~b.mask] == 0).all()
    # in view: found, on the right face (the camera shot's boxes are the cameraman's, from its first frame on)
    for t, x in enumerate(truth):
        if len(x.visible) and x.visible.min() == 1.0 and t not in (7, 12):  # 7, 12: the face at the frame's edge
            assert mask[t], t
            tight = torch.from_numpy(x.boxes[:1])
            assert box_iou(b.boxes[t][None], tight).item() > 0.3, t  # the square crop box holds the true face


def test_shot_cuts_find_the_cuts_and_not_the_pans():
    for name, cuts in (("cut", [12]), ("gap", [10, 17]), ("pan_zoom", []), ("leave_reenter", []),
                       ("two_faces", [])):
        frames = torch.from_numpy(np.stack([f for f, _ in render_frames(scene(name), 240, 320)]))
        assert shot_cuts(frames, TrackingPolicy().cut_threshold) == cuts, name
    still = torch.from_numpy(np.stack([f for f, _ in render_frames(STORY[:1], 240, 320)]))
    assert shot_cuts(still[:1], 0.4) == []


def test_two_faces_keeps_the_large_one():
    frames = torch.from_numpy(np.stack([f for f, _ in render_frames(scene("two_faces")[:1], 240, 320)][::3]))
    truth = [t for _, t in render_frames(scene("two_faces"), 240, 320)][::3]
    faces = build_face_detector("mtcnn", detect_every=3)(frames)
    assert faces.mask.all()
    for t in range(len(frames)):
        big, small = (torch.from_numpy(truth[t].boxes[i:i + 1]) for i in (0, 1))
        assert box_iou(faces.boxes[t][None], big).item() > box_iou(faces.boxes[t][None], small).item()


def test_an_occlusion_between_keyframes_is_not_interpolated():
    """The face is covered on frames 2-3 of 6, while the rest of the picture is unchanged: no cut, but the
    interpolated box would hold no face; the tracker re-detects there and masks them."""
    frames = torch.from_numpy(np.stack([f for f, _ in render_frames([Shot("astronaut", 6, [(740, 150, 0.8)])],
                                                                    240, 320)])).clone()
    frames[2:4, 20:130, 100:190] = torch.tensor([40, 90, 160], dtype=torch.uint8)  # a blue card over the face
    assert shot_cuts(frames, 0.4) == []
    faces = build_face_detector("mtcnn", detect_every=5)(frames)
    assert faces.mask.tolist() == [True, True, False, False, True, True]


def test_per_frame_setting_is_per_frame_detection(story):
    frames = story["frames"][:6]  # one shot: per-frame = the detector on every frame + track_main_face
    det = build_face_detector("mtcnn", detect_every=1)
    faces = det(frames)
    track = track_main_face(det.detect(frames), **det.tracking)
    assert torch.equal(faces.mask, track.found)
    from lightning_emo.extractors.face_detect import square_boxes

    assert torch.allclose(faces.boxes, square_boxes(track.boxes, det.margin, 240, 320), atol=1e-4)


def test_bad_tracking_options_are_refused():
    for opts, words in (({"detect_every": 0}, "detect_every must be an integer >= 1"),
                        ({"cut_threshold": 2.0}, "cut_threshold must be a number in [0, 1]"),
                        ({"detect_evry": 2}, "unknown option(s) detect_evry"),
                        ({"detect_size": 8}, "detect_size must be an integer >= 32")):
        with pytest.raises(ValueError, match=r".*" + words.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            build_face_detector("mtcnn", **opts)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENES))
def test_scenes_tracked_vs_per_frame(name, tmp_path):
    path = tmp_path / f"{name}.mp4"
    write_face_video(path, scene(name), 240, 320, fps=5)
    frames, _ = load_frames(path)
    a = build_face_detector("mtcnn", detect_every=1)(frames)
    trk = build_face_detector("mtcnn")
    counter = Counting(trk)
    b = trk(frames)
    ious, _ = _ious(a, b)
    assert (a.mask == b.mask).float().mean() >= 0.95
    assert ious.mean() >= 0.9 and ious.min() >= 0.75
    assert counter.frames < len(frames)


# ------------------------------------------------------------------ the setting in stores, Hub folders and infer


@pytest.fixture(scope="module")
def face_corpus(tmp_path_factory):
    from lightning_emo.data.manifest import Clip, Manifest

    root = tmp_path_factory.mktemp("facecorpus")
    write_face_video(root / "clips" / "a.mp4", STORY[:1], 240, 320, fps=5)
    Manifest([Clip("a", "clips/a.mp4", "happy", "train", "s1")], ["happy", "sad"], root).write(root / "manifest.csv")
    return root


def test_extract_records_the_face_pipeline_in_the_cache_key(face_corpus, tmp_path):
    from lightning_emo.cli import main as cli_main
    from lightning_emo.data.store import FeatureStore, StaleStoreError
    from lightning_emo.extractors.extract import run_extraction

    manifest, out = str(face_corpus / "manifest.csv"), tmp_path / "features"
    assert cli_main(["extract", "--manifest", manifest, "--extractor", "hog", "--fps", "5", "--out", str(out),
                     "--num-workers", "0"]) == 0
    key = FeatureStore.open(out / "hog").key
    assert key["detector"] == "mtcnn"
    assert key["detector_options"] == {**TrackingPolicy().to_dict(), "detect_size": 640}
    # per-frame detection is another configuration: refused on the same store, naming the field
    with pytest.raises(StaleStoreError, match=r"detector_options\.detect_every: 5 \(store\) vs 1 \(requested\)"):
        run_extraction(manifest, "hog", out, fps=5, detector_options={"detect_every": 1}, num_workers=0)
    assert cli_main(["extract", "--manifest", manifest, "--extractor", "hog", "--fps", "5", "--out", str(out),
                     "--name", "hog_every_frame", "--detect-every", "1", "--num-workers", "0"]) == 0
    per_frame = FeatureStore.open(out / "hog_every_frame")
    assert per_frame.key["detector_options"]["detect_every"] == 1
    (a, ma), (b, mb) = FeatureStore.open(out / "hog").get("a"), per_frame.get("a")
    assert ma.all() and mb.all() and a.shape == b.shape


def test_hub_configs_carry_the_detector_settings(tmp_path, face_corpus, capsys):
    from lightning_emo.cli import main as cli_main
    from lightning_emo.hub._testing import tiny_model
    from lightning_emo.hub.config import RecognizerError
    from lightning_emo.hub.recognizer import Recognizer

    paths = tiny_model(tmp_path / "tiny")
    model = Recognizer.from_pretrained(str(paths["export"]))
    det = model.config["modalities"]["video"]["input"]["detector"]
    det["name"], det["options"] = "mtcnn", {}  # a config of before detect-and-track: no tracking options
    model.save_pretrained(tmp_path / "old")
    old = Recognizer.from_pretrained(str(tmp_path / "old"))
    assert old._runtime("video").module.detector.policy == TrackingPolicy()  # loads, with today's default
    old.set_detector_options(detect_every=1)
    assert old._runtime("video").module.detector.policy.per_frame
    old.save_pretrained(tmp_path / "per_frame")
    again = Recognizer.from_pretrained(str(tmp_path / "per_frame"))
    assert again.config["modalities"]["video"]["input"]["detector"]["options"] == {"detect_every": 1}
    clip = str(face_corpus / "clips" / "a.mp4")
    assert again.predict(clip).missing == {"audio": "no_audio"}  # the face is found on every frame
    # from the command line; a bad option is one clear line, before any file is read
    assert cli_main(["infer", clip, "--model", str(tmp_path / "old"), "--detector-option", "detect_every=2",
                     "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["infer", clip, "--model", str(tmp_path / "old"), "--detector-option", "detect_every=0",
                     "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "detect_every must be an integer >= 1" in err and "Traceback" not in err
    with pytest.raises(RecognizerError, match="no video modality"):
        Recognizer.from_checkpoints({"audio": paths["audio"]}).set_detector_options(detect_every=1)
