"""Evaluation protocol: folds x seeds runs and their aggregate report (scores: :mod:`lightning_emo.fusion.metrics`)."""
