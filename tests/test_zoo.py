"""The model zoo: entries are valid and load, the README table is in sync, zoo names load (local and pinned Hub)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from hf_cache import make_hf_cache

from lightning_emo.cli import main as cli_main
from lightning_emo.hub import Recognizer, RecognizerError
from lightning_emo.hub._testing import CLASSES, random_clip, tiny_model
from lightning_emo.hub.zoo import README, entry_names, get_entry, list_entries, render_readme, zoo_dir




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_model")
    paths = tiny_model(root)
    paths["clip"] = random_clip(root / "clip.mp4", seconds=1.5)
    return paths


# ---------------------------------------------------------------------------------------------- the repository's zoo


def test_zoo_readme_is_in_sync_with_the_entries():
    """Regenerate with `lightning-emo zoo --write-readme` (or lightning_emo.hub.zoo.write_readme())."""
    path = zoo_dir() / README
    assert path.is_file(), f"{path} is missing: run `lightning-emo zoo --write-readme`"
    assert path.read_text(encoding="utf-8") == render_readme(list_entries()), \
        f"{path} is out of date: run `lightning-emo zoo --write-readme`"


@pytest.mark.parametrize("name", entry_names() or ["(none)"])
def test_every_zoo_entry_exists_and_matches_its_model(name):
    if name == "(none)":
        pytest.skip("the zoo has no entries yet")
    entry = get_entry(name)
    if entry.repo_id is not None:
        assert len(entry.revision) == 40  # pinned; the files are on the Hub, not checked here
        return
    folder = entry.local_path()
    assert folder.is_dir() and zoo_dir().resolve() in folder.parents, f"{name}: {folder} must lie inside zoo/"
    model = Recognizer.from_pretrained(name)
    assert model.classes == entry.classes
    assert {m: mc["extractor"]["name"] for m, mc in model.config["modalities"].items()} == \
        {m: e.split(" ")[0] for m, e in entry.extractors.items()}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 20e6, f"{name}: {size / 1e6:.1f} MB in the repository; keep zoo folders small (heads only)"


# ---------------------------------------------------------------------------------------------- a zoo of our own


def test_export_into_a_zoo_and_load_by_name(tiny, tmp_path, capsys, monkeypatch):
    zoo = tmp_path / "zoo"
    rc = cli_main([str(a) for a in (
        "export", "--ckpt", tiny["audio"], "--ckpt", tiny["video"], "--fusion", tiny["rule"],
        "--features", f"video={tiny['store']}", "--license", "apache-2.0", "--corpus", "random",
        "--split-protocol", "random features", "--zoo-entry", "tiny-demo", "--zoo", zoo,
        "--description", "a plumbing test")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (zoo / "models" / "tiny-demo" / "model.safetensors").is_file() and (zoo / "tiny-demo.yaml").is_file()
    entry = yaml.safe_load((zoo / "tiny-demo.yaml").read_text())
    assert entry["source"] == {"path": "models/tiny-demo"} and entry["classes"] == CLASSES
    assert entry["extractors"] == {"audio": "mfcc", "video": "hog"} and entry["fusion"] == "prior"
    assert set(entry["metrics"]["test_accuracy"]) == {"audio", "video", "fused"}
    readme = (zoo / README).read_text()
    assert readme == render_readme(list_entries(zoo)) and "| `tiny-demo` | random | 4 | mfcc / hog |" in readme

    by_name = Recognizer.from_pretrained("tiny-demo", zoo=zoo)
    ref = Recognizer.from_pretrained(tiny["export"]).predict(tiny["clip"])
    np.testing.assert_array_equal(by_name.predict(tiny["clip"]).fused, ref.fused)
    monkeypatch.setenv("LIGHTNING_EMO_ZOO", str(zoo))
    assert cli_main(["infer", str(tiny["clip"]), "--model", "tiny-demo"]) == 0
    assert cli_main(["zoo"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-demo" in listing and "zoo/models/tiny-demo" in listing
    assert cli_main(["zoo", "--check"]) == 0
    (zoo / README).write_text(readme.replace("tiny-demo", "stale"))
    assert cli_main(["zoo", "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli_main(["zoo", "--write-readme"]) == 0 and cli_main(["zoo", "--check"]) == 0


def test_hub_entry_needs_a_pinned_commit_and_loads_offline(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    commit = make_hf_cache(cache, "org/tiny", {n: tiny["export"] / n for n in
                                               ("config.json", "model.safetensors", "README.md")})
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    assert cli_main(["zoo", "--zoo", str(zoo), "--add", "tiny-hub", "--model-dir", str(tiny["export"]),
                     "--repo-id", "org/tiny", "--revision", commit]) == 0
    entry = get_entry("tiny-hub", zoo)
    assert entry.reference == f"hf-hub:org/tiny@{commit}"
    model = Recognizer.from_pretrained("tiny-hub", zoo=zoo, cache_dir=cache)
    assert model.source == {"repo_id": "org/tiny", "revision": commit}
    assert "[`org/tiny`](https://huggingface.co/org/tiny/tree/" in (zoo / README).read_text()

    data = yaml.safe_load((zoo / "tiny-hub.yaml").read_text())
    data["source"]["revision"] = "main"
    (zoo / "tiny-hub.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecognizerError, match="pinned revision"):
        list_entries(zoo)


def test_local_entry_must_live_inside_the_zoo(tiny, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    with pytest.raises(RecognizerError, match="not inside the zoo directory"):
        from lightning_emo.hub.publish import add_entry

        add_entry("outside", tiny["export"], zoo=zoo)
    shutil.copytree(tiny["export"], zoo / "models" / "inside")
    with pytest.raises(RecognizerError, match="no zoo model 'absent'"):
        get_entry("absent", zoo)


def test_export_from_a_demo_run_folder(tiny, tmp_path, capsys):
    """`export --run` finds the best checkpoints, stores, manifest and rule of a `lightning-emo demo` output."""
    import json

    from lightning_emo.data.manifest import Clip, Manifest
    from lightning_emo.extractors.audio import build_mfcc
    from lightning_emo.hub._testing import write_feature_store

    run = tmp_path / "demo"
    for name, ckpt, score in (("mfcc", tiny["audio"], "0.5000"), ("hog", tiny["video"], "0.7500")):
        folder = run / "runs" / name / "fit" / "checkpoints"
        folder.mkdir(parents=True)
        shutil.copy(ckpt, folder / f"best-epoch=3-val_acc={score}.ckpt")
        shutil.copy(ckpt, folder / "best-epoch=1-val_acc=0.2500.ckpt")
    mfcc = write_feature_store(run / "features" / "mfcc", build_mfcc().spec,
                               {"c0": (np.zeros((5, 39), np.float32), None)})
    shutil.copytree(tiny["fusion"], run / "fusion")
    splits = ["train", "val", "test"] * 4
    clips = [Clip(f"c{i}", f"c{i}.mp4", CLASSES[i % 4], s, f"spk{i}") for i, s in enumerate(splits)]
    manifest = Manifest(clips, CLASSES, tmp_path, corpus="synthetic").write(tmp_path / "manifest.csv")
    (run / "protocol.json").write_text(json.dumps({"manifest": str(manifest), "stores": {
        "mfcc": str(mfcc.path), "hog": str(tiny["store"])}}))
    zoo = tmp_path / "zoo"
    rc = cli_main(["export", "--run", str(run), "--audio", "mfcc", "--video", "hog", "--rule", "prior",
                   "--license", "apache-2.0", "--zoo-entry", "synthetic-demo", "--zoo", str(zoo)])
    assert rc == 0, capsys.readouterr().err
    config = Recognizer.from_pretrained("synthetic-demo", zoo=zoo).config
    assert config["modalities"]["audio"]["checkpoint"]["file"] == "best-epoch=3-val_acc=0.5000.ckpt"
    assert config["corpus"]["name"] == "synthetic" and config["split_protocol"].startswith("speaker-independent")
    assert config["fusion"]["source"] == "mfcc+hog/prior/rule.json"
    assert get_entry("synthetic-demo", zoo).split_protocol == config["split_protocol"]
    rc = cli_main(["export", "--run", str(run), "--audio", "mfcc", "--video", "hog", "--rule", "cascade_audio",
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and "rules fitted for mfcc+hog are in prior" in capsys.readouterr().err
