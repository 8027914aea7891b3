"""Sequence classification heads (the paper's LSTM and variants) and the :data:`HEADS` registry.

Every head maps a padded batch of feature sequences to class logits::

    head(x (B, T, D) float, lengths (B,) int, mask (B, T) bool | None) -> logits (B, C)

``lengths`` says how many leading frames of each row are real; ``mask`` (True = a frame with
content, e.g. a face was found) removes further frames *inside* that range. Before any head
sees a batch, :func:`compact` moves each row's valid frames to the front (in order) and zeroes
the rest, so masked frames and padding never enter a recurrent state, an attention weight or a
mean. Recurrent heads then run on ``pack_padded_sequence`` on CUDA and on the padded batch
elsewhere (the same values; packing is slow to train on the CPU): a padded batch gives the
same logits as its clips one by one. With ``frame_pool=k`` every run of ``k`` consecutive valid
frames is averaged after compaction (100 -> 10 frames/s for ``k = 10``: cheaper recurrences).

Stacked SSL layers (an extractor run with ``layers="all"``: ``D = L * H``, or a 4-D
``(B, T, L, H)`` input) are reduced first by a learned softmax-weighted sum over the ``L``
layers when the head is built with ``layers=L``.

The output (softmax) layer of every head is :attr:`Head.output`; :meth:`Head.output_parameters`
lists its parameters so the optimizer can give it its own weight decay (the paper: 1e-4 on
that layer only).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_emo.registry import Registry

HEADS: Registry = Registry("head")

ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def valid_frames(x: torch.Tensor, lengths: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, T)`` bool: True for frames inside ``lengths`` that ``mask`` keeps.

    Args:
        x: ``(B, T, ...)`` padded batch (only its first two sizes are used).
        lengths: ``(B,)`` number of leading real frames per row; ``None`` = all ``T``.
        mask: ``(B, T)`` bool, True = a frame with content; ``None`` = all True.
    """
    b, t = x.shape[:2]
    if lengths is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
    else:
        if lengths.shape != (b,):
            raise ValueError(f"lengths must have shape ({b},), got {tuple(lengths.shape)}")
        valid = torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    if mask is not None:
        if mask.shape != (b, t):
            raise ValueError(f"mask must have shape ({b}, {t}) like x's first two sizes, got {tuple(mask.shape)}")
        valid = valid & mask.to(device=x.device, dtype=torch.bool)
    return valid


def compact(x: torch.Tensor, lengths: torch.Tensor | None = None,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid frames to the front, in order; zero the rest.

    Args:
        x: ``(B, T, *F)`` padded batch.
        lengths: ``(B,)`` real frames per row (``None`` = all).
        mask: ``(B, T)`` bool, False = a frame to drop (``None`` = keep all).

    Returns:
        ``(x', lengths')``: ``x'`` is ``(B, T', *F)`` with ``T' = max(1, max(lengths'))``,
        ``lengths'`` ``(B,)`` int64 the number of valid frames per row (0 for a row with none;
        its single frame is zeros).
    """
    valid = valid_frames(x, lengths, mask)
    new_lengths = valid.sum(dim=1)
    contiguous = torch.arange(x.shape[1], device=x.device)[None, :] < new_lengths[:, None]
    if not torch.equal(valid, contiguous):
        # stable sort on "is invalid": valid frames first, each group keeping its time order
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)
        x = x.gather(1, index)
    keep = max(int(new_lengths.max().item()) if new_lengths.numel() else 0, 1)
    x = x[:, :keep]
    contiguous = contiguous[:, :keep].reshape(contiguous.shape[0], keep, *([1] * (x.dim() - 2)))
    # where, not a product: a NaN or inf in a dropped frame must not survive
    return torch.where(contiguous, x, torch.zeros((), dtype=x.dtype, device=x.device)), new_lengths


def pool_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each run of ``k`` consecutive valid frames of a compacted batch: ``(B, T, F) -> (B, ceil(T / k), F)``.

    A clip's last window averages only the frames it has, so padding never enters; lengths
    become ``ceil(lengths / k)``. Lowers the frame rate (100 -> 25 frames/s with ``k = 4``) and
    with it a recurrent head's cost.
    """
    b, t = x.shape[:2]
    windows = -(-t // k)
    pad = windows * k - t
    valid = (torch.arange(windows * k, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, *x.shape[2:])], dim=1)
    x = x.reshape(b, windows, k, *x.shape[2:])
    w = valid.reshape(b, windows, k, *([1] * (x.dim() - 3)))
    pooled = (x * w).sum(2) / w.sum(2).clamp(min=1)
    return pooled, torch.div(lengths + k - 1, k, rounding_mode="floor")


class LayerWeightedSum(nn.Module):
    """Learned softmax-weighted sum over stacked SSL layers: ``(B, T, L, H) -> (B, T, H)``.

    The weights start equal (zeros before the softmax), as in SUPERB / pyannote.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"a layer-weighted sum needs at least 2 layers, got {num_layers}")
        self.num_layers = num_layers
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            b, t, d = x.shape
            if d % self.num_layers:
                raise ValueError(f"stacked-layer features of dim {d} do not split into {self.num_layers} layers")
            x = x.view(b, t, self.num_layers, d // self.num_layers)
        if x.dim() != 4 or x.shape[2] != self.num_layers:
            raise ValueError(f"expected stacked layers (B, T, {self.num_layers}, H), got {tuple(x.shape)}")
        w = torch.softmax(self.weights, dim=0).to(x.dtype)
        return torch.einsum("btlh,l->bth", x, w)


class Head(nn.Module):
    """Base class: optional layer-weighted sum, frame compaction, ``encode``, dropout, output layer.

    Subclasses set ``self.output = nn.Linear(pooled_dim, num_classes)`` and implement
    :meth:`encode` on compacted batches.

    Args:
        input_dim: ``D``, the feature dimension of ``x`` (for stacked layers ``L * H``).
        num_classes: ``C``.
        hidden_dim: width of the head's hidden layer / recurrent state.
        dropout: dropout before the output layer.
        layers: ``L`` stacked SSL layers to combine with a learned weighted sum (``None`` = plain
            ``(B, T, D)`` features).
        frame_pool: average every ``k`` consecutive valid frames first (:func:`pool_frames`;
            1 = keep the frame rate, as in the paper).
    """

    output: nn.Linear

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, frame_pool: int = 1):
        super().__init__()
        if frame_pool < 1:
            raise ValueError(f"frame_pool must be >= 1, got {frame_pool}")
        self.frame_pool = int(frame_pool)
        if input_dim < 1 or num_classes < 2 or hidden_dim < 1:
            raise ValueError(f"need input_dim >= 1, num_classes >= 2, hidden_dim >= 1; got {input_dim}, "
                             f"{num_classes}, {hidden_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_dim, self.num_classes, self.hidden_dim = input_dim, num_classes, hidden_dim
        self.layer_sum = LayerWeightedSum(layers) if layers else None
        if layers and input_dim % layers:
            raise ValueError(f"input_dim {input_dim} is not a multiple of layers={layers}")
        self.feature_dim = input_dim // layers if layers else input_dim
        self.dropout = nn.Dropout(dropout)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pool a compacted batch: ``x (B, T, F)`` with valid frames ``[0, lengths)`` -> ``(B, P)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, D)`` (or ``(B, T, L, H)``), ``lengths (B,)``, ``mask (B, T)`` -> logits ``(B, C)``.

        A row with no valid frame gets the logits of a single all-zero frame; callers that must
        not use those (training, predictions) check ``valid_frames(...).any(1)``.
        """
        if x.dim() not in (3, 4):
            raise ValueError(f"{type(self).__name__} expects features (B, T, D), got shape {tuple(x.shape)}")
        if self.layer_sum is not None:
            x = self.layer_sum(x)
        elif x.dim() == 4:
            raise ValueError(f"got stacked layers {tuple(x.shape)}; build the head with layers={x.shape[2]}")
        if x.shape[-1] != self.feature_dim:
            raise ValueError(f"{type(self).__name__} was built for {self.feature_dim}-d features, "
                             f"got {x.shape[-1]}-d (shape {tuple(x.shape)})")
        x, lengths = compact(x, lengths, mask)
        if self.frame_pool > 1:
            x, lengths = pool_frames(x, lengths, self.frame_pool)
        return self.output(self.dropout(self.encode(x, lengths)))

    def output_parameters(self) -> list[nn.Parameter]:
        """The output (softmax) layer's parameters: the only ones with weight decay in the paper."""
        return list(self.output.parameters())


def reorder_output_rows(state: dict[str, torch.Tensor], index: list[int], prefix: str = "head.") -> None:
    """Reorder a head state dict's classes in place: output row ``j`` becomes old row ``index[j]``.

    Every head's class-dependent parameters are its ``output`` layer's (weight ``(C, P)``, bias
    ``(C,)``), so a model trained with one class order predicts in another exactly.
    """
    order = torch.as_tensor(index, dtype=torch.long)
    for name in (f"{prefix}output.weight", f"{prefix}output.bias"):
        if name in state:
            state[name] = state[name][order].clone()


def _length_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def _masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first ``lengths`` frames: ``(B, T, F) -> (B, F)`` (zero rows stay zero)."""
    m = _length_mask(lengths, x.shape[1]).to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / lengths.clamp(min=1).to(x.dtype).unsqueeze(-1)


class _Recurrent(Head):
    """Hidden linear layer -> LSTM over variable-length sequences (shared by ``lstm``, ``blstm``, ``attention``)."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, num_layers: int = 1, bidirectional: bool = False,
                 activation: str = "none", lstm_dim: int | None = None, frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, frame_pool)
        self.hidden = nn.Linear(self.feature_dim, hidden_dim)
        self.activation = _activation(activation)
        self.lstm_dim = lstm_dim or hidden_dim
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(hidden_dim, self.lstm_dim, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional)
        self.pooled_dim = self.lstm_dim * (2 if bidirectional else 1)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor, zero_padding: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence over a compacted batch.

        Returns ``(outputs (B, T, P), last (B, P))``: every frame's output (zeros after a row's
        length unless ``zero_padding`` is False: then undefined there) and the state after each
        row's last frame (for a bidirectional LSTM the forward state at the last frame and the
        backward state at the first, concatenated).
        """
        h = self.activation(self.hidden(x))
        lengths = lengths.clamp(min=1)
        if h.is_cuda:
            return self._run_packed(h, lengths)
        return self._run_padded(h, lengths, zero_padding)

    def _run_packed(self, h: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pack_padded_sequence``: cuDNN runs packed batches natively (no work on padding)."""
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]
        return out, last

    def _run_padded(self, h: torch.Tensor, lengths: torch.Tensor, zero_padding: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded batch, padding after each row's frames: the same values as packing.

        On the CPU, autograd through a packed LSTM costs time quadratic in the clip length (each
        step's backward adds a gradient the size of the whole packed input): 100 frames/s audio
        trained 7x slower than this path (BENCHMARKS.md). A forward recurrence never sees the
        padding after a row's last frame, so its output there is the packed final state; the
        backward direction runs on each row reversed within its length.
        """
        t = h.shape[1]
        steps = torch.arange(t, device=h.device)[None, :]
        valid = steps < lengths[:, None]
        at_last = (lengths - 1).view(-1, 1, 1)
        if not self.bidirectional:
            out, _ = self.lstm(h)
        else:
            # reverse each row within its length (padding stays at the end); an involution
            rev = torch.where(valid, lengths[:, None] - 1 - steps, steps)
            out = h
            for layer in range(self.lstm.num_layers):
                if layer:
                    out = nn.functional.dropout(out, self.lstm.dropout, self.training)
                forward, _ = functional_call(self._direction(out.shape[-1]), self._weights(layer, ""), (out,))
                index = rev.unsqueeze(-1).expand_as(out)
                backward, _ = functional_call(self._direction(out.shape[-1]), self._weights(layer, "_reverse"),
                                              (out.gather(1, index),))
                out = torch.cat([forward, backward.gather(1, rev.unsqueeze(-1).expand_as(backward))], dim=-1)
        if zero_padding:
            out = torch.where(valid.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype, device=out.device))
        last = out.gather(1, at_last.expand(-1, 1, out.shape[-1])).squeeze(1)
        if self.bidirectional:
            last = torch.cat([last[:, :self.lstm_dim], out[:, 0, self.lstm_dim:]], dim=-1)
        return out, last

    def _weights(self, layer: int, suffix: str) -> dict[str, torch.Tensor]:
        """One direction of one layer of ``self.lstm``, named as in a one-layer unidirectional LSTM."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.lstm.bias else [])
        return {f"{n}_l0": getattr(self.lstm, f"{n}_l{layer}{suffix}") for n in names}

    def _direction(self, input_size: int) -> nn.LSTM:
        """A one-layer unidirectional LSTM to run one direction with :meth:`_weights` (its own weights unused)."""
        templates = self.__dict__.setdefault("_templates", {})
        if input_size not in templates:
            templates[input_size] = nn.LSTM(input_size, self.lstm_dim, batch_first=True, bias=self.lstm.bias)
        return templates[input_size]


@HEADS.register("lstm")
class LSTMHead(_Recurrent):
    """The paper's head: linear hidden layer (128) -> one LSTM layer (128) -> dropout 0.5 -> output.

    The clip is represented by the LSTM state after its last valid frame.

    Args (beyond :class:`Head`'s):
        num_layers: stacked LSTM layers (paper: 1).
        bidirectional: also run backwards and concatenate both final states.
        activation: after the hidden layer: ``none`` (the paper's linear layer), ``relu``,
            ``tanh``, ``gelu``.
        lstm_dim: LSTM width (default ``hidden_dim``).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, num_layers: int = 1, bidirectional: bool = False,
                 activation: str = "none", lstm_dim: int | None = None, frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, num_layers, bidirectional,
                         activation, lstm_dim, frame_pool)
        self.output = nn.Linear(self.pooled_dim, num_classes)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._run(x, lengths, zero_padding=False)[1]


@HEADS.register("blstm")
class BLSTMHead(LSTMHead):
    """:class:`LSTMHead` run in both directions (final forward and backward states concatenated)."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, num_layers: int = 1, activation: str = "none",
                 lstm_dim: int | None = None, frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, num_layers, True, activation,
                         lstm_dim, frame_pool)


@HEADS.register("attention")
class AttentionLSTMHead(_Recurrent):
    """LSTM outputs pooled by masked additive attention: ``sum_t softmax(v . tanh(W h_t)) h_t``.

    Args (beyond :class:`LSTMHead`'s): ``attention_dim``, the width of ``W`` (default ``hidden_dim``).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, num_layers: int = 1, bidirectional: bool = False,
                 activation: str = "none", lstm_dim: int | None = None, attention_dim: int | None = None,
                 frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, num_layers, bidirectional,
                         activation, lstm_dim, frame_pool)
        self.attention = nn.Sequential(nn.Linear(self.pooled_dim, attention_dim or hidden_dim), nn.Tanh(),
                                       nn.Linear(attention_dim or hidden_dim, 1, bias=False))
        self.output = nn.Linear(self.pooled_dim, num_classes)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self._run(x, lengths)  # (B, T, P)
        scores = self.attention(out).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~_length_mask(lengths.clamp(min=1), x.shape[1]), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bt,btp->bp", weights, out)


@HEADS.register("mean_mlp")
class MeanMLPHead(Head):
    """Masked mean over valid frames -> MLP (``depth`` hidden layers of ``hidden_dim``, ReLU, dropout).

    No temporal model: the baseline telling how much the LSTM adds.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, depth: int = 1, activation: str = "relu", frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, frame_pool)
        blocks: list[nn.Module] = []
        dim = self.feature_dim
        for i in range(depth):
            if i:
                blocks.append(nn.Dropout(dropout))
            blocks += [nn.Linear(dim, hidden_dim), _activation(activation)]
            dim = hidden_dim
        self.mlp = nn.Sequential(*blocks)
        self.output = nn.Linear(dim, num_classes)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.mlp(_masked_mean(x, lengths))


class _SinusoidalPositions(nn.Module):
    """Adds fixed sinusoidal position encodings: ``(B, T, F) -> (B, T, F)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.dim, 2, device=x.device, dtype=torch.float32)
                         * (-math.log(10000.0) / self.dim))
        pe = torch.zeros(x.shape[1], self.dim, device=x.device)
        pe[:, 0::2] = torch.sin(t * freq)
        pe[:, 1::2] = torch.cos(t * freq)[:, : self.dim // 2]
        return x + pe.to(x.dtype)


@HEADS.register("transformer")
class TransformerHead(Head):
    """Linear projection + sinusoidal positions -> small Transformer encoder (key-padding mask) -> masked mean.

    Args (beyond :class:`Head`'s): ``num_layers`` (2), ``num_heads`` (4, must divide
    ``hidden_dim``), ``ff_dim`` (``2 * hidden_dim``), ``attention_dropout`` (0.1, inside the
    encoder; ``dropout`` is before the output layer).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
                 layers: int | None = None, num_layers: int = 2, num_heads: int = 4, ff_dim: int | None = None,
                 attention_dropout: float = 0.1, frame_pool: int = 1):
        super().__init__(input_dim, num_classes, hidden_dim, dropout, layers, frame_pool)
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_dim={hidden_dim}")
        self.project = nn.Linear(self.feature_dim, hidden_dim)
        self.positions = _SinusoidalPositions(hidden_dim)
        layer = nn.TransformerEncoderLayer(hidden_dim, num_heads, ff_dim or 2 * hidden_dim, attention_dropout,
                                           batch_first=True, norm_first=True)
        # nested tensors would take a different (fast) path for padded batches than for single clips
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(hidden_dim),
                                             enable_nested_tensor=False)
        self.output = nn.Linear(hidden_dim, num_classes)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.positions(self.project(x))
        padding = ~_length_mask(lengths.clamp(min=1), x.shape[1])
        h = self.encoder(h, src_key_padding_mask=padding)
        return _masked_mean(h, lengths.clamp(min=1))


def build_head(name: str, input_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.5,
               **options) -> Head:
    """Build a registered head by name; ``options`` are the head class's extra keyword arguments.

    Raises:
        KeyError: an unknown head name (the message lists the known ones).
        TypeError: an option the head does not take (the message names the head).
    """
    cls = HEADS.get(name)
    known = [p for p in inspect.signature(cls).parameters if p not in ("input_dim", "num_classes", "hidden_dim",
                                                                      "dropout")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"head {name!r} takes no option(s) {', '.join(unknown)}; its options: {', '.join(known)}")
    return cls(input_dim=input_dim, num_classes=num_classes, hidden_dim=hidden_dim, dropout=dropout, **options)
