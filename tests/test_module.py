"""EmotionModule: class weights, metrics against sklearn, optimizer groups, checkpoints, predictions, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_emo.data.datamodule import FeatureDataModule
from lightning_emo.data.manifest import Clip, Manifest
from lightning_emo.data.store import FeatureStore, cache_key
from lightning_emo.extractors.base import EXTRACTORS, Extractor, ExtractorSpec
from lightning_emo.models.module import (
    EmotionModule,
    ExtractorFinetuning,
    balanced_class_weights,
    confusion_image,
    stacked_layers,
    top_blocks,
)

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
PER_CLASS = {"angry": 10, "disgust": 6, "fear": 3, "happy": 9, "sad": 8, "surprise": 4, "neutral": 7}


def make_toy_corpus(root: Path, dims=(("audio", 6), ("face", 5)), seed: int = 0) -> Path:
    """A manifest (imbalanced, 7 classes) and one store per modality with class-dependent features."""
    rng = np.random.default_rng(seed)
    clips = []
    for label, n in PER_CLASS.items():
        for i in range(n):
            split = ("val", "test")[i % 2] if i < 2 else "train"
            clips.append(Clip(f"{label}_{i}", f"{label}_{i}.mp4", label, split, f"s{i % 3}"))
    manifest = Manifest(clips, CLASSES, root).write(root / "manifest.csv")
    for name, dim in dims:
        spec = ExtractorSpec(f"toy_{name}", name, dim, sample_rate=16000 if name == "audio" else None,
                             crop_size=None if name == "audio" else 32, frame_rate=10.0)
        store = FeatureStore.create(root / name, spec, cache_key(spec))
        centers = rng.normal(size=(len(CLASSES), dim)) * 2
        with store.writer() as w:
            for k, clip in enumerate(clips):
                t = int(rng.integers(3, 12))
                x = centers[CLASSES.index(clip.label)] + rng.normal(size=(t, dim))
                mask = None
                if name == "face":
                    mask = rng.random(t) > 0.25
                    mask[0] = k != 5  # clip 5 has no face at all: left out, an empty prediction row
                w.add(clip.clip_id, x.astype(np.float32), mask)
        store.merge()
    return manifest


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_corpus(root)
    return root


def _dm(toy: Path, modality: str = "audio", **kw) -> FeatureDataModule:
    return FeatureDataModule(str(toy / "manifest.csv"), str(toy / modality), batch_size=kw.pop("batch_size", 8), **kw)


def _module(dm: FeatureDataModule, **kw) -> EmotionModule:
    return EmotionModule(input_dim=dm.input_dim, num_classes=dm.num_classes, classes=dm.classes,
                         modality=dm.modality, extractor_spec=dm.extractor_spec, class_counts=dm.class_counts, **kw)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False, deterministic=True, **kw)


# ------------------------------------------------------------------------------------------- weights


def test_balanced_weights_are_sklearns():
    counts = [10, 6, 3, 9, 8, 4, 7]
    y = np.repeat(np.arange(7), counts)
    expected = compute_class_weight("balanced", classes=np.arange(7), y=y)
    np.testing.assert_allclose(balanced_class_weights(counts).numpy(), expected, rtol=1e-6)
    assert balanced_class_weights([0, 5, 5]).tolist() == [0.0, 1.0, 1.0]  # an absent class weighs nothing
    with pytest.raises(ValueError, match="non-negative counts"):
        balanced_class_weights([-1, 3])


def test_class_weights_enter_the_loss(toy):
    dm = _dm(toy)
    dm.setup()
    weights = [1.0, 2.0, 3.0, 0.5, 1.0, 1.0, 4.0]
    module = _module(dm, class_weights=weights, dropout=0.0)
    batch = next(iter(dm.train_dataloader()))
    loss = module.training_step(batch, 0)
    logits = module(batch["x"], batch["lengths"], batch["mask"])
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["label"], weight=torch.tensor(weights)))

    balanced = _module(dm, class_weights="balanced")
    torch.testing.assert_close(balanced.class_weight, balanced_class_weights(dm.class_counts))
    assert dm.class_counts == [n - 2 for n in PER_CLASS.values()]
    with pytest.raises(ValueError, match="class_weights has 3 values for 7 classes"):
        _module(dm, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="'balanced' or None"):
        _module(dm, class_weights="inverse")


def test_balanced_weights_from_the_datamodule_at_setup(toy, tmp_path):
    dm = _dm(toy)
    module = EmotionModule(input_dim=dm.input_dim, classes=dm.classes, class_weights="balanced")
    assert module.class_weight.tolist() == [1.0] * 7  # nothing known yet
    _trainer(tmp_path, fast_dev_run=True).fit(module, dm)
    torch.testing.assert_close(module.class_weight, balanced_class_weights(dm.class_counts))


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn(toy, tmp_path):
    dm = _dm(toy, "face")
    module = _module(dm)
    trainer = _trainer(tmp_path, logger=CSVLogger(tmp_path, name="m"), max_epochs=1)
    trainer.validate(module, dm)
    got = trainer.callback_metrics

    module.eval()
    ys, ps = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            ys.append(batch["label"].numpy())
            ps.append(module(batch["x"], batch["lengths"], batch["mask"]).argmax(1).numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    labels = list(range(7))
    assert float(got["val/acc"]) == pytest.approx(accuracy_score(y, p))
    recall = recall_score(y, p, average=None, labels=labels, zero_division=0)
    for c, name in enumerate(CLASSES):  # the paper's per-class accuracy
        assert float(got[f"val/recall/{name}"]) == pytest.approx(recall[c], abs=1e-6)
    assert float(got["val/f1_micro"]) == pytest.approx(f1_score(y, p, average="micro"))
    assert float(got["val/f1_weighted"]) == pytest.approx(f1_score(y, p, average="weighted", zero_division=0),
                                                          abs=1e-6)
    present = sorted(set(y) | set(p))  # torchmetrics' macro averages over classes that occur
    assert float(got["val/f1_macro"]) == pytest.approx(f1_score(y, p, average="macro", labels=present,
                                                                zero_division=0), abs=1e-6)

    records = [json.loads(line) for line in (Path(trainer.log_dir) / "confusion_val.jsonl").read_text().splitlines()]
    assert records[-1]["classes"] == CLASSES
    assert np.array_equal(np.array(records[-1]["matrix"]), confusion_matrix(y, p, labels=labels))


def test_validation_step_returns_what_the_fusion_callback_reads(toy):
    dm = _dm(toy, "face", batch_size=5)
    dm.setup()
    module = _module(dm).eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = module.validation_step(batch, 0)
    assert set(out) == {"probs", "label"} and module.modality == "face"
    assert out["probs"].shape == (5, 7) and torch.equal(out["label"], batch["label"])
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(5))


def test_confusion_matrix_image_for_tensorboard(toy, tmp_path):
    image = confusion_image(torch.tensor([[3, 1], [0, 2]]), ["a", "b"], "val")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0

    dm = _dm(toy)
    logger = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, logger=logger, max_epochs=1, limit_train_batches=2).fit(_module(dm), dm)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "val/confusion" in events.Tags()["images"]
    assert "val/acc" in events.Tags()["scalars"] and "val/recall/fear" in events.Tags()["scalars"]


# ------------------------------------------------------------------------------------------- optimizer


def test_weight_decay_on_the_output_layer_only(toy):
    dm = _dm(toy)
    module = _module(dm, weight_decay=1e-4, head_options={"activation": "tanh"})
    opt = module.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    out_ids = {id(p) for p in module.head.output.parameters()}
    assert {id(p) for p in groups["output"]["params"]} == out_ids and groups["output"]["weight_decay"] == 1e-4
    assert groups["head"]["weight_decay"] == 0.0
    assert len(groups["head"]["params"]) + len(out_ids) == len(list(module.parameters()))
    assert isinstance(opt, torch.optim.Adam) and groups["head"]["lr"] == 1e-3


def test_stacked_ssl_layers_from_the_spec():
    spec = {"name": "hubert_base", "dim": 13 * 4, "options": {"layers": "all", "num_layers": 13}}
    assert stacked_layers(spec, 52) == 13 and stacked_layers(spec, 20) is None
    assert stacked_layers({"options": {"layer": 6}}, 768) is None and stacked_layers(None, 4) is None
    module = EmotionModule(input_dim=52, num_classes=3, extractor_spec=spec)
    assert module.head.layer_sum is not None and module.head.layer_sum.num_layers == 13
    assert module(torch.randn(2, 5, 52)).shape == (2, 3)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes or classes"):
        EmotionModule(input_dim=4)
    with pytest.raises(ValueError, match="needs input_dim"):
        EmotionModule(num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3 but 2 class names"):
        EmotionModule(input_dim=4, num_classes=3, classes=["a", "b"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        EmotionModule(input_dim=4, num_classes=3, optimizer="lbfgs")
    with pytest.raises(ValueError, match="needs an extractor"):
        EmotionModule(input_dim=4, num_classes=3, unfreeze_after_epochs=2)


# ------------------------------------------------------------------------------------------- predictions


def test_predict_step_gives_nan_rows_for_clips_without_frames(toy):
    dm = _dm(toy, "face", batch_size=4)
    dm.setup()
    module = _module(dm).eval()
    batch = next(iter(dm.predict_dataloader()))
    batch["mask"][1] = False
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    assert out["clip_id"] == batch["clip_id"] and out["split"] == batch["split"]
    assert torch.equal(out["label"], batch["label"])
    assert torch.isnan(out["probs"][1]).all() and not torch.isnan(out["probs"][[0, 2, 3]]).any()
    torch.testing.assert_close(out["probs"][[0, 2, 3]].sum(1), torch.ones(3))


def test_checkpoint_alone_gives_the_same_predictions(toy, tmp_path):
    dm = _dm(toy, "face")
    pl.seed_everything(0)
    module = _module(dm, head="lstm")
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, logger=CSVLogger(tmp_path, name="c"))
    trainer.fit(module, dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    assert ckpt and Path(ckpt).is_file()
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    assert hp["classes"] == CLASSES and hp["head"] == "lstm" and hp["extractor_spec"]["name"] == "toy_face"
    assert hp["input_dim"] == 5 and hp["modality"] == "face"

    loaded = EmotionModule.load_from_checkpoint(ckpt, map_location="cpu")  # nothing but the file
    assert loaded.classes == CLASSES and loaded.modality == "face" and loaded.extractor_spec["dim"] == 5
    reference = _module(dm)
    reference.load_state_dict(raw["state_dict"])
    preds = _trainer(tmp_path).predict(loaded, dm)
    refs = _trainer(tmp_path).predict(reference, dm)
    for a, b in zip(preds, refs):
        assert a["clip_id"] == b["clip_id"]
        torch.testing.assert_close(a["probs"], b["probs"], equal_nan=True)


# ------------------------------------------------------------------------------------------- end to end


class _ToyBlocksExtractor(Extractor):
    """A tiny trainable 'SSL encoder': 160-sample frames -> a stem -> 3 blocks -> 4-d features."""

    def __init__(self, dim: int = 4):
        super().__init__(ExtractorSpec("toy_blocks", "audio", dim, sample_rate=16000, frame_rate=100.0))
        with torch.random.fork_rng():  # the same "pretrained" weights every time it is built
            torch.manual_seed(0)
            self._build(dim)

    def _build(self, dim):
        self.stem = nn.Linear(160, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Tanh()) for _ in range(3)])
        self.proj = nn.Linear(8, dim)

    def forward(self, x, lengths):
        self.check_input(x, lengths)
        t = x.shape[1] // 160
        h = self.stem(x[:, : t * 160].reshape(x.shape[0], t, 160))
        for block in self.blocks:
            h = block(h)
        return self.proj(h), torch.div(lengths, 160, rounding_mode="floor")


if "toy_blocks" not in EXTRACTORS:
    EXTRACTORS.register("toy_blocks", lambda dim=4: _ToyBlocksExtractor(dim))


class _WaveformData(pl.LightningDataModule):
    """Raw-clip batches as ClipDataModule gives them: class-dependent tones of varying length."""

    sample_rate = 16000

    def __init__(self, n: int = 24, classes: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            y = i % classes
            s = int(torch.randint(1600, 4000, (), generator=g))
            t = torch.arange(s) / 16000
            wave = 0.5 * torch.sin(2 * torch.pi * (200 + 300 * y) * t) + 0.05 * torch.randn(s, generator=g)
            self.items.append({"clip_id": f"c{i}", "split": "train", "label": y, "waveform": wave})
        self.classes = [f"k{c}" for c in range(classes)]
        self.num_classes = classes

    @staticmethod
    def collate(items):
        lengths = torch.tensor([len(it["waveform"]) for it in items])
        wave = torch.zeros(len(items), int(lengths.max()))
        for i, it in enumerate(items):
            wave[i, : lengths[i]] = it["waveform"]
        return {"clip_id": [it["clip_id"] for it in items], "split": [it["split"] for it in items],
                "label": torch.tensor([it["label"] for it in items]), "waveform": wave, "waveform_lengths": lengths}

    def train_dataloader(self):
        return DataLoader(self.items, batch_size=6, shuffle=True, collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader(self.items, batch_size=6, collate_fn=self.collate)


def test_end_to_end_with_a_frozen_extractor_then_its_top_block_unfrozen(tmp_path):
    data = _WaveformData()
    module = EmotionModule(num_classes=3, classes=data.classes, extractor="toy_blocks", unfreeze_after_epochs=1,
                           unfreeze_layers=1, extractor_lr=1e-2, hidden_dim=16)
    assert module.input_dim == 4 and module.modality == "audio" and module.extractor_spec["name"] == "toy_blocks"
    assert not any(p.requires_grad for p in module.extractor.parameters())
    assert top_blocks(module.extractor, 1) == [module.extractor.blocks[2]]
    before = {k: v.clone() for k, v in module.extractor.state_dict().items()}

    modes = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((trainer.current_epoch, pl_module.extractor.blocks[2].training,
                          pl_module.extractor.blocks[0].training, pl_module.head.training))

    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[Spy()], enable_checkpointing=True,
                       logger=CSVLogger(tmp_path, name="e2e"))
    trainer.fit(module, data)
    assert any(isinstance(c, ExtractorFinetuning) for c in trainer.callbacks)
    after = module.extractor.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.2.0.weight", "blocks.2.0.bias"}  # only the unfrozen top block learned
    assert len(trainer.optimizers[0].param_groups) == 3  # head, output, + the extractor block
    assert trainer.optimizers[0].param_groups[2]["lr"] == 1e-2
    epoch0 = {m[1:] for m in modes if m[0] == 0}
    epoch1 = {m[1:] for m in modes if m[0] == 1}
    assert epoch0 == {(False, False, True)}  # frozen extractor: eval mode (no dropout) while the head trains
    assert epoch1 == {(True, False, True)}

    # a fine-tuned extractor travels in the checkpoint
    ckpt = torch.load(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
                      map_location="cpu", weights_only=True)
    assert "extractor.blocks.2.0.weight" in ckpt["state_dict"]
    loaded = EmotionModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    torch.testing.assert_close(loaded.extractor.blocks[2][0].weight, module.extractor.blocks[2][0].weight)


def test_a_frozen_extractor_stays_out_of_the_checkpoint(tmp_path):
    data = _WaveformData()
    module = EmotionModule(num_classes=3, classes=data.classes, extractor="toy_blocks", hidden_dim=16)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True, logger=CSVLogger(tmp_path, name="f"))
    trainer.fit(module, data)
    path = trainer.checkpoint_callback.best_model_path
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("extractor.") for k in state) and any(k.startswith("head.") for k in state)
    loaded = EmotionModule.load_from_checkpoint(path)  # the extractor is rebuilt from its name and options
    batch = _WaveformData.collate(data.items[:4])
    module.eval()
    with torch.no_grad():
        expected = module.predict_step(batch, 0)["probs"]
        torch.testing.assert_close(loaded.eval().predict_step(batch, 0)["probs"], expected)


def test_top_blocks_of_real_backbones():
    """Which blocks `unfreeze_layers` means: the ones nearest the output, found in the module tree."""
    from lightning_emo.extractors.base import build_extractor
    from lightning_emo.extractors.ssl import build_architecture

    def names(model, n):
        by_id = {id(m): name for name, m in model.named_modules()}
        return [by_id[id(b)] for b in top_blocks(model, n)]

    assert names(build_architecture("WAV2VEC2_ASR_BASE_960H"), 2) == ["encoder.transformer.layers.10",
                                                                     "encoder.transformer.layers.11"]
    assert names(build_extractor("facenet_vggface2", pretrained=False), 1) == ["net.repeat_3.4"]
    assert names(build_extractor("timm", model_name="resnet18.a1_in1k", pretrained=False), 1) == ["net.layer4.1"]
    with pytest.raises(ValueError, match="unfreeze_layers must be >= 1"):
        top_blocks(nn.Linear(2, 2), 0)
    assert top_blocks(nn.Linear(2, 2), None)[0].in_features == 2
