"""Face extractors: dims, masking, batching, and weights loaded through the real paths (torch.hub cache, file, HF cache)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from hf_cache import make_hf_cache
from lightning_emo.extractors import EXTRACTORS, WeightsNotFoundError, build_extractor
from lightning_emo.extractors.base import torch_hub_checkpoint
from lightning_emo.extractors.face import FacePipeline, hog_dim
from lightning_emo.extractors.face_cnn import FACE_CNN_POOL5, FaceCNN, load_face_cnn, save_face_cnn

TIMM_MODEL = "mobilenetv3_small_050.lamb_in1k"  # small, 1024-d pooled features
FACE_NAMES = {"hog", "facenet_vggface2", "facenet_casia", "timm", "face_cnn"}


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """An empty Hugging Face cache read offline (huggingface_hub reads its env at import: patch constants)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def face_cnn_file(tmp_path_factory):
    torch.manual_seed(0)
    model = FaceCNN(num_identities=12, fc_dims=(64, 64)).eval()
    return save_face_cnn(model, tmp_path_factory.mktemp("fcnn") / "face_cnn.safetensors"), model


def _facenet_state(dataset_classes: int = 8631) -> dict[str, torch.Tensor]:
    """A random InceptionResnetV1 state dict laid out like facenet-pytorch's files (with the logits layer)."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(1)
    net = InceptionResnetV1(classify=True, num_classes=dataset_classes).eval()
    return net.state_dict()


def _build(name: str, face_cnn_file) -> torch.nn.Module:
    if name == "hog":
        return build_extractor("hog", crop_size=32, pixels_per_cell=8, cells_per_block=2)
    if name == "facenet":
        return build_extractor("facenet_vggface2", pretrained=False, batch_size=2)
    if name == "timm":
        return build_extractor("timm", model_name=TIMM_MODEL, pretrained=False, crop_size=64, batch_size=2)
    return build_extractor("face_cnn", weights=face_cnn_file[0], batch_size=2)


def test_face_extractors_are_registered():
    assert FACE_NAMES <= set(EXTRACTORS.names())


@pytest.mark.parametrize("name", ["hog", "facenet", "timm", "face_cnn"])
def test_extractor_dims_masking_and_batching(name, face_cnn_file):
    ext = _build(name, face_cnn_file)
    spec = ext.spec
    assert spec.modality == "face" and spec.crop_size
    expected = {"hog": hog_dim(32, 9, 8, 2), "facenet": 512, "timm": 1024, "face_cnn": FACE_CNN_POOL5}[name]
    assert spec.dim == expected
    s = spec.crop_size
    torch.manual_seed(0)
    x = torch.rand(2, 3, 3, s, s)
    lengths = torch.tensor([3, 2])
    feats, out_len = ext(x, lengths)
    assert feats.shape == (2, 3, spec.dim) and torch.equal(out_len, lengths)
    assert feats[1, 2].abs().sum() == 0 and feats[0].abs().sum(-1).gt(0).all()  # padding -> zeros

    # padded batch == one clip at a time
    for i in range(2):
        single, _ = ext(x[i:i + 1, :lengths[i]], lengths[i:i + 1])
        assert torch.allclose(single[0], feats[i, :lengths[i]], atol=1e-4, rtol=1e-4)

    # masked (no-face) frames get zeros and do not change the others, whatever their content
    mask = torch.tensor([[True, False, True], [False, True, False]])
    x2 = x.clone()
    x2[~mask] = torch.rand_like(x2[~mask])
    masked, _ = ext(x2, lengths, mask=mask)
    assert masked[~mask].abs().sum() == 0
    assert torch.allclose(masked[mask], feats[mask], atol=1e-4, rtol=1e-4)

    with pytest.raises(ValueError, match=rf"expects face crops \(B, N, 3, {s}, {s}\)"):
        ext(torch.rand(2, 4, 3, s + 1, s + 1), lengths)


# ------------------------------------------------------------------------------------------------
# facenet: torch.hub checkpoint cache and explicit file


@pytest.mark.parametrize("name,filename", [("facenet_vggface2", "20180402-114759-vggface2.pt"),
                                           ("facenet_casia", "20180408-102900-casia-webface.pt")])
def test_facenet_weights_from_facenet_pytorchs_cache_and_a_file(name, filename, tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1
    from facenet_pytorch.models.inception_resnet_v1 import load_weights

    # facenet-pytorch's own folder, not torch.hub's
    target = Path(os.environ["TORCH_HOME"]) / "checkpoints" / filename
    assert target != torch_hub_checkpoint(filename)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LIGHTNING_EMO_WEIGHTS_URL")  # the message names upstream's URL (nothing is downloaded offline)
    with pytest.raises(WeightsNotFoundError, match=rf"{filename}.*{re.escape(str(target))}.*offline.*"
                                                   rf"github.com/timesler/facenet-pytorch/releases/.*/{filename}"):
        build_extractor(name)
    state = _facenet_state(8631 if "vgg" in name else 10575)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    # facenet-pytorch itself finds the same file there (no download: it exists)
    load_weights(InceptionResnetV1(classify=True, num_classes=8631 if "vgg" in name else 10575),
                 "vggface2" if "vgg" in name else "casia-webface")

    from_cache = build_extractor(name)
    assert from_cache.spec.weights.kind == "facenet" and from_cache.spec.weights.filename == filename
    assert "MIT" in from_cache.spec.weights.license
    explicit = build_extractor(name, weights=target)
    assert explicit.spec.weights.kind == "file" and explicit.spec.weights.sha256
    # the same weights without BatchNorm's num_batches_tracked counters (files may carry them or not)
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, bare)
    no_counters = build_extractor(name, weights=bare)

    ref = InceptionResnetV1(classify=False).eval()
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})
    x = torch.rand(1, 2, 3, 160, 160)
    lengths = torch.tensor([2])
    a, _ = from_cache(x, lengths)
    b, _ = explicit(x, lengths)
    c, _ = no_counters(x, lengths)
    with torch.no_grad():
        expected = ref((x[0] * 255 - 127.5) / 128)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.allclose(a[0], expected, atol=1e-5)
    assert torch.allclose(a.norm(dim=-1), torch.ones(1, 2), atol=1e-5)  # L2-normalised embeddings


def test_facenet_rejects_a_wrong_file(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="does not fit facenet-pytorch's InceptionResnetV1"):
        build_extractor("facenet_vggface2", weights=bad)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build_extractor("facenet_vggface2", weights=tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------
# timm: Hub cache (offline, pinned revision), hf-hub: names, explicit file


@pytest.fixture(scope="module")
def timm_reference():
    import timm

    torch.manual_seed(2)
    net = timm.create_model(TIMM_MODEL.split(".")[0], pretrained=False).eval()
    return net


def _timm_features(net, x: torch.Tensor) -> torch.Tensor:
    import copy

    import timm

    ref = copy.deepcopy(net)
    ref.reset_classifier(0)
    cfg = timm.data.resolve_model_data_config(ref)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return ref((x - mean) / std)


def test_timm_weights_from_the_hub_cache_offline(timm_reference, hf_offline, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_reference.state_dict().items()}, str(weights))
    repo = f"timm/{TIMM_MODEL}"
    with pytest.raises(WeightsNotFoundError, match=rf"{repo}/model.safetensors@main.*offline.*hf download"):
        build_extractor("timm", model_name=TIMM_MODEL)
    commit = make_hf_cache(hf_offline, repo, {"model.safetensors": weights})

    pinned = build_extractor("timm", model_name=TIMM_MODEL, revision=commit, crop_size=64)
    assert pinned.spec.weights.kind == "timm" and pinned.spec.weights.uri == repo
    assert pinned.spec.weights.revision == commit and pinned.spec.options["revision"] == commit
    assert pinned.spec.weights.license == "apache-2.0" and pinned.spec.dim == 1024
    unpinned = build_extractor("timm", model_name=TIMM_MODEL, crop_size=64)  # main -> the commit is recorded
    assert unpinned.spec.weights.revision == commit
    explicit = build_extractor("timm", model_name=TIMM_MODEL, weights=weights, crop_size=64)
    assert explicit.spec.weights.kind == "file"
    default_size = build_extractor("timm", model_name=TIMM_MODEL, revision=commit)
    assert default_size.spec.crop_size == 224  # from timm's pretrained config

    x = torch.rand(1, 2, 3, 64, 64)
    lengths = torch.tensor([2])
    expected = _timm_features(timm_reference, x[0])
    for ext in (pinned, unpinned, explicit):
        out, _ = ext(x, lengths)
        assert torch.allclose(out[0], expected, atol=1e-5)
    with pytest.raises(WeightsNotFoundError, match="not in the Hugging Face cache"):
        build_extractor("timm", model_name=TIMM_MODEL, revision="0" * 40)
    # loading is strict: a checkpoint missing a tensor is refused, not silently half-loaded
    partial = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in timm_reference.state_dict().items() if k != "conv_stem.weight"},
              str(partial))
    with pytest.raises(ValueError, match="does not fit timm model"):
        build_extractor("timm", model_name=TIMM_MODEL, weights=partial)


def test_timm_hf_hub_model_with_its_config(timm_reference, hf_offline, tmp_path):
    from timm.models import save_for_hf

    export = tmp_path / "export"
    save_for_hf(timm_reference, str(export), safe_serialization=True)
    files = {p.name: p for p in export.iterdir()}
    assert {"config.json", "model.safetensors"} <= set(files)
    commit = make_hf_cache(hf_offline, "someone/face-mobilenet", files)

    ext = build_extractor("timm", model_name=f"hf-hub:someone/face-mobilenet@{commit}", crop_size=64)
    assert ext.spec.weights.kind == "hf-hub" and ext.spec.weights.revision == commit
    x = torch.rand(1, 2, 3, 64, 64)
    out, _ = ext(x, torch.tensor([2]))
    assert torch.allclose(out[0], _timm_features(timm_reference, x[0]), atol=1e-5)
    with pytest.raises(ValueError, match="pins revision"):
        build_extractor("timm", model_name=f"hf-hub:someone/face-mobilenet@{commit}", revision="v1")


def test_timm_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        build_extractor("timm", model_name="no_such_net")
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        build_extractor("timm", model_name="resnet18.no_such_tag")


# ------------------------------------------------------------------------------------------------
# the paper's face CNN


def test_face_cnn_geometry_and_round_trip(face_cnn_file, tmp_path):
    path, model = face_cnn_file
    x = torch.rand(3, 3, 100, 100)
    with torch.no_grad():
        assert model.features(x).shape == (3, 256, 6, 6)
        assert model.pool5(x).shape == (3, FACE_CNN_POOL5) and model(x).shape == (3, 12)
        loaded = load_face_cnn(path).eval()
        assert loaded.config == model.config
        assert torch.equal(loaded(x), model(x))
    for norm in ("lrn", "none"):
        m = FaceCNN(num_identities=3, fc_dims=(8, 8), norm=norm).eval()
        p = save_face_cnn(m, tmp_path / f"{norm}.safetensors")
        with torch.no_grad():
            assert torch.equal(load_face_cnn(p).eval()(x), m(x))
    with pytest.raises(ValueError, match=r"expects crops \(B, 3, 100, 100\)"):
        model.pool5(torch.rand(1, 3, 96, 96))


def test_face_cnn_weights_from_a_file_and_the_hub_cache(face_cnn_file, hf_offline):
    path, model = face_cnn_file
    with pytest.raises(WeightsNotFoundError, match=r"weights=PATH"):
        build_extractor("face_cnn")
    with pytest.raises(WeightsNotFoundError, match="not in the Hugging Face cache"):
        build_extractor("face_cnn", repo_id="someone/face-cnn", revision="main")
    commit = make_hf_cache(hf_offline, "someone/face-cnn", {"model.safetensors": path})
    from_hub = build_extractor("face_cnn", repo_id="someone/face-cnn", revision=commit)
    from_file = build_extractor("face_cnn", weights=path)
    assert from_hub.spec.weights.kind == "hf-hub" and from_hub.spec.weights.revision == commit
    assert from_file.spec.weights.kind == "file" and from_file.spec.dim == 9216 and from_file.spec.crop_size == 100
    x = torch.rand(1, 3, 3, 100, 100)
    a, _ = from_hub(x, torch.tensor([3]))
    b, _ = from_file(x, torch.tensor([3]))
    with torch.no_grad():
        expected = model.pool5(x[0])
    assert torch.equal(a, b) and torch.allclose(a[0], expected, atol=1e-5)


def test_face_cnn_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="is not a FaceCNN file"):
        build_extractor("face_cnn", weights=other)


# ------------------------------------------------------------------------------------------------
# frames -> features


def test_face_pipeline_masks_blank_frames():
    pipe = FacePipeline("hog", detector="none", extractor_options=dict(crop_size=32))
    torch.manual_seed(0)
    frames = (torch.rand(2, 4, 48, 48, 3) * 255).byte()
    frames[0, 1] = 0  # blank: no face
    out = pipe(frames, torch.tensor([4, 2]))
    assert out["x"].shape == (2, 4, pipe.spec.dim)
    assert out["mask"].tolist() == [[True, False, True, True], [True, True, False, False]]
    assert out["x"][~out["mask"]].abs().sum() == 0 and out["x"][out["mask"]].abs().sum(-1).gt(0).all()
    assert pipe.config["extractor"] == "hog" and pipe.detector.crop_size == 32
