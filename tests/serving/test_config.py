import os
import subprocess
import sys

import pytest

from serving.config import Config, ConfigError, load_config

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"


def test_defaults_come_from_the_embedded_yaml_and_match_the_typed_defaults():
    config = load_config(environ={})
    assert config == Config()
    assert config.engine.name == "vllm" and config.server.port == 8000
    assert config.server.host == "127.0.0.1"


def test_file_then_environment_then_overrides_win_in_that_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"server:\n  port: 9000\n  api_keys: [{KEY_A}]\nengine:\n  name: hf\n")
    env = {"LETHE_SERVER__PORT": "9100", "LETHE_HOME": str(tmp_path / "h")}
    config = load_config(path, overrides={"server.port": 9200, "server.host": None}, environ=env)
    assert config.server.port == 9200
    assert config.server.api_keys == [KEY_A]
    assert config.engine.name == "hf"
    assert config.home_dir == tmp_path / "h"
    assert load_config(path, environ=env).server.port == 9100


def test_derived_model_files_go_to_the_cache_folder_or_the_home_models(tmp_path):
    home = {"LETHE_HOME": str(tmp_path / "h")}
    assert load_config(environ=home).cache_dir == tmp_path / "h" / "models"
    shared = load_config(environ={**home, "LETHE_CACHE": str(tmp_path / "shared")})
    assert shared.cache_dir == tmp_path / "shared" and shared.home_dir == tmp_path / "h"
    path = tmp_path / "c.yaml"
    path.write_text(f"cache: {tmp_path / 'file'}\n")
    assert load_config(path, environ=home).cache_dir == tmp_path / "file"


def test_environment_values_are_parsed_as_yaml():
    config = load_config(environ={"LETHE_SERVER__API_KEYS": f"[{KEY_A}, {KEY_B}]"})
    assert config.server.api_keys == [KEY_A, KEY_B]


def test_unknown_key_is_named_with_the_known_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  nmae: hf\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'engine.nmae' \(known keys here: name,"):
        load_config(path, environ={})


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    # YAML's own loaders keep the last of the two, silently.
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  name: hf\n  dtype: float32\n  name: vllm\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'name' is given twice \(lines 2 and 4\)"):
        load_config(path, environ={})
    path.write_text("engine:\n  name: hf\nserver:\n  port: 8001\nengine:\n  dtype: float32\n")
    with pytest.raises(ConfigError, match=r"key 'engine' is given twice \(lines 1 and 5\)"):
        load_config(path, environ={})
    # the same key in two mappings, and YAML's merge key overriding, are no duplicates
    path.write_text("base: &b {port: 8001}\nserver:\n  <<: *b\n  port: 8002\n")
    with pytest.raises(ConfigError, match="unknown config key 'base'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="a key is given twice"):  # not a key's name: unnamed
        load_config(environ={"LETHE_SERVER__API_KEYS": f"{{{KEY_A}: 1, {KEY_A}: 2}}"})


def test_bad_choice_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"engine.name.*unknown engine 'tgi'; registered: hf, vllm"):
        load_config(overrides={"engine.name": "tgi"}, environ={})


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0"])
def test_a_bad_device_names_the_key_and_the_devices(device):
    with pytest.raises(ConfigError, match=rf"model.device.*unknown device '{device}': use auto, "
                                          r"cpu, cuda or cuda:N"):
        load_config(overrides={"model.device": device}, environ={})
    assert load_config(overrides={"model.device": "cuda:1"}, environ={}).model.device == "cuda:1"


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="server.port"):
        load_config(environ={"LETHE_SERVER__PORT": "eighty"})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_cli_exits_2_with_the_message_on_a_bad_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dtype: float8\n")
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config key 'model.dtype'" in result.stderr and "float32" in result.stderr


def test_an_unknown_embedder_names_the_key_and_the_registered_ones():
    with pytest.raises(ConfigError, match=r"guard.embedder.*unknown embedder 'bert'; registered: "
                                          r"onnx, onnx-int8, torch"):
        load_config(overrides={"guard.embedder": "bert"}, environ={})


def test_an_unknown_tuning_metric_names_the_key_and_the_registered_ones():
    with pytest.raises(ConfigError, match=r"guard.tune.score.*unknown metric 'bleu'; registered: "
                                          r"probability, probability_options, rouge_l"):
        load_config(overrides={"guard.tune.score": "bleu"}, environ={})


def test_a_store_url_must_name_a_registered_database(tmp_path):
    with pytest.raises(ConfigError, match=r"store.url.*registered schemes: postgres, postgresql, "
                                          r"sqlite"):
        load_config(overrides={"store.url": "mysql://db/lethe"}, environ={})
    config = load_config(overrides={"store.url": "postgresql://u:pw@db/lethe"}, environ={})
    assert config.queue_target == "postgresql://u:pw@db/lethe"
    assert load_config(environ={"LETHE_HOME": str(tmp_path)}).queue_target == tmp_path / "forget.db"


def test_the_corruption_strength_follows_the_forget_policy_unless_set_or_tuned(tmp_path):
    """Routed around the shards that hold the forgotten data, a flagged prompt is answered by
    weights that never saw it: mild noise (tuned against them); without the quarantine the
    noise alone hides the data: ECO's strength. A set sigma, or `lethe guard tune`'s, wins."""
    from guard import Corruption, TuneResult, save_corruption
    from serving.pipeline import SIGMA_ROUTED, SIGMA_UNROUTED, served_corruption

    env = {"LETHE_HOME": str(tmp_path)}
    assert SIGMA_ROUTED < SIGMA_UNROUTED
    for quarantine in ("matched", "flagged", "all"):
        config = load_config(overrides={"forget.quarantine": quarantine}, environ=env)
        assert served_corruption(config).sigma == SIGMA_ROUTED
    unrouted = load_config(overrides={"forget.quarantine": "none"}, environ=env)
    assert served_corruption(unrouted).sigma == SIGMA_UNROUTED
    assert served_corruption(load_config(overrides={"guard.corruption.sigma": 0.3},
                                         environ=env)).sigma == 0.3
    tuned = Corruption("rand_noise_rand_n", 2.0, 8)
    save_corruption(unrouted.guard_dir, TuneResult(tuned, {}, {}, {}, 0.0, 0.0), {})
    assert served_corruption(unrouted) == served_corruption(load_config(environ=env)) == tuned


@pytest.mark.parametrize("field", ["api_keys", "admin_keys"])
@pytest.mark.parametrize("key", ["", "short-secret-15"])
def test_an_empty_or_short_key_is_refused_naming_the_field_never_the_value(field, key):
    with pytest.raises(ConfigError, match=rf"server\.{field}.*shorter than 16 characters") as info:
        load_config(environ={f"LETHE_SERVER__{field.upper()}": f'["{KEY_A}", "{key}"]'})
    assert "[1]" in str(info.value)  # which entry, by position
    assert not key or key not in str(info.value)
    assert KEY_A not in str(info.value)


@pytest.mark.parametrize("env", [
    {"LETHE_SERVER__ADMIN_KEYS": "[[key-0123456789-secret]]"},  # not a list of strings
    {"LETHE_SERVER__API_KEYS": "[key-0123456789-secret"},  # not YAML
    {"LETHE_SERVER__API_KEYS": "[*key-0123456789-secret]"},  # an alias YAML names
    {"LETHE_SERVER__API_KEYS": "[!key-0123456789-secret x]"},  # a tag YAML names
    {"LETHE_STORE__URL": "[postgresql://u:key-0123456789-secret@db/lethe]"},
    {"LETHE_SERVER__API_KEYS": "{key-0123456789-secret: 1, key-0123456789-secret: 2}"},
])
def test_config_errors_never_print_secrets(env):
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert "secret" not in str(info.value).replace("a secret", "")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # nor its cause


def test_the_server_refuses_to_start_with_an_empty_key(tmp_path):
    """`"[$KEY]"` with KEY unset gives [""]: a bare `Authorization: Bearer` would be a key."""
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve"], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "LETHE_HOME": str(tmp_path),
                                 "LETHE_SERVER__API_KEYS": '[""]'})
    assert result.returncode == 2
    assert "config key 'server.api_keys'" in result.stderr and "shorter than 16" in result.stderr
