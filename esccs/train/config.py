"""Training configuration: one dataclass per concern, loaded from YAML, flags override, unknown keys are errors.

The resolved configuration is saved with every run (``RUN/config.yaml``) and inside every checkpoint sidecar.
Defaults follow ``docs/method.md``; every [design] constant there is a field here. Every enumerated field has a
closed set of values (the ops' and filters' own tables), checked when the dataclass is built: a typo fails at load
with the key, the bad value and the closest valid one, never after a stage has trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from esccs.errors import ConfigError

#: closed value sets of the enumerated fields (the ops' and filters' own tables where they exist)
DEVICES = ("cpu", "cuda")
SELECT = ("val", "val-loss", "last")
IRM_APPLY = ("grad", "loss")
AUX_LABELS = ("hard", "soft")
VOTES = ("teacher", "modality")
RELABEL = ("sar", "both")
FUSIONS = ("product", "mixture")
SAR_TEACHERS = ("optical", "source")
RADIOMETRIC = ("auto", "clear", "none")


def _choices() -> dict[str, tuple[str, ...]]:
    """Enumerated config fields -> valid values (imported lazily: the tables live with their code)."""
    from esccs.ops.irm_kd.reference import FORMS, REFERENCES, SCORES
    from esccs.train.filters import POLICIES

    return {"policy": POLICIES, "irm_apply": IRM_APPLY, "reference": REFERENCES, "score": SCORES, "form": FORMS,
            "select": SELECT, "clouded": AUX_LABELS, "vote": VOTES, "relabel": RELABEL,
            "fusion": FUSIONS, "sar_teacher": SAR_TEACHERS, "radiometric": RADIOMETRIC}


def check_choice(where: str, value: str, choices) -> None:
    """Raise :class:`ConfigError` naming the key, the bad value and the closest valid one."""
    if value in choices:
        return
    import difflib

    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.0)
    raise ConfigError(f"{where}: invalid value {value!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                      + f"; expected one of {', '.join(map(str, choices))}")


def check_device(where: str, value: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not (value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit())):
        check_choice(where, value, DEVICES)


def _check_enums(obj, where: str) -> None:
    """Check every enumerated string field of a config dataclass against :func:`_choices`."""
    table = _choices()
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name in table and isinstance(v, str):
            check_choice(f"{where}.{f.name}", v, table[f.name])


@dataclass
class LoopConfig:
    """The shared training loop: optimiser, schedule, precision, seeds."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01  # backbone (docs/method.md: SGD 0.01 backbone / 0.1 head)
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
    # Checkpoint selection on the stage's validation data (source val split for stage 0; a scene-grouped held-out
    # part of target-train scored against the stage's own pseudo-labels / teachers for target stages; never target
    # labels): "val-loss" keeps the epoch with the lowest loss there (the stage's own loss), "val" the best accuracy
    # (ties: lower loss), "last" the last epoch (docs/method.md, "Checkpoint selection").
    select: str = "val-loss"
    # Set from the run's ``seed`` / ``device`` (TrainConfig); a stage-level value is refused at load.
    seed: int = 0
    device: str = "cpu"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check_enums(self, "loop")
        check_device("loop.device", self.device)
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"loop.{name}: must be >= 1, got {getattr(self, name)}")


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
    q: float = 0.5  # classwise_topq: kept fraction of every predicted class
    lambda_kd: float = 1.0
    temperature: float = 4.0
    init_from_source: bool = True  # the optical auxiliary starts from f_S's weights (same bands and architecture)
    # [ours] cloud-aware step 1: the cloud cover (from the mask, an input, never a label) decides whom f_S's
    # pseudo-label is given to. Samples above ``cloud_max`` get no hard pseudo-label (f_S only sees cloud there);
    # ``clouded="soft"`` gives f_O a uniform soft target on them instead (so it is diffuse, not confidently wrong,
    # under full cloud), ``"hard"`` keeps docs/method.md's recipe. ``cloud_max = 1.0`` + ``"hard"``: the paper.
    cloud_max: float = 0.9
    clouded: str = "soft"
    # [ours] f_O also learns from the labelled *source* images under simulated clouds (the generator's cloud model,
    # esccs.data.clouds; coverage uniform in [0, 1], random preset, fixed seed): CE to the source label + KD to
    # f_S's logits on the clear image (privileged-information distillation). False = the paper.
    source_clouds: bool = True
    # [ours, off by default] who pseudo-labels f_R's training patches: "optical" = the trained f_O (its logits as
    # labels and KD targets; f_O reads partly clouded patches better than f_S), "source" = f_S (the paper). On the
    # development data f_R was no better with "optical" (41.3 vs 40.7 % OA, 31 vs 41 % under full cloud).
    sar_teacher: str = "source"
    # [ours] relative radiometric normalisation of the target's optical images: per band, the mean and std of the
    # clear target-train patches (cloud cover from the mask) are mapped onto the source-train images' (an affine map
    # folded into the target models' input normaliser, so exported models carry it). "clear": whenever there are
    # enough clear patches; "auto": only when the band means differ beyond sampling noise and by enough to matter
    # (esccs.train.stages.radiometric); "none": the paper (no correction).
    radiometric: str = "auto"

    def __post_init__(self) -> None:
        _check_enums(self, "step1")
        if not 0.0 <= self.cloud_max <= 1.0:
            raise ConfigError(f"step1.cloud_max: must be in [0, 1], got {self.cloud_max}")


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
    # [ours] "modality": one vote per modality in the consensus and the IRM-A weights (optical = mean of f_S and
    # f_O, scaled by the visible fraction 1 - cloud cover; SAR = f_R); "teacher": docs/method.md's three equal votes.
    vote: str = "modality"
    # [ours] cross-modal relabelling rounds after step 2: f_T relabels target-train, samples where f_T agrees with
    # an auxiliary (cross-modal agreement) retrain the auxiliaries, then step 2 runs again; each round starts from
    # the previous round's models. 0 = the paper. 3: on the three development sets OA rose with every round up to 3
    # (docs/method.md); each round costs one f_R and one step-2 training.
    rounds: int = 3
    # [ours] which auxiliaries a relabelling round retrains: "sar" (f_R only: it gains the optical-informed labels
    # of visible patches, while f_O keeps f_S's clear-sky labels) or "both"
    relabel: str = "sar"
    # [ours] "product": with vote="modality", the student distils ONE teacher, the log-linear pool of the
    # modalities (v log p^O + log p^R, v = 1 - cover; the Bayes fusion of conditionally independent modalities),
    # and its fused head starts as the product of f_O's and f_R's heads; "mixture": the IRM-weighted sum of three
    # KD terms (method.md's form)
    fusion: str = "product"
    # [ours] temperature-scale f_O and f_R before step 2: each teacher's temperature minimises its NLL against
    # step 1's pseudo-labels (f_S's argmax) on the visible patches of the held-out part of target-train (never target
    # labels); the pooled teacher then weighs the modalities by how far each deserves its confidence. False = paper.
    calibrate: bool = True

    def __post_init__(self) -> None:
        _check_enums(self, "step2")
        if self.gamma < 0:
            raise ConfigError(f"step2.gamma: must be >= 0, got {self.gamma}")
        if self.rounds < 0:
            raise ConfigError(f"step2.rounds: must be >= 0, got {self.rounds}")


@dataclass
class TrainConfig:
    """Everything ``esccs train`` needs; the same object is the Python API."""

    data: str = ""
    out: str = "runs/esccs"
    method: str = "esccs"  # comma list or "all"; `esccs train --method` overrides; saved as what ran
    ablation: str = ""  # comma list or "all"
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    model: ModelSpec = field(default_factory=ModelSpec)
    source: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, erase_p=0.5))
    aux: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, erase_p=0.5))
    target: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30))
    step1: Step1Config = field(default_factory=Step1Config)
    step2: Step2Config = field(default_factory=Step2Config)
    seed: int = 0
    device: str = "cpu"
    # Scene-grouped fraction of target-train held out (labels still hidden) to select target-stage checkpoints.
    val_fraction: float = 0.15

    def __post_init__(self) -> None:
        check_device("device", self.device)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        from esccs.train.methods import resolve_methods

        resolve_methods(self.method, self.ablation)  # unknown names fail at load, with a hint
        for name in ("source", "aux", "target"):  # the stages share the run's seed and device (saved as such)
            setattr(self, name, dataclasses.replace(getattr(self, name), seed=self.seed, device=self.device))

    def loop(self, stage: str) -> LoopConfig:
        """The loop settings of a stage (``source``, ``aux`` or any target stage), with the run's seed and device."""
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
        if isinstance(default, LoopConfig) and name in ("seed", "device"):
            raise ConfigError(f"{where}.{name}: stages share the run's {name}; set the top-level `{name}` instead")
        if dataclasses.is_dataclass(current):
            kwargs[name] = _build(current, value, f"{where}.{name}")
        elif isinstance(current, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return dataclasses.replace(default, **kwargs)
    except ConfigError as e:  # name the key as the user wrote it: "cfg.yaml.step2.irm_apply", not "step2.irm_apply"
        msg = str(e)
        head, sep, rest = msg.partition(".")
        if sep and head in ("loop", "step1", "step2") and dataclasses.is_dataclass(default) and \
                not isinstance(default, TrainConfig):
            msg = f"{where}.{rest}"
        elif isinstance(default, TrainConfig):
            msg = f"{where}: {msg}"
        raise ConfigError(msg) from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts; unknown keys raise :class:`ConfigError` naming the key.

    A stage's ``seed`` / ``device`` may only repeat the run's (as a saved ``config.yaml`` does); any other value
    is refused, since every stage runs with the run's seed and device.
    """
    data = dict(data)
    run = {"seed": data.get("seed", TrainConfig.seed), "device": data.get("device", TrainConfig.device)}
    for stage in ("source", "aux", "target"):
        if isinstance(data.get(stage), dict):
            data[stage] = {k: v for k, v in data[stage].items() if not (k in run and v == run[k])}
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
