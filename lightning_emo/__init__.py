"""lightning_emo: multimodal (speech + face video) emotion recognition on PyTorch Lightning.

Frozen pretrained speech and face networks turn clips into feature sequences, per-modality
LSTM heads turn those into posteriors, and decision-level fusion (logistic regression, a
confidence ensemble, a cascade, and an ensemble with a micro-F1 prior) combines them.
"""

__version__ = "0.1.0"
