"""Evaluation protocol: scores and confidence intervals, folds x seeds runs and their aggregate report."""
