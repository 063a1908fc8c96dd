"""The training-speed benchmark runs on a tiny case and reports sane figures; stage speeds come from run logs."""

from esccs.benchmarks.train import bench_train, format_train, stage_speeds
from esccs.ops import set_fused


def test_bench_train_tiny_reports_every_step_kind():
    with set_fused(False):
        r = bench_train(arch="resnet10", width=4, size=16, batch=4, device="cpu", rounds=2, min_time=0.05)
    assert [row["step"] for row in r["rows"]] == ["classifier (source / aux)", "dual, plain CE", "dual, ESCCS step 2"]
    for row in r["rows"]:
        assert 0 < row["ms_p10"] <= row["ms_median"] <= row["ms_p90"] and row["samples_per_s"] > 0 and row["n"] >= 5
    assert r["step2_over_plain"] > 0 and isinstance(r["meets_goal"], bool)
    assert "step 2 / plain dual" in format_train(r)


def test_stage_speeds_read_the_logs(tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "log.csv").write_text("epoch,loss,acc,lr,seconds,samples_per_s\n0,1,0,0.1,1,100\n"
                                                 "1,1,0,0.1,1,300\n2,1,0,0.1,1,200\n")
    assert stage_speeds(tmp_path) == [{"stage": "source", "epochs": 3, "samples_per_s": 200.0}]
