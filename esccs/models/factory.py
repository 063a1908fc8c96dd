"""The model front door: a registry of named architectures, :class:`ModelConfig` and :func:`create_model`.

timm-style: each architecture is a small function decorated with :func:`register_model` that turns a resolved
:class:`ModelConfig` into a module; :func:`create_model` is the only way in, and every model it returns carries its
resolved config as ``model.esccs_config`` (saved with every checkpoint and export).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esccs.errors import ConfigError
from esccs.models.classifier import Classifier
from esccs.models.dual import DualBranchNet
from esccs.models.measure import count_parameters, model_flops
from esccs.models.resnet import resnet, resolve_stem
from esccs.spec import CLASS_PRESETS, S1_BANDS, S2_BANDS, S2_L2A_12_BANDS, S2_LAND_BANDS, S2_RGB_BANDS

DEFAULT_CLASSES = "sen12ms_cloud"
#: band count -> the band list assumed when only a count is given
OPTICAL_BY_COUNT: dict[int, tuple[str, ...]] = {10: S2_LAND_BANDS, 13: S2_BANDS, 12: S2_L2A_12_BANDS, 3: S2_RGB_BANDS}
SAR_BY_COUNT: dict[int, tuple[str, ...]] = {2: S1_BANDS}
MODALITIES: tuple[str, ...] = ("optical", "sar")


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; choose one of {', '.join(choices)}"


def _resolve_bands(bands: Sequence[str] | None, chans: int | None, by_count: dict[int, tuple[str, ...]],
                   what: str) -> tuple[tuple[str, ...] | None, int]:
    """Reconcile a band list with a channel count (either may be missing; names win when both agree)."""
    if bands is not None:
        bands = tuple(bands)
        if chans is not None and chans != len(bands):
            raise ConfigError(f"{what}: {chans} channels but {len(bands)} band names {list(bands)}")
        return bands, len(bands)
    if chans is None:
        default = next(iter(by_count.values()))
        return default, len(default)
    if chans < 1:
        raise ConfigError(f"{what}: channel count must be >= 1, got {chans}")
    return by_count.get(chans), chans  # unknown count: bands unnamed (None)


def _resolve_classes(classes: str | Sequence[str] | None, n_classes: int | None) -> tuple[tuple | None, int]:
    if isinstance(classes, str):
        if classes not in CLASS_PRESETS:
            raise ConfigError(f"unknown class preset {classes!r}" + _did_you_mean(classes, list(CLASS_PRESETS)))
        classes = CLASS_PRESETS[classes]
    elif classes is None and n_classes is None:
        classes = CLASS_PRESETS[DEFAULT_CLASSES]
    if classes is None:
        if n_classes < 0:
            raise ConfigError(f"n_classes must be >= 0, got {n_classes}")
        return None, n_classes
    classes = tuple(classes)
    if n_classes is not None and n_classes != len(classes):
        raise ConfigError(f"n_classes={n_classes} but {len(classes)} class names were given")
    return classes, len(classes)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: architecture, input bands, classes, normalisation, patch size.

    Unset fields are filled by :meth:`resolved` (which :func:`create_model_from_config` calls); the resolved form is
    what checkpoints store.

    Attributes:
        name: a registered architecture (:func:`list_models`), e.g. ``"resnet18"`` or ``"dual_resnet18"``.
        n_classes: number of classes; ``0`` on a classifier name gives the bare encoder (features ``(B, d)``).
        classes: a preset of :data:`esccs.spec.CLASS_PRESETS` (``"sen12ms_cloud"``, the default; ``"hunan_cloud"``,
            ``"igbp_simple"``) or a list of names; sets ``n_classes``.
        in_chans: input channels of a classifier, or of the optical branch of a dual model.
        sar_chans: channels of the SAR input (2: VV, VH).
        width: channels of the first ResNet stage (64 = the standard family; 16 or 32 for CPU runs).
        stem: ``"auto"`` (basic below 128 px, deep from 128 px), ``"basic"``, ``"deep"``, ``"classic"``, ``"patch"``
            (see :mod:`esccs.models.resnet`).
        optical_bands: band names of the optical input, in channel order (default: the 10 S2 land bands).
        sar_bands: band names of the SAR input (default ``("VV", "VH")``).
        normalization: ``{"optical": Normalizer.to_dict(), "sar": ...}`` (see :mod:`esccs.data.transforms`),
            ``"sen12ms"`` for the official SEN12MS statistics of the named bands, or ``None``.
        patch_size: the training patch size in pixels (picks the stem; recorded for export and inference).
        modality: the input of a classifier, ``"optical"`` or ``"sar"``; ``"optical+sar"`` for dual models.
        zero_init_last: start every residual branch at zero (last BN gamma = 0).
    """

    name: str = "resnet18"
    n_classes: int | None = None
    classes: tuple[str, ...] | str | None = None
    in_chans: int | None = None
    sar_chans: int | None = None
    width: int = 64
    stem: str = "auto"
    optical_bands: tuple[str, ...] | None = None
    sar_bands: tuple[str, ...] | None = None
    normalization: dict | str | None = None
    patch_size: int = 128
    modality: str | None = None
    zero_init_last: bool = True

    @property
    def family(self) -> str:
        """``"dual"`` for the dual-branch target models, else ``"classifier"``."""
        return "dual" if self.name.startswith("dual_") else "classifier"

    @property
    def input_bands(self) -> tuple[str, ...] | None:
        """Band names of a classifier's input (optical or SAR per ``modality``); the optical bands for dual models."""
        return self.sar_bands if self.modality == "sar" else self.optical_bands

    def resolved(self) -> ModelConfig:
        """Fill every unset field and check consistency.

        Raises:
            ConfigError: unknown preset/stem/modality, band names that disagree with a channel count, bad sizes.
        """
        classes, n_classes = _resolve_classes(self.classes, self.n_classes)
        if self.width < 1 or self.patch_size < 8:
            raise ConfigError(f"width must be >= 1 and patch_size >= 8, got {self.width} and {self.patch_size}")
        try:
            stem = resolve_stem(self.stem, self.patch_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.family == "dual":
            if n_classes == 0:
                raise ConfigError(f"{self.name} needs n_classes >= 1")
            if self.modality not in (None, "optical+sar"):
                raise ConfigError(f"{self.name} takes optical and SAR; modality={self.modality!r} does not apply")
            opt, in_chans = _resolve_bands(self.optical_bands, self.in_chans, OPTICAL_BY_COUNT, "optical input")
            sar, sar_chans = _resolve_bands(self.sar_bands, self.sar_chans, SAR_BY_COUNT, "SAR input")
            modality = "optical+sar"
        else:
            modality = self.modality or "optical"
            if modality not in MODALITIES:
                raise ConfigError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
            if modality == "optical":
                opt, in_chans = _resolve_bands(self.optical_bands, self.in_chans, OPTICAL_BY_COUNT, "optical input")
                sar, sar_chans = None, None
            else:
                chans = self.in_chans if self.in_chans is not None else self.sar_chans
                sar, sar_chans = _resolve_bands(self.sar_bands, chans, SAR_BY_COUNT, "SAR input")
                opt, in_chans = None, sar_chans
        cfg = dataclasses.replace(self, n_classes=n_classes, classes=classes, in_chans=in_chans, sar_chans=sar_chans,
                                  stem=stem, optical_bands=opt, sar_bands=sar, modality=modality)
        return dataclasses.replace(cfg, normalization=_resolve_normalization(cfg))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError` naming the key."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(f"unknown model config key {key!r}" + _did_you_mean(key, names))
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)


def _resolve_normalization(cfg: ModelConfig) -> dict | None:
    norm = cfg.normalization
    if norm is None or isinstance(norm, dict):
        return norm
    if hasattr(norm, "to_dict"):  # a single Normalizer: it describes this model's (first) input
        return {"sar" if cfg.modality == "sar" else "optical": norm.to_dict()}
    if norm != "sen12ms":
        raise ConfigError(f"normalization must be a dict, a Normalizer, 'sen12ms' or None, got {norm!r}")
    from esccs.data.transforms import Normalizer  # numpy only

    keys = ("optical", "sar") if cfg.family == "dual" else (cfg.modality,)
    parts = {key: cfg.optical_bands if key == "optical" else cfg.sar_bands for key in keys}
    unnamed = [key for key, bands in parts.items() if bands is None]
    if unnamed:
        raise ConfigError(f"normalization='sen12ms' needs named {unnamed[0]} bands (pass {unnamed[0]}_bands=...)")
    return {key: Normalizer.for_bands(bands).to_dict() for key, bands in parts.items()}


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

_MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register_model(fn: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
    """Register ``fn`` (resolved :class:`ModelConfig` -> module) under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"dual_*"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` with a "did you mean" if ``name`` is not registered."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}" + _did_you_mean(name, list_models()))


def create_model_from_config(cfg: ModelConfig) -> nn.Module:
    """Build the model a :class:`ModelConfig` describes; the resolved config is attached as ``model.esccs_config``."""
    check_model_name(cfg.name)
    cfg = cfg.resolved()
    model = _MODELS[cfg.name](cfg)
    model.esccs_config = cfg
    return model


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Create a registered model by name; ``kwargs`` are :class:`ModelConfig` fields.

    Raises:
        ConfigError: unknown name (with a suggestion), unknown keyword, or an inconsistent config.

    Examples:
        >>> model = create_model("resnet18", in_chans=10, n_classes=10, width=16, patch_size=64)
        >>> model(torch.zeros(2, 10, 64, 64)).shape
        torch.Size([2, 10])
        >>> net = create_model("dual_resnet18", classes="hunan_cloud", width=16)
        >>> net.esccs_config.n_classes, net.esccs_config.stem
        (10, 'deep')
    """
    check_model_name(name)
    return create_model_from_config(ModelConfig.from_dict({"name": name, **kwargs}))


def _encoder(depth: int, in_chans: int, cfg: ModelConfig) -> nn.Module:
    return resnet(depth, in_chans=in_chans, width=cfg.width, stem=cfg.stem, zero_init_last=cfg.zero_init_last)


def _classifier(cfg: ModelConfig, depth: int) -> nn.Module:
    encoder = _encoder(depth, cfg.in_chans, cfg)
    return encoder if cfg.n_classes == 0 else Classifier(encoder, cfg.n_classes)


def _dual(cfg: ModelConfig, depth: int) -> DualBranchNet:
    return DualBranchNet(_encoder(depth, cfg.in_chans, cfg), _encoder(depth, cfg.sar_chans, cfg), cfg.n_classes)


@register_model
def resnet10(cfg: ModelConfig) -> nn.Module:
    """ResNet-10 classifier (one BasicBlock per stage): a tiny option for CPU runs and tests."""
    return _classifier(cfg, 10)


@register_model
def resnet18(cfg: ModelConfig) -> nn.Module:
    """ResNet-18 classifier (the default backbone of f_S, f_O and f_R)."""
    return _classifier(cfg, 18)


@register_model
def resnet34(cfg: ModelConfig) -> nn.Module:
    """ResNet-34 classifier."""
    return _classifier(cfg, 34)


@register_model
def dual_resnet10(cfg: ModelConfig) -> DualBranchNet:
    """Dual-branch target model with two ResNet-10 encoders."""
    return _dual(cfg, 10)


@register_model
def dual_resnet18(cfg: ModelConfig) -> DualBranchNet:
    """Dual-branch target model with two ResNet-18 encoders (the default f_T)."""
    return _dual(cfg, 18)


@register_model
def dual_resnet34(cfg: ModelConfig) -> DualBranchNet:
    """Dual-branch target model with two ResNet-34 encoders."""
    return _dual(cfg, 34)


# --------------------------------------------------------------------------------------------------------------------
# Size and cost table
# --------------------------------------------------------------------------------------------------------------------


def example_inputs(cfg: ModelConfig, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the right shapes for a resolved config: ``(optical,)``/``(sar,)`` or ``(optical, sar)``."""
    p = cfg.patch_size
    if cfg.family == "dual":
        return torch.zeros(batch, cfg.in_chans, p, p), torch.zeros(batch, cfg.sar_chans, p, p)
    return (torch.zeros(batch, cfg.in_chans, p, p),)


def describe_models(names: Sequence[str] = ("resnet18", "resnet34", "dual_resnet18"),
                    settings: Sequence[tuple[int, int]] = ((64, 128),), print_fn: Callable | None = print,
                    **kwargs: Any) -> list[dict[str, Any]]:
    """Parameter counts and per-sample forward GFLOPs of registered models, as rows (and a printed table).

    Args:
        names: registered model names.
        settings: ``(width, patch_size)`` pairs.
        print_fn: where the table goes (``None``: nowhere).
        **kwargs: further :class:`ModelConfig` fields (e.g. ``stem="basic"``).

    Returns:
        One dict per (model, setting): ``name``, ``width``, ``patch_size``, ``stem``, ``params``, ``gflops``.
    """
    rows = []
    for width, patch in settings:
        for name in names:
            model = create_model(name, width=width, patch_size=patch, **kwargs)
            cfg = model.esccs_config
            rows.append({"name": name, "width": width, "patch_size": patch, "stem": cfg.stem,
                         "params": count_parameters(model), "gflops": model_flops(model, example_inputs(cfg)) / 1e9})
    if print_fn is not None:
        print_fn(f"{'model':<16}{'width':>6}{'px':>6}  {'stem':<8}{'params':>13}{'GFLOPs':>9}")
        for r in rows:
            print_fn(f"{r['name']:<16}{r['width']:>6}{r['patch_size']:>6}  {r['stem']:<8}{r['params']:>13,}"
                     f"{r['gflops']:>9.3f}")
    return rows
