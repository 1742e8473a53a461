"""Typed configs: presets, dotted overrides, and error messages that name the key."""

import subprocess
import sys

import pytest

from conftest import ROOT
from landmarks.config import (
    PretrainConfig,
    RegressConfig,
    load_config,
    parse_override,
    to_flat_dict,
    valid_keys,
    with_overrides,
)
from landmarks.errors import ConfigError

CONFIGS = ROOT / "jobs" / "configs"


def test_paper_defaults():
    cfg = PretrainConfig()
    assert (cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.temperature) == (4096, 0.999, 0.07)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.weight_decay) == (0.03, 256, 800, 1e-4)
    reg = RegressConfig()
    assert reg.train.adam_beta1 == 0.5 and reg.annotations == "all" and reg.representation == "hypercolumn"


def test_overrides_are_typed():
    cfg = load_config(RegressConfig, None, ["train.lr=1e-2", "annotations=20", "model.backbone=resnet18",
                                            "ray.use_gpu=false", "data.path=/tmp/x"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.annotations == 20 and cfg.model.backbone == "resnet18" and cfg.ray.use_gpu is False
    assert load_config(RegressConfig, None, ["annotations=all"]).annotations == "all"


def test_preset_with_base(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  epochs: 3\nmodel:\n  backbone: resnet18\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(PretrainConfig, tmp_path / "child.yaml", ["train.batch_size=8"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.model.backbone) == (0.5, 7, 8, "resnet18")


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["train.learning_rate=0.1"])
    msg = str(err.value)
    assert "train.learning_rate" in msg and "train.lr" in msg and "valid keys" in msg


def test_unknown_key_in_preset(tmp_path):
    (tmp_path / "p.yaml").write_text("model:\n  depth: 50\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.depth'.*model.backbone"):
        load_config(PretrainConfig, tmp_path / "p.yaml")


def test_bad_value_names_valid_choices():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["model.backbone=resnet101"])
    msg = str(err.value)
    assert "model.backbone" in msg and "resnet18" in msg and "resnet50_half" in msg
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(PretrainConfig, None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="annotations"):
        load_config(RegressConfig, None, ["annotations=0"])
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(PretrainConfig, None, ["train.batch_size=10", "ray.num_workers=3"])


def test_override_syntax():
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("data.path=s3://b/p") == ("data.path", "s3://b/p")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_flat_dict_roundtrip():
    cfg = RegressConfig()
    flat = to_flat_dict(cfg)
    assert set(flat) == set(valid_keys(RegressConfig))
    new = with_overrides(cfg, {"train.lr": 0.1, "annotations": 5})
    assert new.train.lr == 0.1 and new.annotations == 5 and cfg.annotations == "all"


def test_every_preset_parses():
    from landmarks.registry import JOBS, config_class_for_preset

    presets = sorted(CONFIGS.glob("*.yaml"))
    assert presets, "no presets in jobs/configs"
    for preset in presets:
        cls = config_class_for_preset(preset)
        load_config(cls, preset)
    for job in JOBS:  # predict.yaml: a model and any input, no dataset of its own
        preset = "predict.yaml" if job == "predict" else f"{job}_synthetic_cpu.yaml"
        assert (CONFIGS / preset).is_file(), f"missing {preset}"


def test_every_job_that_trains_has_precision_and_paper_presets_run_fp32():
    """train.precision (fp32 / bf16) in every job that trains; the paper presets keep the official fp32."""
    from landmarks.registry import JOBS, config_class, config_class_for_preset

    training = [job for job in JOBS if "train.epochs" in valid_keys(config_class(job))]
    assert set(training) == {"pretrain", "train_projector", "regress", "segment", "finetune", "baseline"}
    for job in training:
        cls = config_class(job)
        assert "train.precision" in valid_keys(cls) and cls().train.precision == "fp32"
        assert load_config(cls, None, ["train.precision=bf16"]).train.precision == "bf16"
        with pytest.raises(ConfigError, match="train.precision"):
            load_config(cls, None, ["train.precision=fp16"])
    for preset in CONFIGS.glob("*.yaml"):
        cfg = load_config(config_class_for_preset(preset), preset)
        if "synthetic_cpu" not in preset.name and hasattr(cfg, "train"):
            assert cfg.train.precision == "fp32", preset.name


@pytest.mark.parametrize("args, code, text", [
    (["model.backbone=vgg"], 2, "model.backbone"),
    (["nope=1"], 2, "unknown key 'nope'"),
])
def test_job_exits_2_without_traceback(args, code, text):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "pretrain.py"), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert out.returncode == code, out.stderr
    assert text in out.stderr and "Traceback" not in out.stderr
