"""write_deployment_code on both sandbox backends: the strict template, the smoke test, the LLM's repair
loop, the fallback to the vetted template, and generated code that tries to phone home."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from fakes import ScriptedChatModel
from loopback import loopback_listener
from pydantic import ValidationError
from test_sandbox import each_backend, use

from autoannotator.deploy.proxy import DeploymentSpec
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.deploy.codegen import (
    RESULT_MODEL,
    TEMPLATE,
    GeneratedProgram,
    py_literal,
    render_deployment,
    render_template,
    write_deployment_code,
)
from autoannotator.tools.plan_tools import make_write_deployment_code_tool

LABELS = ["positive", "negative", "neutral"]
SPEC = DeploymentSpec(task_labels=LABELS, models=[{"spec": "vader"}, {"spec": "textblob"}, {"spec": "afinn"}])
SAMPLES = ["I love it", "Awful, broke at once", "It is a box", "@ann see http://x.co it is great"]
BROKEN = "import json\nprint('half a program'\n"  # a SyntaxError: fails fast in the sandbox


def _versions(result) -> list[tuple[str, bool]]:
    return [(v.source, v.passed) for v in result.versions]


def _files_kept(result) -> None:
    for v in result.versions:
        assert Path(v.path).is_file() and Path(v.path).name == f"v{v.version}.py"
        smoke = json.loads(Path(v.smoke_path).read_text())
        assert {"exit_code", "stdout", "stderr", "backend", "seconds", "source"} <= set(smoke)
        assert smoke["source"] == v.source and smoke["backend"] == result.backend


def test_template_renders_strictly():
    code = render_deployment(SPEC)
    compile(code, "v1.py", "exec")
    assert "TASK_LABELS = ['positive', 'negative', 'neutral']" in code
    with pytest.raises(jinja2.UndefinedError, match="samples_file"):
        render_template(TEMPLATE, task_labels=LABELS, models=[], models_dir="models")
    with pytest.raises(ValueError, match="not plain data"):
        py_literal(object())


def test_rendered_values_cannot_inject_code():
    evil = 'x\']\n"""\nimport os; os.system("echo pwned")  # '
    spec = DeploymentSpec(task_labels=[evil, "b"], models=[{"spec": "vader", "name": evil + "'"}])
    tree = ast.parse(render_deployment(spec))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]
    assigned = {getattr(n.targets[0], "id", None): n.value for n in tree.body if isinstance(n, ast.Assign)}
    assert ast.literal_eval(assigned["TASK_LABELS"]) == [evil, "b"]
    assert ast.literal_eval(assigned["MODELS"])[0]["name"] == evil + "'"


@each_backend
def test_template_passes_smoke(backend, tmp_path):
    result = write_deployment_code(SPEC, tmp_path / "run", use(backend), SAMPLES)
    assert result.error is None and not result.fell_back_to_template
    assert _versions(result) == [("template", True)]
    assert result.final_code == str(tmp_path / "run/deploy/ensemble/v1.py")
    _files_kept(result)
    summary = json.loads(Path(result.versions[0].smoke_path).read_text())["summary"]
    assert summary["ok"] and summary["n"] == 4
    assert summary["models"]["vader"]["votes"][:2] == [0, 1]


@each_backend
def test_llm_repairs_its_program(backend, tmp_path):
    fixed = render_deployment(SPEC) + "\n# customised by the LLM: nothing else to change\n"
    chat = ScriptedChatModel([{"code": BROKEN}, {"code": f"```python\n{fixed}```"}])
    result = write_deployment_code(SPEC, tmp_path / "run", use(backend), SAMPLES, chat=chat)
    chat.assert_complete()
    assert _versions(result) == [("template", True), ("llm", False), ("llm-repair", True)]
    assert result.final_code.endswith("v3.py") and not result.fell_back_to_template and result.error is None
    assert "customised by the LLM" in Path(result.final_code).read_text()  # fences stripped, code kept
    assert "SyntaxError" in result.versions[1].error or "SyntaxError" in Path(result.versions[1].smoke_path).read_text()
    repair_prompt = chat.calls[1][-1].content
    assert "failed its smoke test" in repair_prompt and "SyntaxError" in repair_prompt
    assert chat.structured_schemas[0] is GeneratedProgram
    _files_kept(result)


@each_backend
def test_keeps_failing_falls_back_to_template(backend, tmp_path):
    chat = ScriptedChatModel([{"code": BROKEN}] * 3)
    result = write_deployment_code(SPEC, tmp_path / "run", use(backend), SAMPLES, chat=chat, max_repairs=2)
    chat.assert_complete()
    assert _versions(result) == [("template", True), ("llm", False), ("llm-repair", False), ("llm-repair", False)]
    assert result.fell_back_to_template and result.final_code.endswith("v1.py") and result.error is None
    _files_kept(result)


@each_backend
def test_program_that_passes_smoke_but_serves_wrong_is_rejected(backend, tmp_path):
    template = render_deployment(SPEC)
    liar = template.replace("worker_protocol.serve(make_handler(loaded))",
                            "worker_protocol.serve(lambda r: {'task_labels': TASK_LABELS, 'models': []})")
    assert liar != template
    chat = ScriptedChatModel([{"code": liar}])
    result = write_deployment_code(SPEC, tmp_path / "run", use(backend), SAMPLES, chat=chat, max_repairs=0)
    assert _versions(result) == [("template", True), ("llm", False)] and result.fell_back_to_template
    assert result.versions[1].error.startswith("serving check: ") and "serves []" in result.versions[1].error


PHONE_HOME = '''
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"exfiltrated")
    print("CONNECTED")
except OSError as exc:
    print("BLOCKED:", type(exc).__name__, exc)
sys.exit(3)
'''


@each_backend
def test_generated_code_cannot_phone_home(backend, tmp_path):
    with loopback_listener() as (port, accepted):
        chat = ScriptedChatModel([{"code": PHONE_HOME.format(port=port)}])
        result = write_deployment_code(SPEC, tmp_path / "run", use(backend), SAMPLES, chat=chat, max_repairs=0)
    assert not accepted, "generated code reached a listener on the host"
    smoke = json.loads(Path(result.versions[1].smoke_path).read_text())
    assert "BLOCKED" in smoke["stdout"] and "CONNECTED" not in smoke["stdout"]
    assert result.fell_back_to_template and result.final_code.endswith("v1.py")


def test_template_failure_is_reported(tmp_path):
    spec = DeploymentSpec(task_labels=LABELS, models=[{"spec": "vader"}, {"spec": "hf:nobody/not-cached"}])
    result = write_deployment_code(spec, tmp_path / "run", use("local"), SAMPLES, chat=ScriptedChatModel([]))
    assert result.final_code is None and _versions(result) == [("template", False)]
    assert result.error.startswith("the vetted template failed its smoke test: hf:nobody/not-cached: ")
    assert "\n" not in result.error


def test_tool(tmp_path):
    tool = make_write_deployment_code_tool(SimpleNamespace(device="cpu"), SimpleNamespace(
        run_dir=tmp_path / "run", samples=SAMPLES, chat=ScriptedChatModel([]), weak_llm=True, sandbox=use("local"),
        plan=SimpleNamespace(task=TaskSpec(instruction="x", labels=[LabelDef(name=n) for n in LABELS]))))
    assert tool.metadata["result_model"] is RESULT_MODEL is make_write_deployment_code_tool.RESULT_MODEL
    out = tool.invoke({"models": [{"spec": "vader"}, {"spec": "afinn", "preprocess": {"lowercase": True}}]})
    assert out["final_code"].endswith("v1.py") and out["spec"]["models"][0]["device"] == "cpu"
    assert RESULT_MODEL.model_validate(out).versions[0].passed
    refused = tool.invoke({"models": [{"spec": "student"}]})
    assert isinstance(refused, str) and "student stays in-process" in refused
    with pytest.raises(ValidationError):
        RESULT_MODEL.model_validate({"final_code": None})
