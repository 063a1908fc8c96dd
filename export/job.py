"""What a format's builder gets (:class:`ExportJob`) and gives back (:class:`Built`).

Each row of :data:`esccs.export.formats.FORMATS` names its builder, ``build(job) -> Built``; :func:`esccs.export.
export_model` loads the checkpoint and the tiles once, then calls it. Builders write their artifact through a temporary
file renamed only after every check ran, so a failure (or ``strict`` with a failed check) leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esccs.export.errors import ParityError


@dataclass
class ExportJob:
    """One export in progress.

    Attributes:
        model: the eval-mode DualBranchNet.
        cfg: its resolved model config.
        sha: SHA-256 of the checkpoint's weights.
        options: the validated options of the format (every option filled, plus ``explicit``).
        path: the final artifact path.
        dataset: the opened data set (``None`` without ``--data``).
        tiles: the parity batch (real tiles spread over the data set, or a seeded random batch).
        print_fn: where progress notes go (``None``: nowhere).
    """

    model: Any
    cfg: Any
    sha: str
    options: dict[str, Any]
    path: Path
    dataset: Any
    tiles: Any
    print_fn: Callable[[str], Any] | None = None
    _evaluation: Any = field(default=None, repr=False)

    def evaluation(self):
        """The evaluation tiles of a reduced precision: ``eval_samples`` tiles of the test split (read once).

        Without a data set: a seeded random batch of that size (no labels: judged on top-1 agreement only).
        """
        from esccs.export.tiles import random_tiles, read_tiles

        if self._evaluation is None:
            n = self.options["eval_samples"]
            self._evaluation = (random_tiles(self.cfg, n, seed=1) if self.dataset is None else
                                read_tiles(self.dataset, self.cfg, n, split="test"))
        return self._evaluation

    def calibration(self):
        """``calib_samples`` calibration tiles of the train split."""
        from esccs.export.tiles import read_tiles

        return read_tiles(self.dataset, self.cfg, self.options["calib_samples"], split="train")

    def strict(self, report: dict[str, Any], what: str = "nothing written") -> None:
        """Raise :class:`ParityError` when ``strict`` is set and the check did not pass."""
        from esccs.export.parity import parity_line

        if self.options["strict"] and not report["passed"]:
            raise ParityError("strict: " + parity_line(report) + f"; {what}")


@dataclass
class Built:
    """What a builder produced (the artifact itself is at ``job.path``).

    Attributes:
        info: exporter, opset, dynamic axes, node count, notes, metadata, recipe.
        parity: the verdict's report (:func:`esccs.export.parity.check_artifact`).
        speed: a speed comparison, if the format makes one (``onnx-int8``: INT8 vs fp32).
        sidecars: every other file written beside the artifact (engine sidecar, source ONNX, timing cache).
    """

    info: dict[str, Any]
    parity: dict[str, Any]
    speed: dict[str, Any] | None = None
    sidecars: list[Path] = field(default_factory=list)
