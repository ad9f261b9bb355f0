"""ssl_probe: layer weights, masked pooling, sequence option, training signal."""

from __future__ import annotations

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.models.ssl_probe import SslProbe


def batch(b=3, layers=4, hidden=16, frames=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, layers, hidden, frames, generator=g)


@pytest.mark.parametrize(("pooling", "sequence"), [("mean", "none"), ("attentive", "none"), ("mean", "blstm")])
def test_padding_does_not_change_the_output(pooling, sequence, torch_one_thread):
    torch.manual_seed(0)
    probe = SslProbe(4, 4, feature_dim=16, pooling=pooling, sequence=sequence).eval()
    x = batch()
    lengths = torch.tensor([20, 13, 7])
    mask = torch.arange(20)[None] < lengths[:, None]
    padded = torch.cat([x, torch.randn(3, 4, 16, 9) * 50], dim=3)  # junk after the real frames
    padded_mask = torch.cat([mask, torch.zeros(3, 9, dtype=torch.bool)], dim=1)
    for i, n in enumerate(lengths.tolist()):
        alone = probe(x[i : i + 1, ..., :n], None)
        torch.testing.assert_close(probe(padded, padded_mask)[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_layer_weights_start_equal_sum_to_one_and_learn(torch_one_thread):
    torch.manual_seed(0)
    probe = SslProbe(2, 3, feature_dim=8, head=())
    w = probe.layer_weights().detach()
    assert torch.allclose(w, torch.full((3,), 1 / 3)) and float(w.sum()) == pytest.approx(1.0)
    x = torch.randn(32, 3, 8, 10)
    y = torch.randint(0, 2, (32,))
    x[:, 2, 0] += 3.0 * (2 * y[:, None].float() - 1)  # only layer 2 carries the label
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    w = probe.layer_weights().detach()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6) and int(w.argmax()) == 2


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="pooling"):
        SslProbe(4, 3, pooling="max")
    with pytest.raises(ConfigError, match="layers"):
        SslProbe(4, 3, feature_dim=16)(batch(layers=5))


@pytest.mark.parametrize("time_major", [False, True])  # the full view's batches lie time-major in memory
@pytest.mark.parametrize("layer_norm", [True, False])
def test_mean_pooling_from_layer_means_equals_pooling_the_weighted_sum(layer_norm, time_major, torch_one_thread):
    """The mean-pooling probe never builds the normalised frames (``pooled_layers``): its output and
    its layer-weight gradient equal pooling the weighted layer sum frame by frame (``combine``)."""
    from ser_pipeline.models.ssl_probe import masked_mean

    torch.manual_seed(0)
    probe = SslProbe(4, 4, feature_dim=16, layer_norm=layer_norm).eval()
    with torch.no_grad():
        probe.layer_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = batch() * 4 + 2  # offset and scale, so the normalisation matters
    if time_major:
        x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        assert not x.is_contiguous()
    mask = torch.arange(20)[None] < torch.tensor([20, 9, 1])[:, None]
    fast = probe.embed(x, mask)
    reference = masked_mean(probe.combine(x), mask)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), probe.layer_logits)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), probe.layer_logits)
    torch.testing.assert_close(grad_fast, grad_reference, atol=1e-4, rtol=1e-4)
    assert grad_fast.abs().sum() > 0


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("masks", [False, True])
def test_items_read_in_place_give_the_padded_batchs_logits_and_gradients(layer_norm, masks, torch_one_thread):
    """Read from a table, the full view is the table's rows (``ItemFrames``); the mean-pooling probe
    reads them in place, span masks folded in, and never builds the padded batch. Its logits and
    layer-weight gradient equal those of the padded batch with the masks applied."""
    from ser_pipeline.dataset.spec_augment import SpecAugmentSpec, span_draw
    from ser_pipeline.dataset.tables import _pack
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.inference.forward import forward_batch

    g = torch.Generator().manual_seed(1)
    lengths = [20, 9, 1, 33]
    table = _pack([torch.randn(4, 16, n, generator=g) * 3 + 1 for n in lengths], [0, 1, 2, 3], [0, 0, 1, 1],
                  [f"u{i}" for i in range(4)], ["orig"] * 4, ["a", "b"])
    spec = ViewSpec(kind="full", frames=0, channels=0, normalise="none")
    augment = SpecAugmentSpec(freq_masks=3, freq_width=6, time_masks=2, time_width=8)
    draw = span_draw(augment, torch.Generator().manual_seed(5)) if masks else None
    vb = table.view(torch.tensor([3, 0, 2, 1]), spec, train=True, span_draw=draw)
    assert vb.items is not None and vb.masked == masks and not vb.built
    torch.manual_seed(0)
    probe = SslProbe(4, 4, feature_dim=16, layer_norm=layer_norm).eval()  # no dropout draws
    with torch.no_grad():
        probe.layer_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    fast, _ = forward_batch(probe, vb, spec)
    assert not vb.built  # the padded batch was never built
    padded = vb.items.padded()
    if masks:
        assert int((padded == 0).sum()) > sum(33 - n for n in lengths) * 4 * 16  # zeros beyond the padding
    reference = probe(padded, vb.mask)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), probe.layer_logits)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), probe.layer_logits)
    torch.testing.assert_close(grad_fast, grad_reference, atol=1e-4, rtol=1e-4)
    assert grad_fast.abs().sum() > 0
