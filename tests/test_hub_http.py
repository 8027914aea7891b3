"""The Hub round trip over real HTTP: push, pull, infer, the fit callback and timm ``hf-hub:`` backbones.

Every call goes through the real huggingface_hub client to :class:`hubserver.HubServer` on
127.0.0.1. ``HF_ENDPOINT`` is read by huggingface_hub when it is imported, so the ``hub`` fixture
sets the variable and the two module constants huggingface_hub derives from it at import
(``ENDPOINT`` and the resolve-URL template) -- what a process started with ``HF_ENDPOINT`` sees;
the slow subprocess test checks the variable alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hubserver import HubServer, tree_from_folder

from lightning_emo.cli import main as cli_main
from lightning_emo.hub import Recognizer, RecognizerError
from lightning_emo.hub._testing import (
    CLASSES,
    random_clip,
    tiny_model,
    write_feature_store,
)

TOKEN = "hf_TESTtokenDoNotPrint0123456789abcdef"
HUB_FILES = ["README.md", "config.json", "model.safetensors"]


def use_endpoint(monkeypatch, url: str) -> None:
    """Point huggingface_hub at ``url`` as ``HF_ENDPOINT=url`` at its import would have."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(c, "ENDPOINT", url)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(monkeypatch):
    server = HubServer(token=TOKEN).start()
    use_endpoint(monkeypatch, server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("LIGHTNING_EMO_HUB_TIMEOUT", "10")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    paths = tiny_model(root)
    paths["clip"] = random_clip(root / "clip.mp4", seconds=2.0)
    return paths


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _predictions(path: Path) -> list[dict]:
    preds = json.loads(path.read_text())["predictions"]
    for p in preds:
        p.pop("source")
    return preds


# ---------------------------------------------------------------------------------------------- push -> pull -> infer


def test_push_pull_infer_round_trip(tiny, hub, tmp_path, capsys, caplog):
    folder = tmp_path / "push"
    shutil.copytree(tiny["export"], folder)
    (folder / "notes.txt").write_text("not part of the model")
    rc, out, err = _run(["push", folder, "--repo-id", "org/tiny", "--private"], capsys)
    assert rc == 0, err
    commit = hub.head("org/tiny")
    assert f"hf-hub:org/tiny@{commit}" in out
    files = hub.files("org/tiny")
    assert sorted(files) == [".gitattributes", *HUB_FILES]  # notes.txt stayed home
    assert all(files[n] == (folder / n).read_bytes() for n in HUB_FILES)
    assert hub.repos["org/tiny"].private
    # the token went to the server, and nowhere else
    assert f"Bearer {TOKEN}" in hub.authorizations
    assert TOKEN not in out + err + caplog.text

    rc, _, err = _run(["infer", tiny["clip"], "--model", folder, "--json", tmp_path / "local.json", "--quiet"], capsys)
    assert rc == 0, err
    cache = tmp_path / "hf-cache"
    rc, _, err = _run(["infer", tiny["clip"], "--model", f"hf-hub:org/tiny@{commit}", "--cache-dir", cache,
                       "--json", tmp_path / "hub.json", "--quiet"], capsys)
    assert rc == 0, err
    assert _predictions(tmp_path / "hub.json") == _predictions(tmp_path / "local.json")
    resolves = [p for m, p in hub.requests if "/resolve/" in p]
    assert resolves and all(commit in p for p in resolves)  # pinned: every file of that commit

    # by branch (the server redirects main to its commit), and again offline from the cache
    rc, _, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/tiny", "--cache-dir", cache, "--json",
                       tmp_path / "main.json", "--quiet"], capsys)
    assert rc == 0, err and _predictions(tmp_path / "main.json") == _predictions(tmp_path / "local.json")
    hub.stop()
    for i, ref in enumerate((f"hf-hub:org/tiny@{commit}", "hf-hub:org/tiny")):
        rc, _, err = _run(["infer", tiny["clip"], "--model", ref, "--cache-dir", cache, "--offline", "--json",
                           tmp_path / f"offline{i}.json", "--quiet"], capsys)
        assert rc == 0, err
        assert _predictions(tmp_path / f"offline{i}.json") == _predictions(tmp_path / "local.json")


def test_push_to_a_branch_keeps_the_pinned_commit(tiny, hub, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)
    assert rc == 0, err
    first = hub.head("org/tiny")
    other = tmp_path / "other"
    shutil.copytree(tiny["export"], other)
    tensors = load_file(str(other / "model.safetensors"))
    tensors["heads.audio.output.bias"] = tensors["heads.audio.output.bias"] + 5.0 * torch.arange(len(CLASSES))
    save_file(tensors, str(other / "model.safetensors"))
    config = json.loads((other / "config.json").read_text())  # a new export binds its config to its weights
    config["weights"]["sha256"] = hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()
    (other / "config.json").write_text(json.dumps(config))
    rc, out, err = _run(["push", other, "--repo-id", "org/tiny", "--branch", "v2"], capsys)
    assert rc == 0, err
    assert hub.head("org/tiny", "main") == first and hub.head("org/tiny", "v2") != first
    cache = tmp_path / "cache"
    pinned = Recognizer.from_pretrained(f"hf-hub:org/tiny@{first}", cache_dir=cache)
    v2 = Recognizer.from_pretrained("hf-hub:org/tiny@v2", cache_dir=cache)
    assert v2.source == {"repo_id": "org/tiny", "revision": hub.head("org/tiny", "v2")}
    a, b = pinned.predict(tiny["clip"]).probs["audio"], v2.predict(tiny["clip"]).probs["audio"]
    assert not np.allclose(a, b)
    with pytest.raises(RecognizerError, match="no such revision"):
        Recognizer.from_pretrained("hf-hub:org/tiny@v3", cache_dir=cache)
    with pytest.raises(RecognizerError, match="no such model repository"):
        Recognizer.from_pretrained("hf-hub:org/absent", cache_dir=cache)


def test_the_stand_in_answers_the_real_clients_repo_calls(tiny, hub, tmp_path):
    """model_info, snapshot_download (tree listing + downloads) and create_branch, straight from huggingface_hub."""
    from huggingface_hub import HfApi, snapshot_download

    commit = hub.add_commit("org/tiny", tree_from_folder(tiny["export"], HUB_FILES))
    api = HfApi(token=TOKEN)
    info = api.model_info("org/tiny")
    assert info.sha == commit and sorted(s.rfilename for s in info.siblings) == HUB_FILES
    assert api.model_info("org/tiny", revision=commit).sha == commit
    api.create_branch("org/tiny", branch="dev")
    assert hub.head("org/tiny", "dev") == commit
    folder = Path(snapshot_download("org/tiny", revision="dev", cache_dir=tmp_path / "c"))
    assert folder.name == commit and sorted(p.name for p in folder.iterdir()) == HUB_FILES
    assert (folder / "model.safetensors").read_bytes() == (tiny["export"] / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------- failures


def test_push_refusals_name_the_cause_and_never_the_token(tiny, tmp_path, monkeypatch, capsys, caplog):
    import huggingface_hub.constants as c

    leaky = HubServer(token="hf_theRealOne", echo_headers=True).start()  # echoes request headers in errors
    use_endpoint(monkeypatch, leaky.url)
    monkeypatch.setenv("LIGHTNING_EMO_HUB_TIMEOUT", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)
        assert rc == 2 and "401" in err and "invalid or expired" in err
        assert f"Bearer {TOKEN}" in leaky.authorizations  # the server did get (and echo) it
        assert TOKEN not in out + err + caplog.text and "Traceback" not in err

        leaky.hang.add("create")
        start = time.monotonic()
        rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)
        assert rc == 2 and f"no answer from {leaky.url} within 1 s" in err and "LIGHTNING_EMO_HUB_TIMEOUT" in err
        assert time.monotonic() - start < 5
    finally:
        leaky.stop()
    rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)  # nothing listens now
    assert rc == 2 and f"connection to {leaky.url} refused" in err and TOKEN not in err

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)
    assert rc == 2 and "no Hugging Face token" in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    rc, out, err = _run(["push", tiny["export"], "--repo-id", "org/tiny"], capsys)
    assert rc == 2 and "offline" in err
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    rc, out, err = _run(["push", broken, "--repo-id", "org/tiny"], capsys)
    assert rc == 2 and "lightning-emo export" in err


def test_offline_and_not_cached_says_so(tiny, hub, tmp_path, capsys, monkeypatch):
    hub.add_commit("org/tiny", tree_from_folder(tiny["export"], HUB_FILES))
    rc, out, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/tiny", "--cache-dir", tmp_path / "c",
                         "--offline"], capsys)
    assert rc == 2 and "not in the Hugging Face cache" in err and "offline" in err and "refused" not in err
    assert "Traceback" not in err and hub.requests == []
    # the cache looked in and the command to fill it, also for the default cache and a pinned revision
    assert f"({tmp_path / 'c'})" in err and "(hf download org/tiny)" in err
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "default"))
    rc, out, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/tiny@v1", "--offline"], capsys)
    assert rc == 2 and f"({tmp_path / 'default'})" in err and "(hf download org/tiny --revision v1)" in err


def test_pulling_with_a_wrong_token_never_shows_it(tiny, tmp_path, monkeypatch, capsys, caplog):
    leaky = HubServer(token="hf_theRealOne", echo_headers=True).start()
    try:
        use_endpoint(monkeypatch, leaky.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        leaky.add_commit("org/private", tree_from_folder(tiny["export"], HUB_FILES), private=True)
        rc, out, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/private", "--cache-dir", tmp_path / "c"],
                            capsys)
    finally:
        leaky.stop()
    assert rc == 2 and "no such model repository" in err and "hf auth login" in err
    assert f"Bearer {TOKEN}" in leaky.authorizations and TOKEN not in out + err + caplog.text


@pytest.mark.slow
def test_a_refused_connection_is_reported_as_refused(tiny, hub, tmp_path, capsys):
    """Not as "offline / not in cache" (huggingface_hub retries a refused lookup 5 times: ~25 s)."""
    hub.add_commit("org/tiny", tree_from_folder(tiny["export"], HUB_FILES))
    url = hub.url
    hub.stop()
    rc, out, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/tiny", "--cache-dir", tmp_path / "c"], capsys)
    assert rc == 2 and f"connection to {url} refused" in err and "offline" not in err and "Traceback" not in err


@pytest.mark.slow
def test_a_silent_hub_ends_the_download_within_the_stated_time(tiny, hub, tmp_path, monkeypatch, capsys):
    """Each request waits LIGHTNING_EMO_HUB_TIMEOUT s; huggingface_hub retries the lookup 5 times (~6 t + 25 s)."""
    hub.add_commit("org/tiny", tree_from_folder(tiny["export"], HUB_FILES))
    monkeypatch.setenv("LIGHTNING_EMO_HUB_TIMEOUT", "1")
    hub.hang.add("resolve")
    start = time.monotonic()
    rc, out, err = _run(["infer", tiny["clip"], "--model", "hf-hub:org/tiny", "--cache-dir", tmp_path / "c"], capsys)
    assert rc == 2 and f"no answer from {hub.url} in time" in err and "LIGHTNING_EMO_HUB_TIMEOUT" in err
    assert "Traceback" not in err and time.monotonic() - start < 6 * 1 + 25 + 10


# ---------------------------------------------------------------------------------------------- the fit callback


def test_hub_push_callback_pushes_the_best_checkpoint_over_http(hub, tmp_path):
    """A real `fit` on a feature store: the callback exports the best checkpoint and pushes it; it loads back."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_emo.data.datamodule import FeatureDataModule
    from lightning_emo.data.manifest import Clip, Manifest
    from lightning_emo.extractors.face import HOGExtractor
    from lightning_emo.fusion.callback import FusionPriorCallback
    from lightning_emo.hub.callback import HubPushCallback
    from lightning_emo.models.module import EmotionModule

    hog = HOGExtractor(crop_size=32, fps=5.0).spec
    rng = np.random.default_rng(0)
    splits = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    clips = [Clip(f"c{i}", f"c{i}.mp4", CLASSES[i % 2], s, f"spk{i}") for i, s in enumerate(splits)]
    store = write_feature_store(tmp_path / "features" / "hog", hog,
                                {c.clip_id: (rng.random((4, hog.dim), dtype=np.float32) + (i % 2), None)
                                 for i, c in enumerate(clips)}, detector="none", fps=5.0)
    manifest = Manifest(clips, CLASSES, tmp_path, corpus="random").write(tmp_path / "manifest.csv")
    dm = FeatureDataModule(str(manifest), str(store.path), batch_size=4)
    module = EmotionModule(input_dim=dm.input_dim, classes=dm.classes, modality=dm.modality,
                           extractor_spec=dm.extractor_spec, hidden_dim=8)
    callback = HubPushCallback("org/from-fit", private=True, export_dir=str(tmp_path / "hub_export"),
                               license="apache-2.0")
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt",
                                                                               monitor="val/acc", mode="max"),
                                                              FusionPriorCallback(), callback])
    trainer.fit(module, datamodule=dm)
    commit = hub.head("org/from-fit")
    assert callback.state_dict()["pushed"] == {"repo_id": "org/from-fit", "commit": commit, "revision": "main"}
    assert hub.repos["org/from-fit"].private
    files = hub.files("org/from-fit")
    assert all(files[n] == (tmp_path / "hub_export" / n).read_bytes() for n in HUB_FILES)
    assert "hf-hub:org/from-fit" in files["README.md"].decode()
    pulled = Recognizer.from_pretrained(f"hf-hub:org/from-fit@{commit}", cache_dir=tmp_path / "cache")
    local = Recognizer.from_pretrained(tmp_path / "hub_export")
    cfg = pulled.config
    assert cfg["modalities"]["video"]["checkpoint"]["file"] == Path(trainer.checkpoint_callback.best_model_path).name
    assert cfg["corpus"]["name"] == "random" and pulled.classes == CLASSES
    assert "speaker-independent" in cfg["split_protocol"]
    assert cfg["modalities"]["video"]["input"]["detector"]["name"] == "none"
    for k, v in local.state_dict().items():
        torch.testing.assert_close(pulled.state_dict()[k], v)


# ---------------------------------------------------------------------------------------------- timm hf-hub: names


def test_timm_backbone_by_hf_hub_name_over_http(hub, tmp_path, monkeypatch):
    import timm
    from timm.models import save_for_hf

    from lightning_emo.extractors import build_extractor

    torch.manual_seed(0)
    net = timm.create_model("test_resnet.r160_in1k", pretrained=False).eval()
    save_for_hf(net, str(tmp_path / "timm"), safe_serialization=True)
    commit = hub.add_commit("org/tiny-timm", tree_from_folder(tmp_path / "timm"))
    e = build_extractor("timm", model_name="hf-hub:org/tiny-timm")
    assert e.spec.weights.kind == "hf-hub" and e.spec.weights.revision == commit
    ref = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    ref.load_state_dict(net.state_dict())
    ref.reset_classifier(0)
    ref.eval()
    cfg = timm.data.resolve_model_data_config(ref)
    size = e.spec.crop_size
    x = torch.rand(1, 2, 3, size, size)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        got, _ = e(x, torch.tensor([2]))
        expected = ref((x[0] - mean) / std)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)
    # offline, from the cache, pinned
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = build_extractor("timm", model_name=f"hf-hub:org/tiny-timm@{commit}")
    with torch.no_grad():
        torch.testing.assert_close(again(x, torch.tensor([2]))[0], got)


# ---------------------------------------------------------------------------------------------- HF_ENDPOINT alone


@pytest.mark.slow
def test_console_script_round_trip_with_hf_endpoint(tiny, tmp_path):
    """The installed console script in fresh processes, configured by the environment variable only."""
    with HubServer(token=TOKEN) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("HF_HUB_CACHE", None)
        exe = [sys.executable, "-m", "lightning_emo.cli"]
        push = subprocess.run([*exe, "push", str(tiny["export"]), "--repo-id", "org/tiny"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr
        assert TOKEN not in push.stdout + push.stderr
        commit = server.head("org/tiny")
        run = subprocess.run([*exe, "infer", str(tiny["clip"]), "--model", f"hf-hub:org/tiny@{commit}", "--json",
                              str(tmp_path / "hub.json"), "--quiet"], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
    local = Recognizer.from_pretrained(tiny["export"]).predict(tiny["clip"])
    assert json.loads((tmp_path / "hub.json").read_text())["predictions"][0]["label"] == local.label
