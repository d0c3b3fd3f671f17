"""SandboxedEnsemble on both sandbox backends: same predictions as in process, one round trip per batch,
untrusted replies checked, a dead worker reported in one line."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_sandbox import each_backend, use

from autoannotator.config import Settings
from autoannotator.ensemble import run_ensemble
from autoannotator.sandbox import SandboxError
from autoannotator.slm.catalog import build_model
from autoannotator.deploy.proxy import DeploymentSpec, SandboxedEnsemble
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.deploy.codegen import write_deployment_code

LABELS = ["positive", "negative", "neutral"]
TASK = TaskSpec(instruction="sentiment of reviews", labels=[LabelDef(name=n) for n in LABELS])
TEXTS = ["I love it, absolutely wonderful!", "Terrible. Broke after a day.", "It arrived on Tuesday.", "",
         "Not bad at all", "ünïcödé 😀 great", "meh " * 300, "@bob check http://x.co it's awful"]


def make_tiny_hf(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with opaque labels LABEL_0..2 (so a mapping is needed): loads in a second."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from autoannotator.slm.student import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, initializer_range=0.2, num_labels=3)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> str:
    folder = make_tiny_hf(tmp_path_factory.mktemp("tiny-hf"))
    return f"hf:{folder}#LABEL_0=negative,LABEL_1=positive,LABEL_2="  # LABEL_2: no opinion


def _deploy(backend: str, specs: list[str | dict], tmp_path: Path):
    sandbox = use(backend)
    spec = DeploymentSpec(task_labels=LABELS, models=[s if isinstance(s, dict) else {"spec": s} for s in specs])
    result = write_deployment_code(spec, tmp_path / "run", sandbox, TEXTS)
    assert result.final_code and not result.error, result
    return sandbox, spec, Path(result.final_code)


@each_backend
def test_same_predictions_as_in_process_one_round_trip(backend, tmp_path, tiny_spec):
    specs = ["vader", "textblob", "afinn", tiny_spec]
    sandbox, spec, code = _deploy(backend, specs, tmp_path)
    in_process = [build_model(s, TASK, Settings(device="cpu")) for s in specs]
    with SandboxedEnsemble.start(code, spec, sandbox) as ens:
        assert [m.name for m in ens.models] == specs and not any(m.trainable for m in ens.models)
        assert ens.models[3].mapping.mapping == {"LABEL_0": "negative", "LABEL_1": "positive", "LABEL_2": None}
        calls = []
        real_call = ens.worker.call
        ens.worker.call = lambda payload, timeout_s=60.0: calls.append(payload["op"]) or real_call(payload, timeout_s)
        texts = [*TEXTS, None]  # a non-string is a blank text, as in process
        got = run_ensemble(ens.models, texts, len(LABELS))
        want = run_ensemble(in_process, texts, len(LABELS))
        assert calls == ["predict"]  # k = 4 models, one round trip
        np.testing.assert_array_equal(got.votes, want.votes)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        np.testing.assert_array_equal(got.majority, want.majority)
        np.testing.assert_array_equal(got.uncertainty, want.uncertainty)
        assert (got.votes[3] == -1).all()  # the blank text: every model abstains
        for proxy, model in zip(ens.models, in_process):
            np.testing.assert_array_equal(proxy.predict(TEXTS[:2]).proba, model.predict(TEXTS[:2]).proba)
        assert calls == ["predict", "predict"]  # the new batch once, then reused by the other proxies
        assert ens.models[0].predict([]).votes.shape == (0,)


def _kill(worker) -> None:
    """Kill the sandboxed program from outside (as an OOM kill would), and wait until it is gone."""
    if hasattr(worker, "container"):
        worker.container.kill()
    else:  # the program itself via its cgroup when there is one; else bwrap, which takes it along
        if worker.cgroup is not None:
            worker.cgroup.kill_all()
        os.kill(worker.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker.exit_code() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the program's own death (after its parent's) is asynchronous


@each_backend
def test_worker_death_is_one_line(backend, tmp_path):
    cleaned = {"spec": "vader", "preprocess": {"lowercase": True, "normalize_mentions": True, "normalize_urls": True}}
    sandbox, spec, code = _deploy(backend, [cleaned, "afinn"], tmp_path)
    ens = SandboxedEnsemble.start(code, spec, sandbox)
    try:
        vader = build_model("vader", TASK, Settings())
        np.testing.assert_array_equal(ens.models[0].predict(["GREAT!! @Bob https://t.co/x"]).proba,
                                      vader.predict(["great!! @user http"]).proba)
        assert ens.models[0].predict(["good"]).votes.tolist() == [0]
        _kill(ens.worker)
        with pytest.raises(SandboxError) as died:
            ens.models[0].predict(["a new batch"])
        assert "\n" not in str(died.value) and backend in str(died.value)
        with pytest.raises(SandboxError, match="closed"):
            ens.models[1].predict(["another batch"])
    finally:
        ens.close()


MALFORMED = r'''
import worker_protocol
def handle(req):
    if req["op"] == "info":
        return {"task_labels": ["positive", "negative", "neutral"],
                "models": [{"name": "vader", "native_labels": ["a", "b"], "mapping": {"a": "positive", "b": None}}]}
    return {"models": {"vader": {"votes": [7] * len(req["texts"]), "proba": [[0.1, 0.2, 0.3]] * len(req["texts"])}}}
worker_protocol.serve(handle)
'''


@each_backend
def test_untrusted_reply_is_checked(backend, tmp_path):
    sandbox = use(backend)
    code = tmp_path / "bad.py"
    code.write_text(MALFORMED)
    spec = DeploymentSpec(task_labels=LABELS, models=[{"spec": "vader"}])
    with SandboxedEnsemble.start(code, spec, sandbox) as ens:
        with pytest.raises(SandboxError, match="malformed predictions for vader: votes out of range"):
            ens.models[0].predict(["x"])
    wrong = DeploymentSpec(task_labels=LABELS, models=[{"spec": "afinn"}])
    with pytest.raises(SandboxError, match=r"serves \['vader'\].*expected \['afinn'\]"):
        SandboxedEnsemble.start(code, wrong, sandbox)


def test_only_frozen_models():
    with pytest.raises(ValidationError, match="student stays in-process"):
        DeploymentSpec(task_labels=LABELS, models=[{"spec": "student"}])
    with pytest.raises(ValidationError, match="outside the task"):
        DeploymentSpec(task_labels=LABELS, models=[{"spec": "vader", "mapping": {"positive": "great"}}])
    with pytest.raises(ValidationError, match="unique"):
        DeploymentSpec(task_labels=LABELS, models=[{"spec": "vader"}, {"spec": "vader"}])
