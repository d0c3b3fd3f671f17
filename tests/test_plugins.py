"""The example plugin (examples/plugins/keyword_prefilter), loaded both ways, installing nothing globally."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoannotator.tools.registry import default_registry

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "examples" / "plugins" / "keyword_prefilter"
PLUGIN_FILE = PLUGIN_DIR / "keyword_prefilter.py"
RULES = [{"keyword": "refund", "label": "billing"}, {"keyword": "crash", "label": "bug"},
         {"keyword": "invoice", "label": "billing"}]
TEXTS = ["I want a refund", "the app crashes on start", "refund the invoice", "Crash! and a refund", "hello"]


@pytest.fixture()
def no_entry_points(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])


def settings_with(*paths: str) -> SimpleNamespace:
    return SimpleNamespace(tool_paths=list(paths), model_dirs=[])


def check_prefilter(tool) -> None:
    out = tool.invoke({"rules": RULES, "texts": TEXTS})
    assert out["settled"] == [{"row": 0, "label": "billing", "keywords": ["refund"]},
                              {"row": 2, "label": "billing", "keywords": ["refund", "invoice"]}]
    assert out["conflicts"] == [{"row": 3, "labels": ["billing", "bug"]}]
    assert out["unmatched"] == [1, 4]  # whole words: "crashes" is not "crash"
    # Bad arguments: a message the LLM can act on, not an exception.
    msg = tool.invoke({"rules": [{"keyword": "", "label": "x"}], "texts": ["a"]})
    assert msg.startswith("invalid arguments for keyword_prefilter:") and "rules.0.keyword" in msg
    both = tool.invoke({"rules": RULES, "texts": ["a"], "row_ids": [0]})
    assert both.startswith("invalid arguments for keyword_prefilter:") and "exactly one of texts or row_ids" in both


def test_loaded_from_a_config_path(no_entry_points):
    registry = default_registry(settings_with(f"{PLUGIN_FILE}:make_tool"))
    assert registry.source("keyword_prefilter") == f"config path {PLUGIN_FILE}:make_tool"
    assert {"search_models", "read_model_card"} <= set(registry.names())
    info = {i.name: i for i in registry.describe()}["keyword_prefilter"]
    assert info.source.startswith("config path") and "settled" in info.result_schema["properties"]
    check_prefilter(registry.get("keyword_prefilter"))
    # row ids with no run context to resolve them: a ToolException, returned as a message
    assert "need a run" in registry.get("keyword_prefilter").invoke({"rules": RULES, "row_ids": [0]})


def test_a_config_path_without_a_factory_name_uses_make_tool(no_entry_points):
    assert "keyword_prefilter" in default_registry(settings_with(str(PLUGIN_FILE)))


def test_loaded_from_an_entry_point_with_run_context(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="keyword_prefilter", value="keyword_prefilter:make_tool",
                                       group="autoannotator.tools")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **params: [ep] if params.get("group") == ep.group else [])
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))  # what pip install would do, for this test only
    monkeypatch.delitem(sys.modules, "keyword_prefilter", raising=False)
    context = SimpleNamespace(texts={10: "need a refund", 11: "nothing here"})
    registry = default_registry(settings_with(), context)
    assert registry.source("keyword_prefilter") == "entry point keyword_prefilter"
    tool = registry.get("keyword_prefilter")
    check_prefilter(tool)
    out = tool.invoke({"rules": RULES, "row_ids": [10, 11]})
    assert out["settled"][0]["row"] == 10 and out["unmatched"] == [11]
    assert "unknown row ids: [99]" in tool.invoke({"rules": RULES, "row_ids": [99]})
    sys.modules.pop("keyword_prefilter", None)  # leave no importable trace for other tests


def test_broken_plugins_are_skipped_with_one_warning_each(no_entry_points, tmp_path, caplog):
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('plugin import failed')\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def make_tool(:\n")
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def make_tool(settings, context):\n    return {'not': 'a tool'}\n")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    paths = [str(raises), str(syntax), f"{wrong}:make_tool", str(empty), f"{PLUGIN_FILE}:no_such_factory",
             str(tmp_path / "missing.py"), f"{PLUGIN_FILE}:make_tool"]
    with caplog.at_level(logging.WARNING, logger="autoannotator.tools.registry"):
        registry = default_registry(settings_with(*paths))
    assert "keyword_prefilter" in registry and "search_models" in registry  # the good ones still load
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 6 and all("\n" not in w and w.startswith("skipped tool plugin") for w in warnings)
    joined = "\n".join(warnings)
    for expected in ("RuntimeError: plugin import failed", "SyntaxError", "TypeError", "AttributeError",
                     "FileNotFoundError"):
        assert expected in joined
    assert len(registry.skipped) == 6


def test_settings_without_tool_paths_are_fine(no_entry_points):
    assert "keyword_prefilter" not in default_registry(SimpleNamespace(model_dirs=[]))


def test_the_plugin_package_declares_its_entry_point():
    meta = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())
    entry_points = meta["project"]["entry-points"]["autoannotator.tools"]
    assert entry_points == {"keyword_prefilter": "keyword_prefilter:make_tool"}
    assert meta["tool"]["setuptools"]["py-modules"] == ["keyword_prefilter"]
