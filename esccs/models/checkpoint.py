"""Checkpoints without pickle: ``<name>.safetensors`` (weights only) + ``<name>.json`` (config and provenance).

The JSON sidecar holds the resolved :class:`~esccs.models.factory.ModelConfig` (architecture, bands, classes,
normalisation, patch size), the esccs and torch versions, the sha256 of the weights file and any ``extra`` the caller
adds (training stage, epoch, metrics). Both files are written atomically (temporary file, then ``os.replace``), the
weights first: a crash between the two leaves a sidecar whose sha256 no longer matches, which loading reports.
Loading reads JSON and safetensors only, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import esccs
from esccs.errors import ConfigError, DataError
from esccs.io.atomic import atomic_path, write_json
from esccs.models.factory import ModelConfig, check_model_name, create_model_from_config

FORMAT = "esccs-checkpoint"
SCHEMA = 1
FAMILIES = ("classifier", "dual")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON config beside a weights file: ``<path minus suffix>.json``."""
    return Path(path).with_suffix(".json")


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(cfg: ModelConfig) -> str:
    return f"{cfg.name} {cfg.family}" if cfg.family == "classifier" else cfg.name


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: ModelConfig | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its config to ``<path minus suffix>.json``.

    Args:
        path: the weights file, conventionally ``*.safetensors`` (must not end in ``.json``).
        model: any module built by :func:`~esccs.models.create_model`.
        config: its :class:`ModelConfig` (default ``model.esccs_config``); stored resolved.
        extra: JSON-serialisable facts to keep beside it (``{"stage": "step2", "epoch": 30}``).

    Returns:
        The weights path.

    Raises:
        ConfigError: no config, a ``.json`` weights path, or an ``extra`` that JSON cannot hold.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(f"{path}: the weights path must not end in .json (the config sidecar takes that name)")
    config = config if config is not None else getattr(model, "esccs_config", None)
    if config is None:
        raise ConfigError(f"{path}: no ModelConfig given and the model has no esccs_config")
    config = config.resolved()
    try:
        extra_json = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: extra is not JSON-serialisable ({err})") from None
    # safetensors wants contiguous, unshared CPU tensors (channels_last parameters are not contiguous).
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "esccs_model": config.name})
        sha = checkpoint_sha256(tmp)
    write_json(sidecar_path(path), {
        "format": FORMAT, "schema": SCHEMA, "esccs_version": esccs.__version__, "torch_version": torch.__version__,
        "architecture": {"name": config.name, "family": config.family},
        "config": config.to_dict(),
        "weights": {"file": path.name, "sha256": sha, "tensors": len(state),
                    "parameters": sum(p.numel() for p in model.parameters())},
        "extra": extra_json,
    })
    return path


def _read_sidecar(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(path, f"config sidecar {side.name} is missing (a checkpoint is a .safetensors + .json pair)")
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(side, f"config sidecar is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise DataError(side, f"not an ESCCS checkpoint config (format {FORMAT!r} with a 'config' section)")
    try:
        cfg = ModelConfig.from_dict(meta["config"])
        check_model_name(cfg.name)
    except ConfigError as err:
        raise ConfigError(f"{side}: {err}") from None
    return meta, cfg


def _check_expect(path: Path, cfg: ModelConfig, expect: str | None) -> None:
    if expect is None or expect in (cfg.name, cfg.family):
        return
    if expect not in FAMILIES:
        check_model_name(expect)
    article = "an" if expect[0] in "aeiou" else "a"
    raise ConfigError(f"checkpoint {path} is a {_describe(cfg)}, this stage needs {article} {expect}")


def _read_weights(path: Path, meta: dict[str, Any], device: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(path, f"not a readable safetensors file, truncated or corrupt ({reason})") from None
    expected = meta.get("weights", {}).get("sha256")
    actual = checkpoint_sha256(path)
    if expected != actual:
        raise DataError(path, f"sha256 mismatch: file {actual[:12]}..., config {str(expected)[:12]}... "
                              "(weights replaced or changed after saving)")
    return state


def _load_state(path: Path, model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                 for what, v in (("missing keys", missing), ("unexpected keys", unexpected)) if v]
        raise DataError(path, f"weights do not fit {name}: " + "; ".join(parts))
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise DataError(path, f"weights do not fit {name}: {len(bad)} shape mismatches, first {k} "
                              f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expect: str | None = None) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Rebuild a model from ``path`` (the ``.safetensors`` file, or its ``.json`` sidecar); never unpickles.

    Args:
        path: the weights file or its sidecar.
        map_location: device for the weights and the returned model.
        expect: a model name (``"dual_resnet18"``) or a family (``"classifier"``, ``"dual"``) the caller needs.

    Returns:
        ``(model, config, extra)``: the model in eval mode with ``model.esccs_config`` set, its resolved config, and
        the ``extra`` dict given at save time.

    Raises:
        DataError: missing file or sidecar, unreadable JSON, corrupt or truncated weights, sha256 mismatch, or
            weights that do not fit the architecture (missing/unexpected keys, shapes). One line, naming the path.
        ConfigError: the architecture is not ``expect``, or the config names an unknown model or key.
    """
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        try:
            path = path.with_name(json.loads(path.read_text())["weights"]["file"])
        except (ValueError, KeyError, TypeError):
            raise DataError(path, "not an ESCCS checkpoint config (no weights.file entry)") from None
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    meta, cfg = _read_sidecar(path)
    _check_expect(path, cfg, expect)
    state = _read_weights(path, meta, str(torch.device(map_location)))
    try:
        model = create_model_from_config(cfg)
    except ConfigError as err:
        raise ConfigError(f"{sidecar_path(path)}: {err}") from None
    _load_state(path, model, state, _describe(cfg))
    model.to(map_location).eval()
    return model, model.esccs_config, dict(meta.get("extra") or {})
