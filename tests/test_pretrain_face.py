"""The face CNN's source task: identity folders, their seeded split and errors, training, export to ``face_cnn``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from lightning_emo.pretrain.face_data import (
    IdentityFolderDataModule,
    IdentityFolderError,
    face_transforms,
    load_image,
    scan_identity_folder,
)
from lightning_emo.pretrain.faces import FaceCNNPretraining
from lightning_emo.pretrain.synthetic import synth_identity_folder
from helpers import quiet_trainer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(fc_dims=(64, 64), optimizer="adam", lr=1e-3, dropout=0.2, scheduler=None)




@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Four drawn people, twelve 112x112 PNG crops each, in root/<identity>/."""
    return synth_identity_folder(tmp_path_factory.mktemp("faces"), n_identities=4, per_identity=12, seed=0)


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """One short CPU fit shared by the tests below."""
    tmp = tmp_path_factory.mktemp("fit")
    pl.seed_everything(0)
    dm = IdentityFolderDataModule(str(faces), batch_size=8, val_fraction=0.25, seed=0)
    model = FaceCNNPretraining(**TINY)
    before = quiet_trainer(tmp, inference_mode=False).validate(model, dm, verbose=False)[0]
    accs: list[float] = []

    class Curve(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            accs.append(float(trainer.callback_metrics["val/acc"]))

    trainer = quiet_trainer(tmp, max_epochs=4, callbacks=[Curve()])
    trainer.fit(model, dm)
    ckpt = tmp / "face.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"model": model, "dm": dm, "before": before, "accs": accs, "ckpt": ckpt, "metrics": trainer.callback_metrics}


# ------------------------------------------------------------------------------ identity folders


def test_scan_identity_folder_split_is_seeded_and_per_identity(faces):
    a = scan_identity_folder(faces, val_fraction=0.25, seed=0)
    assert a.identities == ["person_00", "person_01", "person_02", "person_03"]
    assert len(a.images) == 48 and len(a.split("val")) == 12  # 3 of every identity's 12
    assert all(sum(1 for p, y in a.split("val") if y == k) == 3 for k in range(4))
    assert all(p.startswith(a.identities[y] + "/") for p, y, _ in a.images)
    assert scan_identity_folder(faces, val_fraction=0.25, seed=0).images == a.images
    assert scan_identity_folder(faces, val_fraction=0.25, seed=1).split("val") != a.split("val")
    # a single image stays in train
    one = faces.parent / "one"
    (one / "a").mkdir(parents=True)
    (one / "b").mkdir()
    for d in ("a", "b"):
        (one / d / "x.png").write_bytes((faces / "person_00" / "000.png").read_bytes())
    assert [s for _, _, s in scan_identity_folder(one, val_fraction=0.5).images] == ["train", "train"]


def test_empty_identity_folder_is_an_error_naming_it(faces, tmp_path):
    root = tmp_path / "ids"
    for name in ("alice", "bob"):
        (root / name).mkdir(parents=True)
    (root / "alice" / "1.jpg").write_bytes((faces / "person_00" / "000.png").read_bytes())
    with pytest.raises(IdentityFolderError) as e:
        scan_identity_folder(root)
    assert str(root / "bob") in str(e.value) and "no images" in str(e.value)
    (root / "bob" / "notes.txt").write_text("not a face")
    with pytest.raises(IdentityFolderError, match=r"1 other files; accepted: \.jpg"):
        scan_identity_folder(root)
    with pytest.raises(IdentityFolderError, match="no identity folder has at least 5 images"):
        scan_identity_folder(root, skip_small=True, min_images=5)
    skipped = scan_identity_folder(root, skip_small=True)
    assert skipped.identities == ["alice"] and "bob" in skipped.summary()
    with pytest.raises(IdentityFolderError, match="no identity folders"):
        scan_identity_folder(tmp_path / "ids" / "alice")
    with pytest.raises(IdentityFolderError, match="not found"):
        scan_identity_folder(tmp_path / "nowhere")
    dm = IdentityFolderDataModule(str(root))
    with pytest.raises(IdentityFolderError, match="bob"):
        dm.setup("fit")


def test_unreadable_image_is_named(faces, tmp_path):
    root = tmp_path / "ids"
    for name in ("alice", "bob"):
        (root / name).mkdir(parents=True)
        (root / name / "ok.png").write_bytes((faces / "person_00" / "000.png").read_bytes())
    broken = root / "bob" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(IdentityFolderError, match=str(broken)):
        load_image(broken)
    dm = IdentityFolderDataModule(str(root), verify_images=True)
    with pytest.raises(IdentityFolderError, match=f"{broken}: unreadable image"):
        dm.setup("fit")
    dm = IdentityFolderDataModule(str(root), batch_size=4, val_fraction=0.0)  # found when the batch is read
    dm.setup("fit")
    with pytest.raises(IdentityFolderError, match=str(broken)):
        list(dm.train_dataloader())


def test_transforms_and_batches(faces):
    image = load_image(faces / "person_01" / "000.png")
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8
    train, val = face_transforms(100, train=True), face_transforms(100, train=False)
    torch.manual_seed(0)
    a, b = train(image), train(image)
    assert a.shape == (3, 100, 100) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, b)  # random crops / flips / jitter
    assert torch.equal(val(image), val(image))
    dm = IdentityFolderDataModule(str(faces), batch_size=5, val_fraction=0.25)
    dm.setup("fit")
    assert dm.num_identities == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 3, 100, 100) and batch["label"].dtype == torch.long
    assert len(next(iter(dm.val_dataloader()))["path"]) == 5


# ------------------------------------------------------------------------------ training


def test_face_cnn_learns_identities(trained):
    before, accs = trained["before"], trained["accs"]
    print(f"\nval identity accuracy: before {before['val/acc']:.3f}, per epoch {[round(a, 3) for a in accs]} "
          f"(chance 0.25)")
    assert before["val/acc"] <= 0.5
    assert max(accs) >= 0.75 and accs[-1] > 0.5
    assert trained["metrics"]["val/loss"] < before["val/loss"]


def test_checkpoint_rebuilds_and_identity_mismatch_is_an_error(trained, tmp_path):
    model = trained["model"].eval()
    again = FaceCNNPretraining.load_from_checkpoint(trained["ckpt"], map_location="cpu").eval()
    assert again.identities == model.identities == ["person_00", "person_01", "person_02", "person_03"]
    x = torch.rand(2, 3, 100, 100)
    torch.testing.assert_close(again(x), model(x))
    other = FaceCNNPretraining(identities=["a", "b", "c", "d"], **TINY)
    with pytest.raises(ValueError, match="4 identities"):
        other.on_load_checkpoint(torch.load(trained["ckpt"], map_location="cpu", weights_only=True))
    with pytest.raises(ValueError, match="the data has 4 identities"):
        quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(other, trained["dm"])


def test_export_loads_as_face_cnn_and_runs_extract_with_selection(trained, tmp_path):
    from lightning_emo.data.synthetic import synthesize
    from lightning_emo.extractors import build_extractor
    from lightning_emo.extractors.extract import extract, register_extractors
    from lightning_emo.extractors.face_cnn import load_face_cnn
    from lightning_emo.pretrain.export import export_face_cnn, main as export_main

    out = export_face_cnn(trained["ckpt"], tmp_path / "w" / "model.safetensors")
    names = json.loads((tmp_path / "w" / "model.identities.json").read_text())["identities"]
    assert names == trained["model"].identities
    net = load_face_cnn(out).eval()
    model = trained["model"].eval()
    x = torch.rand(3, 3, 100, 100)
    torch.testing.assert_close(net(x), model(x))
    register_extractors()
    ext = build_extractor("face_cnn", weights=str(out))
    assert ext.spec.dim == 9216 and ext.spec.crop_size == 100
    feats, lengths = ext(x[None], torch.tensor([3]))
    torch.testing.assert_close(feats[0], model.cnn.pool5(x))

    # pool5 features of a few synthetic clips, reduced by the random-forest selection (the paper's v1024, here k=16)
    manifest = synthesize(tmp_path / "emo", clips_per_class=1, seed=0)
    store = extract(manifest, "face_cnn", tmp_path / "features", weights=out, detector="none", fps=2,
                    num_workers=0, batch_size=4, select=16, trainer={"accelerator": "cpu"})
    assert store.dim == 16 and len(store.clip_ids) == 7 and store.path.name == "face_cnn-sel16"
    f0, _ = store.get(store.clip_ids[0])
    assert f0.shape[1] == 16 and np.isfinite(f0).all()

    assert export_main(["--ckpt", str(trained["ckpt"]), "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert export_main(["--ckpt", str(trained["ckpt"]), "--out", str(tmp_path / "x.safetensors"),
                        "--kind", "speech"]) == 2


def test_pretrain_cli_fit_with_shipped_config(faces, tmp_path, monkeypatch):
    from lightning_emo.cli import main as lightning_emo
    from lightning_emo.pretrain.export import export_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-emo"])  # as from the console script: arguments come from cli(...)
    lightning_emo(["fit", "--config", str(REPO / "configs" / "pretrain" / "face_cnn.yaml"),
         "--data.init_args.root", str(faces), "--data.init_args.num_workers", "0",
         "--data.init_args.batch_size", "8", "--model.init_args.fc_dims", "[32, 32]",
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu"])
    run = tmp_path / "runs" / "pretrain_face_cnn" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = export_checkpoint(ckpt, tmp_path / "model.safetensors")
    assert json.loads((tmp_path / "model.identities.json").read_text())["identities"][0] == "person_00"
    assert out.is_file()
