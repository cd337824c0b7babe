"""Recipe loading, --set parsing and the registry's error messages."""

from __future__ import annotations

import pytest

from nestbench.config import parse_overrides
from nestbench.errors import ConfigError, NestbenchError, UnknownNameError
from nestbench.methods import METHODS, load_method_config
from nestbench.methods.base import recipe_path
from nestbench.registry import Registry
from nestbench.resources import recipes_dir, tasks_dir


def test_overrides_parse_yaml_scalars():
    parsed = parse_overrides(["lr=0.5", "k_max=3", "clustering=strong", "grad_clip=null", "projections=[gate_proj]"])
    assert parsed == {"lr": 0.5, "k_max": 3, "clustering": "strong", "grad_clip": None, "projections": ["gate_proj"]}


def test_exponent_without_dot_is_float():
    # YAML 1.1 reads 1e-3 as a string; the config loader must still take it as a float.
    config = load_method_config("nest", parse_overrides(["lr=1e-3"]))
    assert config.lr == 1e-3


@pytest.mark.parametrize("pair", ["lr", "=3", ""])
def test_overrides_reject_malformed(pair):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([pair])


def test_every_method_has_valid_recipe():
    names = METHODS.names()
    assert names == ["circuit-breakers", "full", "lora", "nest", "none"]
    for name in names:
        assert recipe_path(name).is_file()
        assert load_method_config(name) is not None


def test_every_recipe_names_a_method():
    recipes = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    assert recipes == METHODS.names()


def test_recipe_precedence_override_wins():
    config = load_method_config("nest", {"z_threshold": 2})
    assert config.z_threshold == 2.0
    assert isinstance(config.z_threshold, float)


def test_int_rejects_bool_and_float():
    with pytest.raises(ConfigError, match="k_max"):
        load_method_config("nest", {"k_max": True})
    with pytest.raises(ConfigError, match="k_max"):
        load_method_config("nest", {"k_max": 2.5})


def test_none_method_rejects_any_key():
    with pytest.raises(ConfigError, match="unknown key"):
        load_method_config("none", {"lr": 1.0})


def test_registry_suggests_close_name():
    registry: Registry[int] = Registry("method")
    registry.add("nest", 1)
    registry.add("lora", 2)
    with pytest.raises(UnknownNameError) as info:
        registry.get("nets")
    assert "Did you mean 'nest'" in str(info.value)
    assert "Available: lora, nest" in str(info.value)


def test_registry_rejects_duplicates():
    registry: Registry[int] = Registry("attack")
    registry.add("gcg", 1)
    with pytest.raises(NestbenchError, match="duplicate attack name 'gcg'"):
        registry.add("gcg", 2)


def test_resource_folders_exist():
    assert (recipes_dir() / "nest.yaml").is_file()
    assert any(tasks_dir().glob("*.yaml"))
