"""Every registered model: forward and backward on CPU with tiny inputs (parametrised over the
registry, so new models join automatically), plus the baselines' own contracts and AlexNet's
ImageNet weight loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ser_pipeline.dataset.views import ViewSpec, apply_view, flatten_segments
from ser_pipeline.errors import ConfigError
from ser_pipeline.models import MODELS, ModelEntry, ReadsSegmentSequences, build_model, load_all
from ser_pipeline.models.alexnet import AlexNet, load_imagenet_weights
from ser_pipeline.models.baselines import CNNLSTM, PlainCNN
from ser_pipeline.models.blocks import BasicBlock, SqueezeExcitation
from ser_pipeline.models.resnet import ResNet18
from ser_pipeline.training.speaker import SpeakerClassifier, freeze_backbone

load_all()
NEURAL = [name for name, e in MODELS.items() if e.trainer != "classic"]
N_CLASSES = 4

# Generic shrinking of size hyperparameters so that every model runs in well under a second.
TINY_INT = {"width": 8, "hidden": 8, "hidden_size": 8, "ff_dim": 16, "stem_channels": 8, "d_model": 16}
TINY_FLOAT = {"width_mult": 0.0625, "width": 0.25}


def tiny_hparams(entry: ModelEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.defaults.items():
        if isinstance(value, bool):
            continue
        if key in TINY_INT and isinstance(value, int):
            out[key] = TINY_INT[key]
        elif key in TINY_FLOAT and isinstance(value, float):
            out[key] = TINY_FLOAT[key]
        elif key == "heads" and isinstance(value, int):
            out[key] = 2
        elif key == "feature_dim":
            out[key] = 64  # F of tiny_batch (the engine fills it from the feature spec)
        elif key == "channels" and isinstance(value, tuple | list) and all(isinstance(v, int) for v in value):
            out[key] = tuple(8 for _ in value)
    return out


def tiny_view(entry: ModelEntry) -> ViewSpec:
    view = ViewSpec.from_dict(dict(entry.view))
    changes: dict[str, Any] = {"frames": min(view.frames, 40) if view.frames else 0}
    if view.kind == "windows":
        changes.update(window=32, shift=16, frames=64)
    if view.resize is not None:
        changes["resize"] = (67, 67)
    return view.replace(**changes)


def tiny_batch(view: ViewSpec, batch: int = 2, *, sequences: bool = False) -> torch.Tensor:
    """A view batch of random features: ``(B, C, H, W)``, segments flattened to ``(B*S, C, H, W)``
    unless the model reads whole sequences of them (``sequences``: ``(B, S, C, H, W)``)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 64, 50, generator=g)
    out = apply_view(view, x, torch.tensor([50, 37][:batch]))
    return flatten_segments(out)[0] if view.segmented and not sequences else out.x


@pytest.mark.parametrize("name", NEURAL)
def test_every_model_forward_and_backward(name: str) -> None:
    entry = MODELS.get(name)
    view = tiny_view(entry)
    torch.manual_seed(0)
    model = build_model(name, N_CLASSES, view.channels or 3, **tiny_hparams(entry))
    x = tiny_batch(view, sequences=isinstance(model, ReadsSegmentSequences))
    assert x.shape[-3] == (view.channels or 3)
    model.train()
    logits = model(x)
    assert logits.shape == (x.shape[0], N_CLASSES)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and torch.any(g != 0) for g in grads)
    if entry.trainer in ("two_stage", "speaker_pretrain"):
        z = model.embed(x)
        assert z.ndim == 2 and z.shape[0] == x.shape[0]
    if entry.trainer == "two_stage":
        stage2 = entry.stage2(N_CLASSES, z.shape[1], **{**entry.stage2_defaults, **tiny_hparams(
            ModelEntry(name, entry.stage2, "", defaults=entry.stage2_defaults))})
        seq = z.detach().reshape(x.shape[0], 1, -1).repeat(1, 3, 1)  # (B, S, D)
        out = stage2(seq)
        assert out.shape == (x.shape[0], N_CLASSES)
        out.sum().backward()
    if entry.trainer == "speaker_pretrain":
        spk = SpeakerClassifier(model, 3)
        assert spk(x).shape == (x.shape[0], 3)
        trainable = freeze_backbone(model)
        assert trainable and len(trainable) < len(list(model.parameters()))


def test_every_model_describes_itself() -> None:
    for name, entry in MODELS.items():
        d = entry.describe()
        assert d["name"] == name and d["reference"] and d["trainer"] in ("standard", "two_stage", "speaker_pretrain", "classic")


def test_blocks_shapes() -> None:
    x = torch.randn(2, 8, 10, 12)
    assert BasicBlock(8, 16, 2, se=True)(x).shape == (2, 16, 5, 6)
    assert BasicBlock(8, 8, 1)(x).shape == x.shape
    se = SqueezeExcitation(8, 4)
    gate = se(torch.ones(1, 8, 2, 2))
    assert gate.shape == (1, 8, 2, 2) and torch.all((gate > 0) & (gate < 1))


def test_resnet18_feature_maps_and_logits() -> None:
    model = ResNet18(5, 1, width=16, se=True)
    x = torch.randn(2, 1, 64, 96)
    maps = model.features(x)
    assert maps.shape == (2, 16 * 8, 2, 3)  # /32 in both axes
    assert model(x).shape == (2, 5) and model.embed(x).shape == (2, 128)


def test_cnn_lstm_matches_the_specification() -> None:
    model = CNNLSTM(4, 3)
    convs = [m for m in model.conv if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32] and all(c.kernel_size == (5, 5) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.conv) == 2
    assert model.lstm.hidden_size == 512 and model.dropout.p == 0.5
    assert model(torch.randn(2, 3, 64, 40)).shape == (2, 4)


def test_plain_cnn_embed() -> None:
    model = PlainCNN(3, 2, channels=(8, 16))
    assert model.embed(torch.randn(2, 2, 32, 32)).shape == (2, 16)


def test_alexnet_layout_and_shapes() -> None:
    model = AlexNet(6, 3, width_mult=0.25)
    keys = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    assert keys == {"features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4",
                    "classifier.6"}
    x = torch.randn(2, 3, 227, 227)
    assert model(x).shape == (2, 6) and model.embed(x).shape == (2, 1024)
    assert model.features[0].kernel_size == (11, 11) and model.features[0].stride == (4, 4)
    assert [model.features[i].out_channels for i in (0, 3, 6, 8, 10)] == [16, 48, 96, 64, 64]  # 64,192,384,256,256 / 4
    original = AlexNet(4, 3, variant="original", width_mult=0.25)
    assert [original.features[i].out_channels for i in (0, 3, 6, 8, 10)] == [24, 64, 96, 96, 64]  # 96,256,384,384,256 / 4


# The weight files are saved in torchvision's AlexNet key layout; a width multiplier keeps them small
# (the full 1000-class file is 240 MB) while the keys and the loading logic stay the same.
W = 0.125


def _torchvision_like_state(n_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return AlexNet(n_classes, 3, width_mult=W).state_dict()


def test_load_imagenet_weights_from_a_local_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "alexnet-imagenet.pth"
    state = _torchvision_like_state(1000)
    torch.save(state, path)
    model = AlexNet(6, 3, width_mult=W)
    report = load_imagenet_weights(model, path)
    assert report["skipped"] == ["classifier.6.weight", "classifier.6.bias"]
    assert torch.equal(model.state_dict()["features.0.weight"], state["features.0.weight"])
    assert torch.equal(model.state_dict()["classifier.4.weight"], state["classifier.4.weight"])
    assert model.state_dict()["classifier.6.weight"].shape == (6, 512)
    mono = AlexNet(6, 1, width_mult=W)
    load_imagenet_weights(mono, path)
    assert torch.allclose(mono.state_dict()["features.0.weight"][:, 0], state["features.0.weight"].sum(dim=1), atol=1e-6)


def test_alexnet_without_weights_logs_and_bad_files_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        report = load_imagenet_weights(AlexNet(4, 3, width_mult=0.25), None)
    assert report["loaded"] == [] and "random init" in caplog.text
    with pytest.raises(ConfigError, match="not found"):
        load_imagenet_weights(AlexNet(4, 3, width_mult=0.25), tmp_path / "missing.pth")
    torch.save(AlexNet(4, 3, width_mult=0.5).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(ConfigError, match="features.0.weight"):
        load_imagenet_weights(AlexNet(4, 3, width_mult=0.25), tmp_path / "wider.pth")


def test_alexnet_batch_norm_variant_normalises_every_conv_and_has_no_imagenet_weights(tmp_path: Path) -> None:
    plain, normed = AlexNet(4, 3, width_mult=W), AlexNet(4, 3, width_mult=W, batch_norm=True)
    convs = [m for m in normed.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in normed.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 5 and [n.num_features for n in norms] == [c.out_channels for c in convs]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(3, 3, 64, 64)
    normed.train()
    h = x
    for layer in normed.features[:2]:  # conv1 then its BatchNorm: zero mean, unit variance per channel
        h = layer(h)
    assert torch.allclose(h.mean(dim=(0, 2, 3)), torch.zeros(norms[0].num_features), atol=1e-5)
    assert normed(x).shape == (3, 4) and normed.embed(x).shape == (3, normed.embed_dim)
    torch.save(_torchvision_like_state(1000), tmp_path / "imagenet.pth")
    with pytest.raises(ConfigError, match="batch_norm=True has no ImageNet weights"):
        load_imagenet_weights(normed, tmp_path / "imagenet.pth")


def test_speaker_znorm_uses_each_speakers_own_statistics() -> None:
    from ser_pipeline.models.classic import speaker_znorm

    X = np.array([[1.0, 10.0], [3.0, 30.0], [100.0, 0.0], [102.0, 4.0]])
    out = speaker_znorm(X, ["a", "a", "b", "b"])
    assert np.allclose(out, [[-1, -1], [1, 1], [-1, -1], [1, 1]])


def test_functionals_svm_gives_posteriors_for_every_class() -> None:
    from ser_pipeline.models.classic import FunctionalsSVM

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 3], 10)  # class 2 absent from training
    X = rng.standard_normal((30, 5)) + y[:, None] * 2.0
    svm = build_model("svm", 4, 0, C=1.0)
    assert isinstance(svm, FunctionalsSVM) and svm.speaker_norm
    probs = svm.fit(X, y).predict_proba(X)
    assert probs.shape == (30, 4) and np.allclose(probs.sum(axis=1), 1.0) and np.all(probs[:, 2] == 0)
    assert (probs.argmax(axis=1) == y).mean() > 0.9
    with pytest.raises(ConfigError, match="C"):
        build_model("svm", 4, 0, C=0.0)


def test_opensmile_functionals_are_a_store_feature_kind(tmp_path: Path, write_wav) -> None:
    """eGeMAPS functionals go through the store like log-Mels: keyed by the spec digest, ``(1, 88, 1)``
    float32 equal to openSMILE's own output, computed once (a second featurize computes nothing)."""
    opensmile = pytest.importorskip("opensmile")
    import pandas as pd

    from feature_store.store import FeatureStore
    from ser_pipeline.audio import file_sha256, load
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.experiments.features import featurize
    from ser_pipeline.features import feature_spec

    paths = [write_wav(tmp_path / f"{i}.wav", 0.5, freq=150 + 50 * i) for i in range(3)]
    manifest = pd.DataFrame({"utterance_id": [f"u{i}" for i in range(3)], "speaker": ["a", "a", "b"],
                             "emotion": ["x", "y", "x"], "path": [str(p) for p in paths],
                             "sha256": [file_sha256(p) for p in paths], "corpus": "t"})
    spec = feature_spec("functionals")
    assert spec.digest() != feature_spec("functionals", functional_set="IS09").digest()
    store = FeatureStore(tmp_path / "features")
    report, _ = featurize(manifest, spec, parse_augment("orig"), store, manifest_name="t", manifest_digest="d")
    assert report.computed == 3 and not report.failed
    fset = store.open_set(spec)
    got = fset.read_many([(sha, "orig") for sha in manifest["sha256"]])
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    wave, sr = load(str(paths[1]), sample_rate=16000)
    want = smile.process_signal(wave, sr).to_numpy()[0]
    assert got[1].shape == (1, 88, 1) and got[1].dtype == np.float32
    np.testing.assert_allclose(got[1].reshape(-1), want, rtol=1e-6)
    again, _ = featurize(manifest, spec, parse_augment("orig"), store, manifest_name="t", manifest_digest="d")
    assert again.computed == 0 and again.reused == 3
    listed = {s["digest"]: s for s in store.list_sets()}[spec.digest()]
    assert listed["kind"] == "functionals" and listed["items"] == 3


def test_functionals_spec_refuses_float16_and_unknown_sets() -> None:
    from ser_pipeline.features import feature_spec

    with pytest.raises(ConfigError, match="dtype"):
        feature_spec("functionals", dtype="float16")
    with pytest.raises(ConfigError, match="functional_set.*eGeMAPSv02"):
        feature_spec("functionals", functional_set="MFCC")
    assert feature_spec("functionals").bands == 88 and feature_spec("functionals", functional_set="IS09").bands == 384


def test_statistics_pooling_is_the_mean_and_std_over_valid_steps() -> None:
    import torch

    from ser_pipeline.models.baselines import PlainCNN
    from ser_pipeline.models.blocks import masked_time_stats

    x = torch.zeros(2, 1, 2, 4)
    x[0, 0, :, :] = torch.tensor([1.0, 3.0, 100.0, 100.0])  # steps 3-4 are padding for item 0
    x[1, 0, :, :] = torch.tensor([2.0, 2.0, 2.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8], dtype=torch.bool)  # input T = 8: 2 frames a step
    out = masked_time_stats(x, mask, eps=0.0)
    assert torch.allclose(out, torch.tensor([[2.0, 1.0], [2.0, 0.0]]))
    model = PlainCNN(4, 3, channels=(4, 8), pool="stats")
    assert model.embed_dim == 16 and model(torch.randn(3, 3, 16, 40)).shape == (3, 4)
    with pytest.raises(ConfigError, match="stats"):
        PlainCNN(4, 3, channels=(4, 8), pool="median")
