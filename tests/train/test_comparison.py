"""The comparison: validation selection, oracle rows, gap closed, paired intervals, labels that never leak."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esccs.train import report
from esccs.train.config import load_config
from esccs.train.loop import Trainer
from esccs.train.stats import paired_bootstrap


# ------------------------------------------------------------------------------------------ paired intervals
def test_interval_of_identical_and_of_opposite_methods_is_degenerate():
    a = np.array([1, 0, 1, 1, 0, 1], float)
    iv = paired_bootstrap([(a, a)], n_boot=500)
    assert iv["diff"] == iv["lo"] == iv["hi"] == 0.0
    iv = paired_bootstrap([(np.ones(50), np.zeros(50))], n_boot=500)
    assert iv["diff"] == iv["lo"] == iv["hi"] == 1.0


def test_interval_matches_the_normal_approximation_on_a_constructed_case():
    # a wins on 30 % of 20,000 patches and ties elsewhere: d in {0, 1}, the difference's CI is
    # 0.3 +- 1.96 * sqrt(0.3 * 0.7 / n)
    n = 20_000
    a, b = np.zeros(n), np.zeros(n)
    a[: int(0.3 * n)] = 1
    iv = paired_bootstrap([(a, b)], n_boot=2000, seed=1)
    half = 1.96 * np.sqrt(0.3 * 0.7 / n)
    assert iv["diff"] == pytest.approx(0.3)
    assert iv["lo"] == pytest.approx(0.3 - half, abs=1.5e-3) and iv["hi"] == pytest.approx(0.3 + half, abs=1.5e-3)


def test_runs_are_averaged_with_equal_weight_and_pairing_is_kept():
    # run 1: a always right, b always wrong (diff 1); run 2: both identical (diff 0) -> mean diff 0.5, no spread
    r1 = (np.ones(10), np.zeros(10))
    r2 = (np.array([1, 0] * 50, float),) * 2
    iv = paired_bootstrap([r1, r2], n_boot=300)
    assert iv["diff"] == iv["lo"] == iv["hi"] == 0.5 and iv["runs"] == 2 and iv["n"] == 110
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([(np.ones(3), np.ones(4))])


# ------------------------------------------------------------------------------------------ the table
def _result(method, run, pred, labels, cov, oracle=False, shift="none"):
    from esccs.metrics import evaluate

    res = evaluate(labels, pred, 2, cov)
    res.update(method=method, seed=0, oracle=oracle, ids=[f"p{i}" for i in range(len(labels))],
               labels=list(map(int, labels)), pred=list(map(int, pred)), coverage=list(map(float, cov)),
               data={"shift": shift})
    return res


def _write_run(folder, results):
    (folder / "results").mkdir(parents=True)
    for r in results:
        (folder / "results" / f"{r['method']}.json").write_text(json.dumps(r))


def test_table_marks_oracle_rows_and_computes_gap_closed_and_intervals(tmp_path):
    n = 100
    labels = np.zeros(n, int)
    cov = np.array([0.0] * 40 + [0.5] * 40 + [1.0] * 20)
    right = lambda k: np.array([0] * k + [1] * (n - k))  # noqa: E731 - first k patches correct
    for s in range(2):
        _write_run(tmp_path / f"seed{s}", [
            _result("source-only", "", right(50), labels, cov),
            _result("esccs", "", right(70), labels, cov),
            _result("tlf-late", "", right(60), labels, cov),
            _result("oracle-dual", "", right(90), labels, cov, oracle=True),
        ])
    comp = report.write_table([tmp_path], tmp_path / "acc.md")
    sec = comp["plain"]
    assert sec["gap"]["esccs"]["oa"] == pytest.approx((0.7 - 0.5) / (0.9 - 0.5))
    assert sec["gap"]["source-only"]["oa"] == pytest.approx(0.0) and "oracle-dual" not in sec["gap"]
    iv = sec["paired"]["tlf-late"]["all"]
    assert iv["diff"] == pytest.approx(0.1) and iv["lo"] > 0  # esccs right on 10 more of the same patches
    text = (tmp_path / "acc.md").read_text()
    methods, oracles = text.split("upper bounds")[0], text.split("upper bounds")[1].split("ablations")[0]
    assert "| oracle-dual (oracle) |" in oracles and "oracle-dual" not in methods
    assert "| **esccs** |" in methods and "50 %" in methods  # gap closed column
    assert (tmp_path / "acc.json").exists() and (tmp_path / "acc_by_cover.png").exists()


def test_transfers_are_compared_with_their_building_block_paired(tmp_path):
    # ttl right on the first 60 of 100 patches, sar-only on the first 50 of the same ones: ttl - sar-only = +0.10,
    # all of it on partial patches (10 of their 40); cycit is 0.10 below sar-only in the second run only
    n = 100
    labels, cov = np.zeros(n, int), np.array([0.0] * 40 + [0.5] * 40 + [1.0] * 20)
    right = lambda k: np.array([0] * k + [1] * (n - k))  # noqa: E731 - first k patches correct
    for s, k_cyc in ((0, 50), (1, 40)):
        _write_run(tmp_path / f"seed{s}", [_result("esccs", "", right(70), labels, cov),
                                           _result("sar-only", "", right(50), labels, cov),
                                           _result("ttl", "", right(60), labels, cov),
                                           _result("cycit", "", right(k_cyc), labels, cov)])
    comp = report.write_table([tmp_path], tmp_path / "acc.md")
    tr = comp["plain"]["transfers"]
    assert set(tr) == {"ttl", "cycit"}
    iv = tr["ttl"]["all"]
    assert iv["diff"] == pytest.approx(0.10) and 0 < iv["lo"] < 0.10 < iv["hi"] and iv["runs"] == 2
    assert tr["ttl"]["partial"]["diff"] == pytest.approx(0.25) and tr["ttl"]["partial"]["lo"] > 0
    assert tr["ttl"]["clear"]["diff"] == tr["ttl"]["complete"]["diff"] == 0.0
    assert tr["cycit"]["all"]["diff"] == pytest.approx(-0.05) and tr["cycit"]["clear"]["diff"] == 0.0
    text = (tmp_path / "acc.md").read_text()
    assert (f"| ttl | 2 | +10.0 [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}] * | +0.0 [+0.0, +0.0] | +25.0 ["
            in text)
    # without the building block there is nothing to compare with
    comp = report.comparison({k: v for k, v in report.collect([tmp_path]).items() if k != "sar-only"})
    assert comp["plain"]["transfers"] == {}


def test_table_has_one_section_per_data_option(tmp_path):
    labels, cov = np.zeros(20, int), np.zeros(20)
    _write_run(tmp_path / "a", [_result("esccs", "", np.zeros(20, int), labels, cov)])
    _write_run(tmp_path / "b", [_result("esccs", "", np.zeros(20, int), labels, cov, shift="season+sensor")])
    comp = report.comparison(report.collect([tmp_path / "a", tmp_path / "b"]))
    assert set(comp) == {"plain", "shift season+sensor"}


# ------------------------------------------------------------------------------------------ validation selection
def test_validation_selection_keeps_the_best_epoch_not_the_last(tmp_path):
    # the model starts right on the validation rule (class = sign of x0 + x1); the training labels follow x0 only
    # and the schedule is long, so validation accuracy rises at first (x0 is half the rule) and then falls as the
    # model drops x1: the best epoch is neither the first nor the last
    g = torch.Generator().manual_seed(0)
    n = 512
    x = torch.randn(n, 2, generator=g)
    data = {"x": x, "target": (x[:, 0] - 0.5 * x[:, 1] > 0).long()}
    xv = torch.randn(n, 2, generator=g)
    val = {"x": xv, "target": (xv[:, 0] + xv[:, 1] > 0).long()}

    def step(model, b):
        z = model(b["x"])
        return F.cross_entropy(z, b["target"]), z, {}

    cfg = load_config(None, {"target.epochs": 8, "target.batch_size": 64, "target.augment": False,
                             "target.lr": 0.5, "target.lr_head": 0.5, "target.warmup_epochs": 0,
                             "target.select": "val"}).loop("target")
    torch.manual_seed(0)
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-0.2, -0.2], [0.2, 0.2]]))
        net.bias.zero_()
    model = Trainer(net, data, step, cfg, tmp_path / "s", "s", False, val=val).fit()
    rows = [line.split(",") for line in (tmp_path / "s" / "log.csv").read_text().splitlines()[1:]]
    val_acc = [float(r[7]) for r in rows]
    best = int(np.argmax(val_acc))
    assert best < len(val_acc) - 1 and max(val_acc) > val_acc[-1], val_acc  # the best is not the last
    with torch.no_grad():
        acc = float((model(xv).argmax(1) == val["target"]).float().mean())
    assert acc == pytest.approx(max(val_acc), abs=1e-4)  # the returned weights are the best epoch's (log: 4 d.p.)
    state = json.loads((tmp_path / "s" / "last.json").read_text())
    assert state["best"]["epoch"] == best


def test_val_loss_selection_keeps_the_epoch_of_lowest_validation_loss(tmp_path):
    # the same drifting run as above, selected on the validation loss: the kept weights are the epoch with the
    # lowest logged val_loss, which is not the last, and the summary names the criterion
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(512, 2, generator=g), torch.randn(512, 2, generator=g)
    data = {"x": x, "target": (x[:, 0] - 0.5 * x[:, 1] > 0).long()}
    val = {"x": xv, "target": (xv[:, 0] + xv[:, 1] > 0).long()}

    def step(model, b):
        z = model(b["x"])
        return F.cross_entropy(z, b["target"]), z, {}

    cfg = load_config(None, {"target.epochs": 8, "target.batch_size": 64, "target.augment": False,
                             "target.lr": 0.5, "target.lr_head": 0.5, "target.warmup_epochs": 0}).loop("target")
    assert cfg.select == "val-loss"  # the default
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-0.2, -0.2], [0.2, 0.2]]))
        net.bias.zero_()
    trainer = Trainer(net, data, step, cfg, tmp_path / "s", "s", False, val=val)
    model = trainer.fit()
    rows = [line.split(",") for line in (tmp_path / "s" / "log.csv").read_text().splitlines()[1:]]
    val_loss = [float(r[6]) for r in rows]
    best = int(np.argmin(val_loss))
    assert best < len(val_loss) - 1 and min(val_loss) < val_loss[-1], val_loss
    with torch.no_grad():
        loss = float(F.cross_entropy(model(xv), val["target"]))
    assert loss == pytest.approx(min(val_loss), abs=1e-4)
    assert trainer.summary()["selected_epoch"] == best and trainer.summary()["select"] == "val-loss"


def test_without_validation_data_the_last_epoch_is_kept(tmp_path):
    data = {"x": torch.randn(64, 2), "target": torch.randint(0, 2, (64,))}
    cfg = load_config(None, {"target.epochs": 2, "target.batch_size": 32, "target.augment": False}).loop("target")

    def step(model, b):
        z = model(b["x"])
        return F.cross_entropy(z, b["target"]), z, {}

    t = Trainer(nn.Linear(2, 2), data, step, cfg, tmp_path / "s", "s", False)
    t.fit()
    assert t.summary()["selected_epoch"] == 1 and t.summary()["select"] == "last"
    assert not (tmp_path / "s" / "best.safetensors").exists()


# ------------------------------------------------------------------------------------------ labels never leak
@pytest.mark.slow
def test_poisoned_target_train_labels_change_no_checkpoint_but_the_oracles(tmp_path):
    """Train every method twice, the second time with target-train's true labels permuted: every non-oracle
    checkpoint is bitwise the same (target labels never reach them), the oracle checkpoints differ."""
    import dataclasses

    from esccs.data.synth import SynthConfig, synthesize
    from esccs.train.methods import METHODS, ORACLES
    from esccs.train.run import load_banks, train

    synthesize(SynthConfig(out=tmp_path / "d", samples=240, size=24, patches_per_scene=12, workers=1, seed=2),
               progress=False)
    tiny = {"model.arch": "resnet10", "model.width": 8, "source.epochs": 1, "aux.epochs": 1, "target.epochs": 1,
            "step1.min_per_class": 2, "source.batch_size": 32, "aux.batch_size": 32, "target.batch_size": 32,
            "data": str(tmp_path / "d")}
    cfg = load_config(None, tiny)
    src, tgt, test = load_banks(cfg, progress=False)
    g = torch.Generator().manual_seed(0)
    true = tgt.meta["eval_labels"]
    poisoned = dataclasses.replace(tgt, meta={**tgt.meta, "eval_labels": true[torch.randperm(len(true), generator=g)]})
    assert not torch.equal(poisoned.meta["eval_labels"], true)
    methods = list(METHODS)
    for name, bank in (("clean", tgt), ("poisoned", poisoned)):
        train(dataclasses.replace(cfg, out=str(tmp_path / name)), methods, ["no-rounds"], progress=False,
              banks=(src, bank, test))
    clean = {p.relative_to(tmp_path / "clean") for p in (tmp_path / "clean").rglob("*.safetensors")
             if p.name in ("model.safetensors", "net.safetensors")}
    assert len(clean) > 20
    from safetensors.torch import load_file

    def same(rel) -> bool:  # every tensor bitwise equal (the file's metadata holds a timestamp)
        a, b = load_file(str(tmp_path / "clean" / rel)), load_file(str(tmp_path / "poisoned" / rel))
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    for rel in sorted(clean):
        if rel.parts[0] in ORACLES:
            assert not same(rel), rel  # the poison reached the oracles: the test can see a leak
        else:
            assert same(rel), f"{rel} changed when target-train labels were poisoned"
