"""ToolRegistry: built-ins, clashes, describe(); make_tool's contract; SLM adapter entry points."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types

import pytest
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from autoannotator.tools.base import ToolException, make_tool, result_model_of
from autoannotator.slm import adapters
from autoannotator.slm.catalog import adapter_for, slm_adapter_factories
from autoannotator.tools.registry import ToolRegistry, default_registry

BUILTINS = {"search_models", "read_model_card"}


class EchoArgs(BaseModel):
    text: str = Field(min_length=1)
    times: int = Field(1, ge=1, le=3)


class EchoResult(BaseModel):
    text: str


def echo_tool(name: str = "echo", func=None) -> BaseTool:
    return make_tool(func or (lambda a: EchoResult(text=a.text * a.times)), name=name, description="repeat text",
                     args_schema=EchoArgs, result_model=EchoResult)


@pytest.fixture()
def fake_entry_points(monkeypatch):
    """Install entry points for this test only: (group, name, 'module:attr') triples."""
    eps: list[importlib.metadata.EntryPoint] = []

    def entry_points(**params):
        return [ep for ep in eps if ep.group == params.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(adapters, "_warned", set())

    def add(group: str, name: str, value: str) -> None:
        eps.append(importlib.metadata.EntryPoint(name=name, value=value, group=group))

    return add


@pytest.fixture()
def fake_module(monkeypatch):
    """A throwaway importable module for entry points to point at."""
    def make(name: str, **attrs) -> None:
        module = types.ModuleType(name)
        vars(module).update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    return make


def test_default_registry_has_the_builtins_with_schemas(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    registry = default_registry(settings=None, context=None)
    assert BUILTINS <= set(registry.names())
    assert all(registry.source(n) == "builtin" for n in BUILTINS)
    assert [t.name for t in registry.tools()] == registry.names() and "search_models" in registry
    info = {i.name: i for i in registry.describe()}
    assert set(info["search_models"].args_schema["properties"]) == {"query", "labels", "limit", "language"}
    assert "candidates" in info["search_models"].result_schema["properties"]
    assert "metrics" in info["read_model_card"].result_schema["properties"]
    assert all(info[n].description for n in BUILTINS)
    with pytest.raises(KeyError, match="known: search_models"):
        registry.get("nope")


def test_builtin_results_validate_against_their_result_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = default_registry()
    for name, args in [("search_models", {"query": "sentiment", "labels": ["positive", "negative"]}),
                       ("read_model_card", {"model": "afinn"})]:
        tool = registry.get(name)
        out = tool.invoke(args)
        assert isinstance(out, dict)
        result_model_of(tool).model_validate(out)


def test_make_tool_contract():
    tool = echo_tool()
    assert tool.invoke({"text": "ab", "times": 2}) == {"text": "abab"}
    assert tool.invoke({"text": "ab"}) == {"text": "ab"}  # defaults filled in
    assert result_model_of(tool) is EchoResult
    bad = tool.invoke({"text": "", "times": 9})
    assert bad.startswith("invalid arguments for echo:") and "text" in bad and "times" in bad

    def refuse(args):
        raise ToolException("no such text")

    assert echo_tool(func=refuse).invoke({"text": "x"}) == "no such text"
    with pytest.raises(RuntimeError, match="invalid result"):  # our bug, not the caller's: loud
        echo_tool(func=lambda a: {"wrong": 1}).invoke({"text": "x"})


def test_clashes_builtins_win_then_first_come(caplog):
    registry = ToolRegistry()
    plugin_echo, builtin_echo = echo_tool(), echo_tool()
    assert registry.register(plugin_echo, source="entry point a")
    with caplog.at_level(logging.WARNING):
        assert not registry.register(echo_tool(), source="config path b.py")
        assert registry.register(builtin_echo, source="builtin")  # a built-in added later still wins
        assert not registry.register(echo_tool(), source="entry point c")
    assert registry.get("echo") is builtin_echo and registry.source("echo") == "builtin"
    assert len(caplog.records) == 3 and len(registry.skipped) == 3
    assert all("\n" not in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="two built-in"):
        registry.register(echo_tool(), source="builtin")
    with pytest.raises(TypeError):
        registry.register(object(), source="builtin")  # type: ignore[arg-type]


def test_entry_point_plugins_forms_and_failures(fake_entry_points, fake_module, caplog):
    fake_module("good_plugins", tool=echo_tool("plain_tool"),
                factory=lambda settings, context: [echo_tool("made_1"), echo_tool("made_2")],
                clash=lambda settings, context: echo_tool("search_models"),
                bad=lambda settings, context: "not a tool",
                boom=lambda settings, context: 1 / 0)
    for name in ("tool", "factory", "clash", "bad", "boom"):
        fake_entry_points("autoannotator.tools", name, f"good_plugins:{name}")
    fake_entry_points("autoannotator.tools", "missing", "no_such_module_xyz:make_tool")
    with caplog.at_level(logging.WARNING):
        registry = default_registry()
    assert {"plain_tool", "made_1", "made_2"} <= set(registry.names())
    assert registry.source("made_1") == "entry point factory"
    assert registry.source("search_models") == "builtin"
    text = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("clash", "bad", "boom", "missing"):
        assert f"entry point {name}" in text
    assert "ZeroDivisionError" in text and "ModuleNotFoundError" in text


def test_slm_adapter_entry_points(fake_entry_points, fake_module, caplog):
    def factory(spec, task, settings):
        return ("built", spec)

    fake_module("adapters_mod", factory=factory, not_callable=42)
    fake_entry_points("autoannotator.slm_adapters", "myprefix", "adapters_mod:factory")
    fake_entry_points("autoannotator.slm_adapters", "hf", "adapters_mod:factory")       # reserved
    fake_entry_points("autoannotator.slm_adapters", "vader", "adapters_mod:factory")    # a packaged scorer's name
    fake_entry_points("autoannotator.slm_adapters", "other", "adapters_mod:not_callable")
    fake_entry_points("autoannotator.slm_adapters", "broken", "no_such_module_xyz:f")
    with caplog.at_level(logging.WARNING):
        assert set(slm_adapter_factories()) == {"myprefix"}
        slm_adapter_factories()  # asked once per model: warnings are said once
    assert len(caplog.records) == 4
    assert adapter_for("myprefix:some/model")("myprefix:some/model", None, None) == ("built", "myprefix:some/model")
    assert adapter_for("vader") is None and adapter_for("unknown:x") is None and adapter_for("hf:org/x") is None
