"""Training configuration: one dataclass per concern, loaded from YAML, flags override, unknown keys are errors.

The resolved configuration is saved with every run (``RUN/config.yaml``) and inside every checkpoint sidecar.
Defaults follow ``../shared/method.md``; every [design] constant there is a field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from esccs.errors import ConfigError


@dataclass
class LoopConfig:
    """The shared training loop: optimiser, schedule, precision, seeds."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01  # backbone (method.md: SGD 0.01 backbone / 0.1 head)
    lr_head: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: float = 5.0
    warmup_epochs: int = 1
    augment: bool = True
    # Random erasing (Zhong et al.): with this probability a rectangle of 5 % to erase_max of the optical input is
    # filled with one random value per band drawn over the band's valid DN range. Teaches the optical models that an
    # occluded region is not evidence, so they are unsure (not confidently wrong) on heavily clouded target patches.
    erase_p: float = 0.0
    erase_max: float = 1.0  # largest erased fraction of the image (1.0: sometimes all of it, like a full cloud)
    amp: bool = True  # bf16 autocast on CUDA only; ignored on CPU
    channels_last: bool = True
    seed: int = 0
    device: str = "cpu"
    tensorboard: bool = False


@dataclass
class ModelSpec:
    """Backbone family and size shared by every model of a run (source, auxiliaries, target, baselines)."""

    arch: str = "resnet18"
    width: int = 64
    stem: str = "auto"


@dataclass
class Step1Config:
    """Filtered pseudo-labels from the source model -> two auxiliary models (cloudy optical, SAR)."""

    policy: str = "maxprob"
    tau: float = 0.9
    min_per_class: int = 20
    frac_per_class: float = 0.05
    lambda_kd: float = 1.0
    temperature: float = 4.0
    rounds: int = 1
    init_from_source: bool = True  # the optical auxiliary starts from f_S's weights (same bands and architecture)


@dataclass
class Step2Config:
    """Unfiltered three-teacher distillation into the dual-modality target, regulated by the IRM."""

    temperature: float = 4.0
    gamma: float = 1.0  # 0 -> uniform teacher weights (no IRM-A)
    beta: float = 0.5
    alpha: float = 0.5
    k_min: float = 0.1
    irm_b: bool = True  # per-sample gradient balancing
    irm_apply: str = "grad"  # grad | loss
    reference: str = "consensus"  # consensus | source
    score: str = "prob"  # prob | entropy
    form: str = "continuous"  # continuous | ogm
    lambda_u: float = 0.5
    filter: bool = False  # ablation: filter step-2 samples too (the paper says worse)
    init_from_teachers: bool = True  # optical / SAR encoders start from f_O / f_R


@dataclass
class TrainConfig:
    """Everything ``esccs train`` needs; the same object is the Python API."""

    data: str = ""
    out: str = "runs/esccs"
    method: str = "esccs"
    ablation: str = ""
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    model: ModelSpec = field(default_factory=ModelSpec)
    source: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, erase_p=0.5))
    aux: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, erase_p=0.5))
    target: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30))
    step1: Step1Config = field(default_factory=Step1Config)
    step2: Step2Config = field(default_factory=Step2Config)
    seed: int = 0
    device: str = "cpu"

    def loop(self, stage: str) -> LoopConfig:
        """The loop settings of a stage with the run's seed and device applied."""
        base = {"source": self.source, "aux": self.aux}.get(stage, self.target)
        return dataclasses.replace(base, seed=self.seed, device=self.device)


def _build(default, data: dict, where: str):
    """A copy of the dataclass instance ``default`` with ``data`` applied (nested dicts update nested dataclasses)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(default)}
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        current = getattr(default, name)
        if dataclasses.is_dataclass(current):
            kwargs[name] = _build(current, value, f"{where}.{name}")
        elif isinstance(current, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return dataclasses.replace(default, **kwargs)


def from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts; unknown keys raise :class:`ConfigError` naming the key."""
    return _build(TrainConfig(), data, where)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load YAML (optional) and apply flat or dotted overrides (``{"target.epochs": 5, "seed": 1}``)."""
    data: dict = {}
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: unreadable config ({str(e).splitlines()[0]})") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(data, str(path or "config"))


def to_dict(cfg: TrainConfig) -> dict:
    """Plain-data form (tuples as lists) for YAML / JSON."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    import yaml

    from esccs.io.atomic import write_text

    return write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
