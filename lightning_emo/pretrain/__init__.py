"""The paper's source tasks: CTC speech recognition for the speech DNN, identity classification for the face CNN.

Training here produces the weights the frozen ``speech_dnn`` / ``speech_bottleneck`` and
``face_cnn`` extractors read:

* speech: :class:`ASRDataModule` (an ASR manifest, AISHELL-1 or CSV) +
  :class:`SpeechDNNPretraining` (``SpeechDNN`` + MFCC front-end + CTC), then
  :func:`export_speech_dnn`;
* faces: :class:`IdentityFolderDataModule` (``root/<identity>/*.jpg``) +
  :class:`FaceCNNPretraining` (``FaceCNN`` + cross-entropy), then :func:`export_face_cnn`.

Both run under ``lightning-emo fit --config configs/pretrain/*.yaml`` (LightningCLI) or from
Python with a ``pytorch_lightning.Trainer``. Names are imported lazily so that importing the
package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ASRDataModule": "asr_data", "ASRManifest": "asr_data", "ASRManifestError": "asr_data",
    "Utterance": "asr_data", "Vocabulary": "asr_data", "prepare_aishell": "asr_data",
    "read_asr_manifest": "asr_data", "assign_asr_splits": "asr_data",
    "IdentityFolderDataModule": "face_data", "IdentityFolderError": "face_data",
    "scan_identity_folder": "face_data",
    "SpeechDNNPretraining": "speech", "ctc_greedy_decode": "speech",
    "FaceCNNPretraining": "faces",
    "export_speech_dnn": "export", "export_face_cnn": "export", "export_checkpoint": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lightning_emo.pretrain.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lightning_emo.pretrain' has no attribute {name!r}")
