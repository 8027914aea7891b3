"""Random-forest feature selection: finds planted informative dimensions, and saves/loads identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_emo.extractors.selection import FeatureSelector

INFORMATIVE = [3, 17, 42]


def _clips(n_per_class: int = 6, classes: int = 3, dim: int = 50, seed: int = 0):
    """Noise features whose dims 3, 17 and 42 carry the clip's class; clips of 5-12 frames."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            t = int(rng.integers(5, 13))
            f = rng.normal(size=(t, dim)).astype(np.float32)
            for j, d in enumerate(INFORMATIVE):
                f[:, d] += 3.0 * ((c + j) % classes)
            feats.append(f)
            labels.append(c)
    return feats, labels


@pytest.mark.parametrize("unit", ["frames", "clips"])
def test_selection_finds_planted_dimensions(unit):
    feats, labels = _clips()
    sel = FeatureSelector(k=3, unit=unit, n_estimators=50, seed=0).fit(feats, labels)
    assert sorted(sel.indices.tolist()) == INFORMATIVE
    assert sel.importances.shape == (50,) and sel.dim == 50
    assert sel.info["clips"] == len(feats) and sel.info["unit"] == unit
    out = sel.transform(torch.from_numpy(feats[0]))
    assert out.shape == (len(feats[0]), 3) and torch.equal(out, torch.from_numpy(feats[0])[:, sel.indices])
    # ranking: the informative dims come first among all dimensions
    assert set(np.argsort(-sel.importances)[:3].tolist()) == set(INFORMATIVE)


def test_padded_input_with_masks_matches_list_input():
    feats, labels = _clips()
    t = max(len(f) for f in feats)
    padded = torch.full((len(feats), t, 50), 1e6)  # garbage in padding / no-face frames must be ignored
    mask = torch.zeros(len(feats), t, dtype=torch.bool)
    for i, f in enumerate(feats):
        padded[i, :len(f)] = torch.from_numpy(f)
        mask[i, :len(f)] = True
    a = FeatureSelector(k=5, n_estimators=30, seed=1).fit(feats, labels)
    b = FeatureSelector(k=5, n_estimators=30, seed=1).fit(padded, torch.tensor(labels), mask)
    assert np.array_equal(a.indices, b.indices) and np.allclose(a.importances, b.importances)
    with pytest.raises(ValueError, match="needs masks"):
        FeatureSelector(k=5).fit(padded, labels)


def test_subsampling_is_seeded():
    feats, labels = _clips()
    kw = dict(k=4, n_estimators=20, max_samples=60, max_frames_per_clip=4)
    a = FeatureSelector(seed=3, **kw).fit(feats, labels)
    b = FeatureSelector(seed=3, **kw).fit(feats, labels)
    assert a.info["samples"] == 60
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.importances, b.importances)


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    feats, labels = _clips()
    sel = FeatureSelector(k=7, n_estimators=20, seed=0).fit(feats, labels)
    path = sel.save(tmp_path / f"selection{suffix}")
    loaded = FeatureSelector.load(path)
    assert np.array_equal(loaded.indices, sel.indices) and np.array_equal(loaded.importances, sel.importances)
    assert loaded.k == 7 and loaded.dim == 50 and loaded.info == sel.info and loaded.params == sel.params
    x = torch.randn(2, 9, 50)
    assert torch.equal(loaded.transform(x), sel.transform(x))
    assert np.array_equal(loaded.transform(x.numpy()), sel.transform(x.numpy()))


def test_errors(tmp_path):
    feats, labels = _clips()
    with pytest.raises(RuntimeError, match="not fitted"):
        FeatureSelector(k=2).transform(torch.zeros(3, 50))
    with pytest.raises(ValueError, match="larger than the feature dimension 50"):
        FeatureSelector(k=51, n_estimators=5).fit(feats, labels)
    sel = FeatureSelector(k=2, n_estimators=5).fit(feats, labels)
    with pytest.raises(ValueError, match="fitted on 50-d features"):
        sel.transform(torch.zeros(3, 49))
    with pytest.raises(ValueError, match="at least two classes"):
        FeatureSelector(k=2).fit(feats[:3], [0, 0, 0])
    with pytest.raises(ValueError, match="no valid frames"):
        FeatureSelector(k=2).fit(feats[:2], [0, 1], masks=[np.zeros(len(f), bool) for f in feats[:2]])
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not a FeatureSelector file"):
        FeatureSelector.load(bad)
