"""An experiment's configuration and its resolution against the model registry.

:class:`ExperimentConfig` is what a user writes (``ser train`` flags and ``--set``, or one model of
a ``ser run`` YAML); :func:`resolve` fills every default from the model entry and validates every
section strictly, before any work, with the field path, the value and the valid names::

    models[cnn].hparams: unknown field 'chanels'; valid: channels, dropout

Training settings have one path: ``train`` (TrainConfig fields) for the main network,
``stage2.recipe`` for the stage-2 head of a two-stage model, ``speaker_epochs``/``speaker_lr``
under ``train`` for speaker pre-training. ``epochs`` is the shorthand of ``train.epochs`` (the
main network, and the speaker pre-training's default); it never touches stage 2, whose epochs are
``stage2.recipe.epochs`` only. The device is not part of
the configuration: it is a runtime argument of the runner.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ser_pipeline.augment import parse_augment
from ser_pipeline.config import Spec, canonical_json, check_fields, require, stable_digest
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.dataset.views import VIEW_REVISIONS, ViewSpec
from ser_pipeline.errors import ConfigError, ProtocolError
from ser_pipeline.experiments.feature_spec import AUTO_PRESET, resolve_feature_spec  # noqa: F401 - re-exported
from ser_pipeline.features import PRESETS as FEATURE_PRESETS
from ser_pipeline.features import FeatureSpec
from ser_pipeline.models import ModelEntry, get_model
from ser_pipeline.models.alexnet import IMAGENET_LAYOUT, WEIGHTS_ENV
from ser_pipeline.splits import PROTOCOLS
from ser_pipeline.training.config import MODERN_RECIPE, TrainConfig
from ser_pipeline.training.trainers import TRAINERS, Trainer, TrainingPlan

PRESETS = ("default", "paper", "cpu")
VALIDATIONS = ("rotate", "fixed")
FINAL_MODELS = ("best_fold", "all_speakers")  # what the model folder (and the registry) serves
DEFAULT_SPEC_AUGMENT: dict[str, Any] = {"random_cut": True, "freq_masks": 2, "freq_width": 8, "time_masks": 2,
                                        "time_width": 10}
"""Spectrogram augmentation of the default and cpu presets for neural models (issue 13): random
time crops in training (centre at evaluation) and SpecAugment time/frequency masks."""
DEFAULT_VIEW: dict[str, Any] = {"normalise": "speaker", "floor_db": 80.0}
"""View settings of the default and cpu presets: per-speaker normalisation, silence floored 80 dB
below each utterance's peak; fixed views take their length from the corpus (90th percentile)."""
SPEAKER_KEYS = ("speaker_epochs", "speaker_lr", "speaker_freeze")  # speaker pre-training settings under ``train``


@dataclass(frozen=True)
class ExperimentConfig(Spec):
    """One experiment: a model on a corpus under a protocol, with a seed.

    Empty/None fields take the model entry's values. ``preset="paper"`` takes the model's paper
    recipe, protocol, waveform augmentation and spectrogram augmentation when those are not given.
    ``"default"`` keeps the speaker-independent ``loso`` and applies the issue-13 recipe over the
    entry's: per-speaker normalisation, silence floor, corpus-length crops (fixed views), random
    crops + SpecAugment masks, AdamW + warm-up/cosine + label smoothing + precise-BN
    (:data:`ser_pipeline.training.config.MODERN_RECIPE`); ``"cpu"`` is ``default`` plus the
    model's reduced CPU size (``ModelEntry.cpu``: hparams, view, train).
    ``validation``: ``rotate`` (validation speakers rotate with the test fold,
    :func:`ser_pipeline.splits.rotated_validation`) or ``fixed`` (the seeded
    :func:`~ser_pipeline.splits.holdout_validation`). ``refit``: after the epoch count is chosen on
    validation, retrain on every non-test speaker for that many epochs (standard trainer).
    ``final_model``: what the model folder holds, the model ``ser predict`` and the registry serve:
    ``best_fold`` (the fold model with the best validation UA) or ``all_speakers`` (after the folds,
    one more model trained on every speaker for the median of the folds' epochs chosen on
    validation; nothing is scored on it, the fold metrics are the estimate of its quality).
    ``view``/``train``/``stage2`` are override mappings (ViewSpec fields; TrainConfig fields;
    ``{"hparams": {...}, "recipe": {...}}``). ``max_folds`` runs only the first N folds.
    ``features`` is a feature preset name ('' or 'auto': the model's); ``feature_overrides``
    FeatureSpec fields.
    """

    CODE_VERSION = "1"
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"final_model": "best_fold"}

    model: str = "cnn"
    corpus: str = "demo"
    features: str = ""
    feature_overrides: dict[str, Any] = field(default_factory=dict)
    augment: str = ""
    protocol: str = ""
    protocol_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    spec_augment: dict[str, Any] | None = None
    preset: str = "default"
    max_folds: int | None = None
    validation: str = "rotate"
    refit: bool = True
    final_model: str = "best_fold"

    def validate(self) -> None:
        require(bool(self.model), "model", self.model, "name a registered model (see `ser models`)")
        require(bool(self.corpus), "corpus", self.corpus, "name an ingested corpus")
        require(self.preset in PRESETS, "preset", self.preset, f"valid: {', '.join(PRESETS)}")
        require(self.validation in VALIDATIONS, "validation", self.validation, f"valid: {', '.join(VALIDATIONS)}")
        require(self.epochs is None or self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        require(self.final_model in FINAL_MODELS, "final_model", self.final_model, f"valid: {', '.join(FINAL_MODELS)}")
        require(self.max_folds is None or self.max_folds >= 1, "max_folds", self.max_folds, "must be >= 1")
        check_fields("stage2", self.stage2, ("hparams", "recipe"))


@dataclass(frozen=True)
class Resolved:
    """An ExperimentConfig with every default filled in from the model entry."""

    entry: ModelEntry
    trainer: Trainer
    protocol: str
    features: FeatureSpec | None  # None for trainers that do not read the feature store
    augment: str
    plan: TrainingPlan

    @property
    def feature_digest(self) -> str:
        return self.features.digest() if self.features is not None else ""

    def to_dict(self, *, identity: bool = False) -> dict[str, Any]:
        """The resolved recipe as plain JSON; ``identity``: every spec as :meth:`Spec.identity` (fields
        added later left out at their defaults), the form :func:`experiment_digest` hashes."""
        p = self.plan
        form = (lambda spec: spec.identity()) if identity else (lambda spec: spec.to_dict())  # noqa: E731
        return json.loads(canonical_json({
            "model": self.entry.describe(),
            "protocol": self.protocol,
            "feature_spec": form(self.features) if self.features is not None else None,
            "augment": self.augment,
            "hparams": p.hparams,
            "view": form(p.view),
            "train": form(p.train),
            "spec_augment": form(p.spec_augment) if p.spec_augment else None,
            "stage2_hparams": p.stage2_hparams,
            "stage2_train": form(p.stage2_train) if p.stage2_train else None,
            "speaker_train": form(p.speaker_train) if p.speaker_train else None,
            "refit": p.refit,
            "notes": list(p.notes),
            # only where there is speaker pre-training: other experiments keep their ids
            **({"speaker_freeze": p.speaker_freeze} if p.speaker_train else {}),
            # two-stage and speaker pre-training models refit stage 2 since stop 24: a new computation, so
            # a new id (records made before keep theirs; they hold what --set refit=false computes now)
            **({"refit_stage": "stage2"} if p.refit and (p.stage2_train or p.speaker_train) else {}),
        }))


def hparam_names(build: Any, defaults: dict[str, Any]) -> list[str]:
    """The hyperparameters a builder takes: its declared defaults and its keyword-only arguments."""
    params = inspect.signature(build).parameters.values()
    return sorted(set(defaults) | {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY})


def check_hparams(where: str, given: dict[str, Any], build: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """``{**defaults, **given}`` after checking every given name (ConfigError names the valid ones)
    and that a switch (an hparam whose default is true or false) is given true or false: a typo
    such as ``maybe`` would otherwise read as true, before any builder could refuse it."""
    check_fields(where, given, hparam_names(build, defaults))
    for name, value in given.items():
        require(not isinstance(defaults.get(name), bool) or isinstance(value, bool), f"{where}.{name}", value,
                "must be true or false")
    return {**defaults, **given}


SPEC_AUGMENT_ALIASES = {"horizontal_mixup": "hmixup", "salt_and_pepper": "salt_pepper"}
"""Model-entry names of :class:`SpecAugmentSpec` fields."""


def _cutout(o: dict[str, Any]) -> dict[str, Any]:
    return {"cutout": int(o.get("holes", 1)), **({"cutout_frac": tuple(o["max_frac"])} if "max_frac" in o else {})}


# The model-entry form ``{name: {option: value}}``: per field, its options and their flat fields.
SPEC_AUGMENT_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "hmixup": (("a", "b", "c", "ratio"), lambda o: {
        "hmixup": (float(o.get("a", 0.05)), float(o.get("b", 1.25)), float(o.get("c", 1.0))),
        "ratio": float(o.get("ratio", 0.3))}),
    "mixup": (("alpha", "ratio"), lambda o: {"mixup": float(o.get("alpha", 0.2)), "ratio": float(o.get("ratio", 0.3))}),
    "cutout": (("holes", "max_frac"), _cutout),
    "salt_pepper": (("amount",), lambda o: {"salt_pepper": float(o.get("amount", 0.01))}),
    "random_cut": ((), lambda o: {"random_cut": True}),
}


def spec_augment_fields(data: dict[str, Any], *, where: str = "spec_augment") -> dict[str, Any]:
    """Flat :class:`SpecAugmentSpec` fields of a ``spec_augment`` mapping, in either form: the model
    entry's ``{"horizontal_mixup": {"a", "b", "c", "ratio"}, "cutout": {"holes", "max_frac"},
    "salt_pepper": {"amount"}, "random_cut": {}, "mixup": {"alpha", "ratio"}}`` or flat fields
    (``{"mixup": 0.2, "freq_masks": 0}``), mixed freely. Only the fields given appear."""
    check_fields(where, data, {*SPEC_AUGMENT_ALIASES, *(f.name for f in fields(SpecAugmentSpec))})
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = SPEC_AUGMENT_ALIASES.get(key, key)
        if not isinstance(value, dict):  # a flat field, checked by SpecAugmentSpec.from_dict
            out[name] = value
            continue
        if name not in SPEC_AUGMENT_OPTIONS:
            raise ConfigError(f"{where}.{key}={value!r}: expected a value, not a mapping")
        options, flat = SPEC_AUGMENT_OPTIONS[name]
        check_fields(f"{where}.{key}", value, options)
        out.update(flat(value))
    return out


def spec_augment_from_config(data: dict[str, Any] | None, *, where: str = "spec_augment",
                             base: dict[str, Any] | None = None) -> SpecAugmentSpec | None:
    """The :class:`SpecAugmentSpec` of a ``spec_augment`` mapping (:func:`spec_augment_fields`),
    given fields over those of ``base`` (the recipe's mapping): changing one field keeps the rest of
    the recipe's augmentation. An empty mapping switches augmentation off (None); so does no
    mapping without a base."""
    if data is not None and not data:
        return None
    merged = {**spec_augment_fields(base or {}, where=where), **spec_augment_fields(data or {}, where=where)}
    return SpecAugmentSpec.from_dict(merged, where=where) if merged else None


def _train_config(recipe: dict[str, Any], *, where: str, seed: int) -> TrainConfig:
    return TrainConfig.from_dict({**recipe, "seed": seed}, where=where)


def _check_protocol(where: str, protocol: str, options: dict[str, Any]) -> None:
    try:
        fn = PROTOCOLS.get(protocol)
    except ConfigError as exc:
        raise ProtocolError(f"{where}protocol: {exc}") from None
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"]
    check_fields(f"{where}protocol_options", options, names)


def resolve(config: ExperimentConfig, *, where: str = "") -> Resolved:
    """Fill ``config`` from its model entry and validate every section.

    ``where`` prefixes error paths (``models[cnn].``). Errors: ConfigError naming the field path,
    the value and the valid names (unknown model, hparams, view, train, stage2, spec_augment,
    feature and protocol fields; values of the wrong type or out of range). Recipe decisions worth
    knowing (a from-scratch variant, an unfrozen backbone) are warned and kept in ``plan.notes``.
    """
    entry = get_model(config.model)
    trainer = TRAINERS.get(entry.trainer)
    require(config.final_model == "best_fold" or trainer.fits_final, f"{where}final_model", config.final_model,
            f"trainer {trainer.name!r} of model {entry.name!r} cannot train a model on every speaker; use best_fold")
    paper = config.preset == "paper"
    notes: list[str] = []
    cpu = _cpu_overrides(entry, config.preset, where=where)
    protocol = config.protocol or (entry.protocol if paper else "loso")
    _check_protocol(where, protocol, config.protocol_options)
    # Waveform augmentation: the user's (``orig`` = none), else the paper's or the CPU recipe's.
    augment = config.augment or (entry.augment if paper else cpu.get("augment", ""))
    parse_augment(augment)
    neural = trainer.uses_view
    default_aug = entry.spec_augment if paper else (DEFAULT_SPEC_AUGMENT if neural else None)
    spec_aug = spec_augment_from_config(config.spec_augment, base=default_aug, where=f"{where}spec_augment")
    view = (ViewSpec.from_dict(_view_fields(entry, paper, cpu, config.view), where=f"{where}view") if neural
            else ViewSpec())
    if not trainer.uses_view:
        check_fields(f"{where}view", config.view, ())
    given_hparams = _pretrained_weights(entry, {**cpu.get("hparams", {}), **config.hparams}, where=where)
    scratch = _scratch_variant(entry, paper, given_hparams, where=where)
    if scratch:
        changed = [f"{section}.{k}={v}" for section, fields in scratch.items() for k, v in fields.items()]
        _note(notes, entry, f"no pretrained weights given (hparams.weights): from-scratch {', '.join(changed)}; "
                            "--preset paper or the weights keep the paper's")
    hparams = check_hparams(f"{where}hparams", {**scratch.get("hparams", {}), **given_hparams}, entry.build,
                            entry.defaults)
    features = (resolve_feature_spec(config.model, config.features, config.feature_overrides, where=f"{where}features")
                if trainer.reads_features else None)
    if features is not None and "feature_dim" in entry.defaults and "feature_dim" not in config.hparams:
        hparams = {**hparams, "feature_dim": features.bands}  # builders sized by F take it from the spec

    base, note = _base_recipe(entry, paper, hparams, neural)
    base.update(scratch.get("train", {}))
    if note:
        _note(notes, entry, note)
    recipe, speaker = _main_recipe(entry, config, base, cpu.get("train", {}), where=where)
    train = _train_config(recipe, where=f"{where}train", seed=config.seed)
    require(train.bn_statistics == "train" or trainer.name in SPEAKER_BN_TRAINERS, f"{where}train.bn_statistics",
            train.bn_statistics, f"per-speaker BatchNorm statistics are built for the "
            f"{', '.join(SPEAKER_BN_TRAINERS)} trainers only (model {entry.name!r} uses {trainer.name!r}); use train")
    stage2_hparams, stage2_train = _stage2(entry, config, cpu, paper, where=where)
    speaker_train, freeze = _speaker_recipe(trainer.name, train, speaker, where=where)
    if speaker_train is not None and not freeze:
        _note(notes, entry, "stage 2 fine-tunes the speaker-pretrained backbone (train.speaker_freeze=false); "
                            "the paper freezes it (--preset paper or --set train.speaker_freeze=true)")
    plan = TrainingPlan(entry, hparams, view, train, spec_aug, stage2_hparams, stage2_train, speaker_train,
                        speaker_freeze=freeze, refit=config.refit, notes=tuple(notes))
    return Resolved(entry, trainer, protocol, features, augment, plan)


def _note(notes: list[str], entry: ModelEntry, text: str) -> None:
    """Keep a recipe decision for the record and warn about it now."""
    notes.append(text)
    warnings.warn(f"{entry.name}: {text}", stacklevel=3)


def _main_recipe(entry: ModelEntry, config: ExperimentConfig, base: dict[str, Any], cpu_train: dict[str, Any], *,
                 where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The main network's recipe fields (base, then the cpu recipe's, then the user's ``train`` and
    ``epochs``) and, apart, the speaker pre-training fields (:data:`SPEAKER_KEYS`). An entry without
    speaker pre-training drops those of a shared recipe and refuses them from the user."""
    if entry.trainer != "speaker_pretrain":  # an entry sharing a speaker recipe (res_trans_single_stage)
        base = {k: v for k, v in base.items() if k not in SPEAKER_KEYS}
        cpu_train = {k: v for k, v in cpu_train.items() if k not in SPEAKER_KEYS}
        given = [k for k in config.train if k in SPEAKER_KEYS]
        if given:
            raise ConfigError(f"{where}train: unknown field {given[0]!r} for model {entry.name!r}; "
                              f"{', '.join(SPEAKER_KEYS)} set speaker pre-training (trainer speaker_pretrain, e.g. res_trans)")
    recipe = {**base, **cpu_train, **config.train}
    speaker = {k: recipe.pop(k) for k in SPEAKER_KEYS if k in recipe}
    if config.epochs is not None:  # the shorthand of train.epochs (the main network only)
        require("epochs" not in config.train or config.train["epochs"] == config.epochs, f"{where}epochs",
                config.epochs, f"differs from {where}train.epochs={config.train.get('epochs')}; give one")
        recipe["epochs"] = config.epochs
    if entry.recipe.get("epochs") == 0 and "epochs" not in config.train:
        recipe["epochs"] = 0  # an ablation that never trains this stage stays untrained
    return recipe, speaker


def _stage2(entry: ModelEntry, config: ExperimentConfig, cpu: dict[str, Any], paper: bool, *,
            where: str) -> tuple[dict[str, Any], TrainConfig | None]:
    """Stage-2 hparams and recipe of a two-stage entry (the paper's, or :data:`STAGE2_MODERN` over
    it; then the cpu recipe's and the user's ``stage2``); ``({}, None)`` for any other entry, which
    refuses a ``stage2`` section."""
    if entry.stage2 is None:
        if config.stage2:
            raise ConfigError(f"{where}stage2: model {entry.name!r} has no stage 2")
        return {}, None
    hparams = check_hparams(f"{where}stage2.hparams",
                            {**cpu.get("stage2_hparams", {}), **dict(config.stage2.get("hparams") or {})},
                            entry.stage2, entry.stage2_defaults)
    base = entry.stage2_recipe if paper else {**entry.stage2_recipe, **STAGE2_MODERN}
    recipe = {**base, **cpu.get("stage2_train", {}), **dict(config.stage2.get("recipe") or {})}
    return hparams, _train_config(recipe, where=f"{where}stage2.recipe", seed=config.seed)


def _speaker_recipe(trainer: str, train: TrainConfig, speaker: dict[str, Any], *,
                    where: str) -> tuple[TrainConfig | None, bool]:
    """Stage 1 of speaker pre-training (the main recipe with its own epochs and rate, unweighted,
    unsmoothed; None for other trainers) and whether the backbone is frozen after it."""
    speaker_train = None
    if trainer == "speaker_pretrain":
        epochs = int(speaker.get("speaker_epochs", train.epochs))
        speaker_train = train.replace(epochs=epochs, lr=float(speaker.get("speaker_lr", train.lr)),
                                      class_weighted=False, label_smoothing=0.0)
    freeze = speaker.get("speaker_freeze", True)
    require(isinstance(freeze, bool), f"{where}train.speaker_freeze", freeze, "must be true or false")
    return speaker_train, freeze


STAGE2_MODERN: dict[str, Any] = {**MODERN_RECIPE, "lr": 1e-3, "precise_bn": False}
"""The stage-2 (sequence head) recipe of the default and cpu presets: AdamW from scratch."""


def _cpu_overrides(entry: ModelEntry, preset: str, *, where: str) -> dict[str, Any]:
    """The entry's CPU-size overrides (``hparams``, ``view``, ``train``, ``stage2_hparams``,
    ``stage2_train``, ``augment``: waveform variants the recipe requests from the store) for
    ``preset == "cpu"``, else nothing."""
    if preset != "cpu":
        return {}
    require(bool(entry.cpu), f"{where}preset", preset, f"model {entry.name!r} has no CPU-size recipe")
    check_fields(f"{where}cpu", entry.cpu, ("hparams", "view", "train", "stage2_hparams", "stage2_train", "augment"))
    return entry.cpu


def _view_fields(entry: ModelEntry, paper: bool, cpu: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The view: the entry's; outside ``paper`` the issue-13 defaults (and corpus-length crops for
    fixed views unless the user gives ``frames``), then the CPU size, then the user's fields."""
    fields: dict[str, Any] = dict(entry.view)
    ssl = entry.feature_preset in FEATURE_PRESETS and FEATURE_PRESETS.get(entry.feature_preset).get("kind") == "ssl"
    if not paper and not ssl:  # hidden states are not log energies: no silence floor, the entry's normalisation
        fields.update(DEFAULT_VIEW)
        if fields.get("kind", "fixed") == "fixed" and "frames" not in given and "frames" not in cpu.get("view", {}):
            fields["frames_quantile"] = 0.9
    fields.update(cpu.get("view", {}))
    fields.update(given)
    return fields


def _pretrained_weights(entry: ModelEntry, given: dict[str, Any], *, where: str) -> dict[str, Any]:
    """``given`` hparams with the ImageNet weights file the model will load, checked now.

    For models that take ``weights``: the hparam, else ``$SER_ALEXNET_WEIGHTS``, is recorded as an
    absolute path (so the record, the digest and the recipe switch all see the file the builder
    loads). A missing file, or settings the torchvision AlexNet's weights cannot fill (the cpu
    preset's quarter-width AlexNet with BatchNorm), is refused here, before any data is loaded.
    """
    if "weights" not in entry.defaults:
        return given
    source = f"{where}hparams.weights" if given.get("weights") else f"${WEIGHTS_ENV}"
    path = given.get("weights") or os.environ.get(WEIGHTS_ENV) or None
    if path is None:
        return given
    file = os.path.abspath(os.path.expanduser(str(path)))
    require(os.path.isfile(file), source, file, "ImageNet weights file not found")
    settings = {**entry.defaults, **given}
    clashes = {k: settings.get(k) for k, v in IMAGENET_LAYOUT.items() if settings.get(k) != v}
    require(not clashes, source, file, f"ImageNet weights fill the torchvision AlexNet only "
            f"({', '.join(f'{k}={v!r}' for k, v in IMAGENET_LAYOUT.items())}), not "
            f"{', '.join(f'{k}={v!r}' for k, v in clashes.items())} (such as the cpu preset's from-scratch AlexNet); "
            "use --preset default or paper, or set those hparams"
            + ("" if given.get("weights") else f"; unset ${WEIGHTS_ENV} to train it from scratch"))
    return {**given, "weights": file}


def _scratch_variant(entry: ModelEntry, paper: bool, given: dict[str, Any], *, where: str) -> dict[str, Any]:
    """The entry's from-scratch settings (``ModelEntry.scratch``: ``hparams`` and ``train`` fields)
    that apply: outside the paper preset, when no pretrained weights are given; the hparams the
    user (or the cpu recipe) sets are left out. The train fields go over the from-scratch recipe
    (:func:`_base_recipe`), under the cpu recipe's and the user's."""
    if paper or given.get("weights") or not entry.scratch:
        return {}
    check_fields(f"{where}scratch", entry.scratch, ("hparams", "train"))
    hparams = {k: v for k, v in entry.scratch.get("hparams", {}).items() if k not in given}
    return {k: v for k, v in (("hparams", hparams), ("train", entry.scratch.get("train", {}))) if v}


def _base_recipe(entry: ModelEntry, paper: bool, hparams: dict[str, Any], neural: bool) -> tuple[dict[str, Any], str]:
    """The training recipe before CPU and user overrides, and a note to record (or '').

    ``paper``: the entry's recipe (the paper's own settings); a paper that fine-tunes ImageNet
    weights (hparam ``weights``) without weights given is noted. Otherwise: the entry's recipe with
    the from-scratch :data:`MODERN_RECIPE` over it, except when pretrained weights are given (the
    paper's fine-tuning optimiser and rate are kept then)."""
    fine_tunes = "weights" in entry.defaults
    has_weights = bool(hparams.get("weights"))
    if paper or not neural:
        note = ("paper recipe assumes ImageNet weights but none are given (hparams.weights); it may not train "
                "from random initialisation" if paper and fine_tunes and not has_weights else "")
        return dict(entry.recipe), note
    if fine_tunes and has_weights:
        return dict(entry.recipe), ""
    note = ("no pretrained weights given: from-scratch variant of the paper's fine-tuning recipe "
            f"({entry.recipe.get('optimizer')} lr={entry.recipe.get('lr')} -> adamw, warm-up + cosine)" if fine_tunes else "")
    keep = {k: v for k, v in entry.recipe.items() if k in RECIPE_KEEP}
    # speaker pre-training: stage 2 fine-tunes the backbone (frozen speaker features of the few
    # training speakers of a corpus carry little emotion: CASIA validation UA 0.29 frozen, 0.40 fine-tuned)
    unfreeze = {"speaker_freeze": False} if entry.trainer == "speaker_pretrain" else {}
    return {**keep, **MODERN_RECIPE, **unfreeze, **_speaker_bn(entry)}, note


SPEAKER_BN_TRAINERS = ("standard", "two_stage")
"""Trainer kinds whose evaluation can take BatchNorm statistics per speaker (``train.bn_statistics``;
two-stage: the stage-1 embeddings of every speaker, training speakers included)."""
SPEAKER_BN_DEFAULT = ("standard",)
"""Trainer kinds whose default and cpu recipes take them (:func:`_speaker_bn`)."""


def _speaker_bn(entry: ModelEntry) -> dict[str, Any]:
    """AdaBN in the default and cpu recipes of the trainers that support it: each evaluated speaker
    is scored with BatchNorm statistics from its own unlabelled items, as its features are normalised
    with its own statistics. Chosen on CASIA validation speakers (2026-12-07, dev runs without refit,
    validation UA best epoch / mean of the last 3): cnn 0.445 / 0.411 -> 0.499 / 0.460, rescnn
    0.454 / 0.416 -> 0.488 / 0.455, att_res 0.371 / 0.342 -> 0.412 / 0.388, alexnet 0.379 / 0.336
    -> 0.375 / 0.338 (even)."""
    return {"bn_statistics": "speaker"} if entry.trainer in SPEAKER_BN_DEFAULT else {}


RECIPE_KEEP = ("batch_size", "epochs", "class_weighted", "eval_batch_size", "speaker_epochs", "speaker_lr", "grad_clip")
"""Fields of an entry's paper recipe that the default and cpu presets keep under the from-scratch recipe."""


def experiment_digest(config: ExperimentConfig, resolved: Resolved) -> str:
    """The experiment's identity: the config with the feature preset name replaced by the feature
    spec digest (equal arrays, equal identity), and the resolved recipe (hparams, view, train,
    spec augment, stage 2, speaker pre-training, refit, trainer): a changed default is a new
    experiment, never a stale cached one. No device, no paths, no descriptive text."""
    data = {k: v for k, v in config.identity().items() if k not in ("features", "feature_overrides")}
    recipe = {k: v for k, v in resolved.to_dict(identity=True).items() if k not in ("model", "feature_spec", "notes")}
    recipe["trainer"] = resolved.trainer.name
    if resolved.plan.view.kind in VIEW_REVISIONS:  # other kinds keep the ids they had
        recipe["view_revision"] = VIEW_REVISIONS[resolved.plan.view.kind]
    return stable_digest({"config": data, "features": resolved.feature_digest, "recipe": recipe},
                         version=f"ExperimentConfig:{config.CODE_VERSION}")
