"""Sequence heads: shapes, padding (a padded batch = its clips one by one), masked frames, layer weights."""

from __future__ import annotations

import pytest
import torch

from lightning_emo.models.heads import HEADS, LayerWeightedSum, build_head, compact, pool_frames, valid_frames

HEAD_NAMES = HEADS.names()


def _batch(seed: int = 0, b: int = 4, t: int = 9, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    lengths = torch.tensor([t, 5, 2, 7][:b])
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True  # every clip keeps at least one frame
    return x, lengths, mask


def test_registry_has_the_paper_head_and_variants():
    assert {"lstm", "blstm", "attention", "mean_mlp", "transformer"} <= set(HEAD_NAMES)
    with pytest.raises(KeyError, match="unknown head 'gru'.*lstm"):
        build_head("gru", 6, 7)
    with pytest.raises(TypeError, match="head 'lstm' takes no option.*bogus"):
        build_head("lstm", 6, 7, bogus=1)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_shapes_and_output_layer(name):
    head = build_head(name, input_dim=6, num_classes=7)
    x, lengths, mask = _batch()
    logits = head(x, lengths, mask)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    assert head(x).shape == (4, 7)  # no lengths, no mask: every frame is real
    out_params = head.output_parameters()
    assert out_params == list(head.output.parameters()) and out_params[0].shape == (7, head.output.in_features)
    with pytest.raises(ValueError, match="built for 6-d features, got 5-d"):
        head(torch.randn(2, 3, 5))


def test_paper_head_defaults():
    head = build_head("lstm", input_dim=147, num_classes=7)
    assert head.hidden.in_features == 147 and head.hidden.out_features == 128
    assert head.lstm.hidden_size == 128 and head.lstm.num_layers == 1 and not head.lstm.bidirectional
    assert head.dropout.p == 0.5 and head.output.in_features == 128 and head.output.out_features == 7


@pytest.mark.parametrize("frame_pool", [1, 3])
@pytest.mark.parametrize("name", HEAD_NAMES)
def test_padded_batch_equals_clips_one_by_one(name, frame_pool):
    """Packing: padding never reaches the state; masked frames are as if removed from the clip."""
    torch.manual_seed(0)
    head = build_head(name, input_dim=6, num_classes=5, frame_pool=frame_pool).eval()
    x, lengths, mask = _batch()
    with torch.no_grad():
        batched = head(x, lengths, mask)
        for i in range(len(x)):
            keep = mask[i, : lengths[i]]
            clip = x[i : i + 1, : lengths[i]][:, keep]  # the clip's valid frames only, no padding, no mask
            alone = head(clip, torch.tensor([clip.shape[1]]))
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"num_layers": 2}, {"bidirectional": True},
                                     {"bidirectional": True, "num_layers": 2}])
@pytest.mark.parametrize("name", ["lstm", "attention"])
def test_padded_recurrence_equals_packing_values_and_gradients(name, options):
    """The CPU path (padded batch, backward direction reversed within each length) = pack_padded_sequence."""
    torch.manual_seed(0)
    head = build_head(name, input_dim=6, num_classes=5, **options)
    h = torch.randn(5, 9, head.hidden_dim, requires_grad=True)
    lengths = torch.tensor([9, 3, 1, 7, 5])
    params = [h, *head.lstm.parameters()]
    runs = {}
    for way in ("_run_packed", "_run_padded"):
        out, last = getattr(head, way)(h, lengths)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        runs[way] = (out, last, torch.autograd.grad((out * weights).sum() + last.pow(2).sum(), params))
    (out_p, last_p, grad_p), (out_d, last_d, grad_d) = runs["_run_packed"], runs["_run_padded"]
    torch.testing.assert_close(out_d, out_p, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last_d, last_p, atol=1e-6, rtol=1e-5)
    assert (out_d[1, 3:] == 0).all()  # zeros after a row's length, as pad_packed_sequence gives
    for a, b in zip(grad_d, grad_p):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not any("template" in k for k in head.state_dict())  # the direction runner holds no weights


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_padding_and_masked_frames_do_not_change_the_output(name):
    torch.manual_seed(0)
    head = build_head(name, input_dim=6, num_classes=5).eval()
    x, lengths, mask = _batch()
    dropped = ~valid_frames(x, lengths, mask)
    noisy = x.clone()
    noisy[dropped] = torch.randn(int(dropped.sum()), 6) * 1e3
    nan = x.clone()
    nan[dropped] = float("nan")
    with torch.no_grad():
        ref = head(x, lengths, mask)
        torch.testing.assert_close(head(noisy, lengths, mask), ref)
        torch.testing.assert_close(head(nan, lengths, mask), ref)
        # and a longer padded tensor changes nothing either
        longer = torch.cat([x, torch.randn(4, 3, 6)], dim=1)
        torch.testing.assert_close(head(longer, lengths, torch.cat([mask, torch.ones(4, 3, dtype=torch.bool)], 1)),
                                   ref)


@pytest.mark.parametrize("name", ["lstm", "attention", "transformer"])
def test_masked_frames_get_no_gradient(name):
    head = build_head(name, input_dim=6, num_classes=5, dropout=0.0)
    x, lengths, mask = _batch()
    x.requires_grad_(True)
    head(x, lengths, mask).sum().backward()
    dropped = ~valid_frames(x, lengths, mask)
    assert (x.grad[dropped] == 0).all()
    assert (x.grad[~dropped].abs().sum(-1) > 0).all()


def test_compact_moves_valid_frames_to_the_front_in_order():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    lengths = torch.tensor([5, 3])
    mask = torch.tensor([[True, False, True, False, True], [False, True, True, True, True]])
    out, new = compact(x, lengths, mask)
    assert new.tolist() == [3, 2]
    assert out.shape == (2, 3, 1)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert out[1, :, 0].tolist() == [6.0, 7.0, 0.0]  # frame 8, 9 are padding (length 3)


def test_pool_frames_averages_windows_of_valid_frames():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    out, lengths = pool_frames(x, torch.tensor([5, 3]), 2)
    assert lengths.tolist() == [3, 2]
    assert out[0, :, 0].tolist() == [0.5, 2.5, 4.0]  # the last window holds one frame
    assert out[1, :2, 0].tolist() == [5.5, 7.0]  # frames 8, 9 are padding


def test_a_clip_without_valid_frames_does_not_break_the_batch():
    head = build_head("lstm", input_dim=6, num_classes=5).eval()
    x, lengths, mask = _batch()
    mask[2] = False
    with torch.no_grad():
        out = head(x, lengths, mask)
        alone = head(x[:1, : lengths[0]][:, mask[0, : lengths[0]]])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=1e-5)
    assert valid_frames(x, lengths, mask).any(1).tolist() == [True, True, False, True]


def test_layer_weighted_sum_over_stacked_ssl_layers():
    layers, hidden = 4, 3
    stacked = torch.randn(2, 5, layers, hidden)
    pool = LayerWeightedSum(layers)
    torch.testing.assert_close(pool(stacked), stacked.mean(2))  # equal weights at the start
    torch.testing.assert_close(pool(stacked.flatten(2)), pool(stacked))  # flattened (B, T, L * H) as stored
    with torch.no_grad():
        pool.weights.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    torch.testing.assert_close(pool(stacked), stacked[:, :, 2], atol=1e-4, rtol=1e-4)

    head = build_head("lstm", input_dim=layers * hidden, num_classes=3, layers=layers)
    assert head.feature_dim == hidden and head.hidden.in_features == hidden
    logits = head(stacked.flatten(2), torch.tensor([5, 3]))
    logits.sum().backward()
    assert head.layer_sum.weights.grad is not None and head.layer_sum.weights.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not a multiple of layers=5"):
        build_head("lstm", input_dim=12, num_classes=3, layers=5)
    with pytest.raises(ValueError, match="build the head with layers=4"):
        build_head("lstm", input_dim=hidden, num_classes=3)(stacked)
