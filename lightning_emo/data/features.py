"""The module's former name: the feature store now lives in :mod:`lightning_emo.data.store`, the DataModule in
:mod:`lightning_emo.data.datamodule`, selection in :mod:`lightning_emo.extractors.selection`.

Kept so that run configs and checkpoints written before the split (``class_path:
lightning_emo.data.features.FeatureDataModule``) still load; new code imports from the modules above.
"""

from lightning_emo.data.datamodule import FeatureDataModule, FeatureDataset, collate_features  # noqa: F401
from lightning_emo.data.store import (  # noqa: F401
    MISSING_NO_AUDIO,
    MISSING_NO_FRAMES,
    MISSING_NO_VIDEO,
    FeatureStore,
    FeatureStoreError,
    StaleStoreError,
    StoreWriter,
    cache_key,
    key_differences,
)
