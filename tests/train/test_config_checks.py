"""Config values are checked when they load: typos fail with the key, the bad value and the closest valid one."""

import pytest
import yaml
from click.testing import CliRunner

from esccs.cli import cli
from esccs.errors import ConfigError
from esccs.train.config import load_config, save_config, to_dict


@pytest.mark.parametrize("text, key, hint", [
    ("step2:\n  irm_apply: gard\n", "step2.irm_apply", "grad"),
    ("step2:\n  score: entropi\n", "step2.score", "entropy"),
    ("step1:\n  policy: maxprb\n", "step1.policy", "maxprob"),
    ("step2:\n  reference: consenus\n", "step2.reference", "consensus"),
    ("step2:\n  form: ogmm\n", "step2.form", "ogm"),
    ("step2:\n  vote: modalty\n", "step2.vote", "modality"),
    ("step1:\n  clouded: sofft\n", "step1.clouded", "soft"),
    ("target:\n  select: vall\n", "target.select", "val"),
    ("method: tlff\n", "method", "tlf"),
    ("ablation: no-ir\n", "ablation", "no-irm"),
    ("device: cdua\n", "device", "cuda"),
])
def test_a_typo_in_an_enumerated_field_fails_at_load(tmp_path, text, key, hint):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert key in msg and f"did you mean '{hint}'" in msg, msg
    assert "\n" not in msg


def test_stage_level_seed_and_device_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  seed: 7\n")
    with pytest.raises(ConfigError, match=r"c\.yaml\.source\.seed: stages share the run's seed"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"aux\.device"):
        load_config(None, {"aux.device": "cuda"})


def test_the_run_seed_reaches_every_stage_and_the_saved_config_is_what_ran(tmp_path):
    cfg = load_config(None, {"seed": 3, "method": "tlf,sar-only", "step2.rounds": 2})
    assert cfg.source.seed == cfg.aux.seed == cfg.target.seed == cfg.loop("target_r1").seed == 3
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["method"] == "tlf,sar-only" and saved["source"]["seed"] == 3 and saved["step2"]["rounds"] == 2
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)  # round trip: what is saved is what ran


def test_numeric_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"step1\.cloud_max: must be in \[0, 1\]"):
        load_config(None, {"step1.cloud_max": 1.5})
    with pytest.raises(ConfigError, match=r"step2\.rounds: must be >= 0"):
        load_config(None, {"step2.rounds": -1})
    with pytest.raises(ConfigError, match=r"target\.epochs: must be >= 1"):
        load_config(None, {"target.epochs": 0})


def test_cli_reports_a_config_typo_in_one_line_before_reading_data(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("step2:\n  irm_apply: gard\n")
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--config", str(bad)])
    assert r.exit_code == 1 and "irm_apply: invalid value 'gard' (did you mean 'grad'?)" in r.output, r.output
    assert "Traceback" not in r.output


def test_the_config_method_is_used_when_the_flag_is_absent(tmp_path):
    from esccs.train.methods import resolve_methods

    cfg = load_config(None, {"method": "tlf", "ablation": "no-irm,no-rounds"})
    assert resolve_methods(cfg.method, cfg.ablation) == (["tlf"], ["no-irm", "no-rounds"])
    assert "oracle-dual" in resolve_methods("all", "")[0]
