import dataclasses
import tomllib
from pathlib import Path

import pytest

from generation.config import Config, ConfigError, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_config_toml_repeats_every_builtin_default():
    data = tomllib.loads((ROOT / "config.toml").read_text())
    assert config_from_mapping(data, env={}) == Config()
    # and it lists every key, so the file documents them all
    for section in dataclasses.fields(Config):
        if section.name == "discord_token":
            continue
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(data[section.name]) == keys, section.name


def test_unknown_keys_and_bad_values_are_all_listed():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"limits": {"max_stpes": 10, "max_count": "four"}, "nope": {}, "device": {"device": "tpu"}}, env={})
    message = str(err.value)
    assert "unknown key [limits] max_stpes" in message
    assert "[limits] max_count must be a whole number" in message
    assert "unknown section [nope]" in message
    assert "[device] device must be one of auto, cpu, cuda, mps" in message


def test_cross_checks():
    with pytest.raises(ConfigError, match=r"\[defaults\] steps must be within 1-10"):
        config_from_mapping({"limits": {"max_steps": 10}}, env={})
    with pytest.raises(ConfigError, match="multiple of 8"):
        config_from_mapping({"defaults": {"width": 500}}, env={})
    with pytest.raises(ConfigError, match="Unknown sampler"):
        config_from_mapping({"defaults": {"sampler": "Eulr"}}, env={})
    with pytest.raises(ConfigError, match=r"\[defaults\] hr_scale must be within 1-\[limits\] max_hires_scale"):
        config_from_mapping({"defaults": {"hr_scale": 3.0}, "limits": {"max_hires_scale": 2.0}}, env={})
    with pytest.raises(ConfigError, match="upscaler_tile_overlap below upscaler_tile"):
        config_from_mapping({"models": {"upscaler_tile": 8, "upscaler_tile_overlap": 8}}, env={})
    with pytest.raises(ConfigError, match="vary_subtle_strength and vary_strong_strength must be within 0-1"):
        config_from_mapping({"defaults": {"vary_strong_strength": 1.5}}, env={})


def test_environment_overrides(tmp_path):
    env = {"EASEL_DATA_DIR": str(tmp_path / "d"), "EASEL_MODELS_DIR": str(tmp_path / "m"), "EASEL_DEVICE": "CPU",
           "DISCORD_TOKEN": " abc "}
    config = config_from_mapping({}, env=env)
    assert config.data_dir == tmp_path / "d"
    assert config.checkpoints_dir == tmp_path / "m" / "checkpoints"
    assert config.embeddings_dir == tmp_path / "m" / "embeddings"
    assert config.device.device == "cpu"
    assert config.discord_token == "abc"
    assert "abc" not in repr(config)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    assert load_config(None, env={"EASEL_CONFIG": str(tmp_path / "absent.toml")}) == Config()
