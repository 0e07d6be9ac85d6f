"""base.Registry: the one list of names behind every extension point."""

import pytest
from pydantic import BaseModel, ValidationError

from base import LetheError, Registry


class PluginError(LetheError, ValueError):
    pass


class UnknownPluginError(PluginError, KeyError):
    pass


def make() -> Registry:
    plugins = Registry("plugin", PluginError, UnknownPluginError, traits={"fast": False})
    plugins.register("b", len, fast=True)
    plugins.register("a", str)
    return plugins


def test_names_are_sorted_and_get_returns_what_was_registered():
    plugins = make()
    assert plugins.names() == ["a", "b"] and "a" in plugins and "c" not in plugins
    assert plugins.get("b") is len and plugins.get("a") is str


def test_a_duplicate_is_refused_with_the_packages_error_and_the_first_one_kept():
    plugins = make()
    with pytest.raises(PluginError, match="plugin 'a' is already registered"):
        plugins.register("a", int)
    assert plugins.get("a") is str


def test_an_unknown_name_lists_the_registered_ones():
    plugins = make()
    with pytest.raises(UnknownPluginError, match=r"unknown plugin 'c'; registered: a, b"):
        plugins.get("c")
    with pytest.raises(UnknownPluginError, match="'c'"):
        plugins.trait("c", "fast")
    with pytest.raises(UnknownPluginError, match="'c'"):
        plugins.unregister("c")


def test_traits_have_defaults_and_unregister_frees_the_name():
    plugins = make()
    assert plugins.trait("b", "fast") is True
    assert plugins.trait("a", "fast") is False  # the declared default
    plugins.unregister("b")
    assert plugins.names() == ["a"]
    plugins.register("b", min)  # the name is free again, without its old traits
    assert plugins.get("b") is min and plugins.trait("b", "fast") is False


def test_a_trait_the_registry_does_not_declare_is_refused():
    plugins = make()
    with pytest.raises(PluginError, match="'c': no trait fsat; a plugin has: fast"):
        plugins.register("c", abs, fsat=True)  # a typo must not pass silently
    assert "c" not in plugins
    with pytest.raises(KeyError):
        plugins.trait("a", "slow")


def test_the_config_validator_reads_the_registry_at_validation_time():
    plugins = make()

    class Section(BaseModel):
        name: str = "a"
        other: str = "b"
        _known = plugins.validator("name", "other")

    assert Section(name="b").name == "b"
    with pytest.raises(ValidationError, match=r"name\n.*unknown plugin 'z'; registered: a, b"):
        Section(name="z")
    with pytest.raises(ValidationError, match="other"):
        Section(other="z")
    plugins.register("z", max)  # registered later: accepted from then on
    assert Section(name="z").name == "z"
