import pytest

from serving.engines import HFEngine, UnknownEngineError, engine_class, engine_names, register_engine


def test_both_engines_are_registered_by_name():
    assert engine_names() == ["hf", "vllm"]
    assert engine_class("hf") is HFEngine


def test_an_unknown_name_lists_the_registered_engines():
    with pytest.raises(UnknownEngineError, match="'tgi'.*hf, vllm"):
        engine_class("tgi")


def test_a_second_registration_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'hf' is already registered"):
        register_engine(name="hf", impl_cls=HFEngine)
