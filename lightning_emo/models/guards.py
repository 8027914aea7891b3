"""What stops training and prediction before a wrong result is kept: non-finite losses and posteriors."""

from __future__ import annotations

from typing import Any

import torch

from lightning_emo.utils import LocatedError


class NonFiniteError(LocatedError):
    """A NaN or infinite loss or posterior: training stops (nothing of that epoch is saved), predict refuses."""

    kind = "clip"


def non_finite_error(batch: dict[str, Any], x: torch.Tensor, what: str, value: float, at: str,
                     source: str | None, rows: torch.Tensor | None = None) -> NonFiniteError:
    """The error for a non-finite ``what`` in ``batch``, saying whether its input features ``x (B, ...)`` were bad.

    Args:
        rows: ``(B,)`` bool, the rows at fault (predict); default every clip of the batch.
    """
    all_ids = [str(c) for c in batch.get("clip_id", [])]
    ids = all_ids
    if rows is not None:
        ids = [c for c, r in zip(all_ids, rows.tolist()) if r] or all_ids
    bad_input = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    bad_ids = [c for c, r in zip(all_ids, bad_input.tolist()) if r]
    if bad_ids:
        why = (f"the input features of {len(bad_ids)} clip(s) are not finite ({', '.join(bad_ids[:5])}): the "
               "feature store is damaged; verify it and re-extract those clips (lightning-emo extract)")
    else:
        why = ("the features are finite, so training diverged: lower model.init_args.lr, keep input_norm on, or "
               "set trainer.gradient_clip_val")
    return NonFiniteError(source or "the training data",
                          f"{what} is {value} at {at} (clips in the batch: {', '.join(ids[:5])}"
                          f"{', ...' if len(ids) > 5 else ''}); {why}. Nothing of this epoch was saved.",
                          None, (bad_ids or ids or [None])[0])


__all__ = ["NonFiniteError", "non_finite_error"]
