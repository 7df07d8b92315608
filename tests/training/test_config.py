"""Config validation: unknown keys named, bad types and values rejected, overrides coerced."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpnn_jax.training.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    resolve_data_path,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
MINIMAL = {"data": {"train": "/abs/train.xyz"}, "model": {"name": "nequip"}}


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match=r"train\.learning_rate.*valid keys of train.*'lr'"):
        config_from_dict({**MINIMAL, "train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        config_from_dict({**MINIMAL, "optim": {}})
    with pytest.raises(ConfigError, match=r"data\.forces"):
        config_from_dict({"data": {"train": "a.xyz", "forces": "force"}})


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("train", "batch_size", "five", "expected an int"),
        ("train", "batch_size", 2.5, "expected an int"),
        ("train", "lr", [0.1], "expected a float"),
        ("train", "max_steps", True, "expected an int"),
        ("train", "batch_size", 0, "must be >= 1"),
        ("train", "optimizer", "sgd", "not one of"),
        ("train", "schedule", "linear", "not one of"),
        ("train", "loss", "l1", "not one of"),
        ("model", "name", "schnet", r"model\.name: 'schnet' is not one of \['nequip', 'mace'\]"),
        ("model", "sizes", 3, "expected a mapping"),
        ("model", "backend", "nope", r"model\.backend: unknown or unavailable backend 'nope'"),
        ("model", "sizes", {"backend": "e3nn"}, r"model\.sizes\.backend: set the backend as"),
        ("data", "valid", 1.5, "fraction"),
        ("data", "cutoff", -1.0, "cutoff"),
        ("data", "max_buckets", 0, r"data\.max_buckets must be >= 1"),
        ("train", "steps_per_call", 0, "must be >= 1"),
        ("train", "steps_per_call", 3, r"train\.eval_every \(100\) must be a multiple"),
        ("precision", "policy", "fp8", "precision.policy"),
    ],
)
def test_bad_values(section, key, value, match):
    raw = {k: dict(v) for k, v in MINIMAL.items()}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_missing_required():
    with pytest.raises(ConfigError, match="data"):
        config_from_dict({"model": {"name": "mace"}})
    with pytest.raises(ConfigError, match=r"data\.train"):
        config_from_dict({"data": {"valid": 0.1}})


def test_overrides_coerce_types():
    cfg = config_from_dict(MINIMAL)
    new = apply_overrides(
        cfg,
        [
            "train.max_steps=100",
            "train.lr=1e-3",  # YAML 1.1 reads this as a string: coerced to float
            "train.max_minutes=2",
            "train.clip_norm=none",
            "data.valid=0.2",
            "precision.policy=bf16-mixed",
            "model.sizes.num_channels=16",
            "model.sizes.radial_features=[8, 8]",
        ],
    )
    assert new.train.max_steps == 100 and isinstance(new.train.max_steps, int)
    assert new.train.lr == 1e-3 and isinstance(new.train.lr, float)
    assert new.train.max_minutes == 2.0 and isinstance(new.train.max_minutes, float)
    assert new.train.clip_norm is None
    assert new.data.valid == 0.2
    assert new.precision.policy == "bf16-mixed"
    assert new.model.sizes == {"num_channels": 16, "radial_features": [8, 8]}
    assert cfg.train.max_steps == 1000  # frozen original untouched
    with pytest.raises(ConfigError, match=r"train\.nsteps"):
        apply_overrides(cfg, ["train.nsteps=3"])
    with pytest.raises(ConfigError, match="expected an int"):
        apply_overrides(cfg, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.max_steps"])


def test_paths_resolve_relative_to_config_and_round_trip(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    raw = {
        "data": {"train": "../data/train.xyz", "valid": "v.xyz", "e0s": "least_squares"},
        "model": {"name": "mace", "sizes": {"num_channels": 8}},
    }
    (sub / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(sub / "c.yaml", overrides=["train.seed=3"])
    assert cfg.data.train == str((tmp_path / "data" / "train.xyz").resolve())
    assert cfg.data.valid == str((sub / "v.xyz").resolve())
    assert cfg.data.e0s == "least_squares" and cfg.train.seed == 3
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_bundled_prefix():
    cfg = config_from_dict({"data": {"train": "bundled:rmd17_ethanol/train"}}, base_dir="/x")
    assert cfg.data.train == "bundled:rmd17_ethanol/train"
    path = resolve_data_path(cfg.data.train)
    assert path.is_file() and path.name == "train.xyz"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.model.name in ("mace", "nequip")
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not shared.is_dir():
        return  # the real datasets are not on this machine: paths cannot be checked
    for p in (cfg.data.train, cfg.data.valid, cfg.data.test, cfg.data.e0s):
        if isinstance(p, str) and p != "least_squares":
            assert resolve_data_path(p).is_file(), p
