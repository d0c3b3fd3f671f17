"""The Label Studio round trip against a real server (label-studio 1.23.2 started on loopback by the
`label_studio` fixture): the printed labelling config makes a real project, the exported tasks and their
predictions go in through its API, annotations are submitted and exported through its API, and
`runs import-labelstudio` takes them back. `runs push-labelstudio` does the first half itself.

Skipped (with the reason) when .venv-labelstudio is missing; failed under CI=true.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from labelstudio_server import LabelStudioServer
from test_labelstudio import _results, _run, invoke

from autoannotator.errors import UserError
from autoannotator.run.labelstudio import LabelStudioClient, labeling_config

FLIP = {"positive": "negative", "negative": "positive"}


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _tasks_by_row(server: LabelStudioServer, project_id: int) -> dict[int, dict]:
    """row_id -> the task as Label Studio stores it (its id, data and prediction count)."""
    listed = server.api("GET", f"/api/tasks?project={project_id}&page_size=1000")
    tasks = listed["tasks"] if isinstance(listed, dict) else listed
    return {t["data"]["row_id"]: t for t in tasks}


def _predictions(server: LabelStudioServer, task_id: int) -> list[dict]:
    return server.api("GET", f"/api/predictions?task={task_id}")


def _annotate(server: LabelStudioServer, task_id: int, label: str, cancelled: bool = False) -> dict:
    return server.api("POST", f"/api/tasks/{task_id}/annotations/",
                      {"result": _choice(label), "was_cancelled": cancelled, "ground_truth": False})


def _gold(run_dir: Path) -> list[str]:
    return pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)["input_label"].tolist()


def test_round_trip_through_a_real_label_studio(label_studio: LabelStudioServer, tmp_path):
    _, run_dir = _run(tmp_path)
    before = _results(run_dir)
    gold = _gold(run_dir)
    out_before = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)

    exported = invoke("export-labelstudio", str(run_dir), str(tmp_path / "tasks.json"))
    assert exported.exit_code == 0, exported.output
    config = exported.stdout.strip().splitlines()[-1]
    tasks = json.loads((tmp_path / "tasks.json").read_text())

    # The printed config is one Label Studio accepts as it is.
    project = label_studio.api("POST", "/api/projects", {"title": "round trip", "label_config": config})
    assert project["label_config"] == config
    summary = label_studio.api("POST", f"/api/projects/{project['id']}/import", tasks)
    assert summary["task_count"] == len(tasks)
    assert summary["prediction_count"] == sum(bool(t.get("predictions")) for t in tasks) == len(tasks)

    stored = _tasks_by_row(label_studio, project["id"])
    assert sorted(stored) == sorted(t["data"]["row_id"] for t in tasks)
    for task in tasks:
        row = task["data"]["row_id"]
        assert stored[row]["data"]["text"] == task["data"]["text"]
        (pred,) = _predictions(label_studio, stored[row]["id"])
        assert pred["result"] == task["predictions"][0]["result"] and pred["model_version"] == "autoannotator"
        assert pred["score"] == pytest.approx(task["predictions"][0]["score"])

    hard = [t["data"]["row_id"] for t in tasks]
    wrong = [r for r in hard if before[r]["label"] != gold[r]]
    right = [r for r in hard if before[r]["label"] == gold[r]]
    assert len(wrong) >= 2 and len(right) >= 2, "the P=0.7 simulated verifier gets some hard rows wrong"
    _annotate(label_studio, stored[wrong[0]]["id"], gold[wrong[0]])  # a reviewer corrects the label
    _annotate(label_studio, stored[wrong[1]]["id"], before[wrong[1]]["label"])  # first keeps it ...
    _annotate(label_studio, stored[wrong[1]]["id"], gold[wrong[1]])  # ... a second annotation corrects it
    _annotate(label_studio, stored[right[0]]["id"], gold[right[0]])  # confirmed as it was
    _annotate(label_studio, stored[right[1]]["id"], FLIP[gold[right[1]]], cancelled=True)  # skipped: ignored

    export = label_studio.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    assert sorted(t["data"]["row_id"] for t in export) == sorted([wrong[0], wrong[1], right[0], right[1]])
    (tmp_path / "export.json").write_text(json.dumps(export), encoding="utf-8")

    result = invoke("import-labelstudio", str(run_dir), str(tmp_path / "export.json"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "3 reviewed row(s), 2 label(s) changed" in result.output

    reviewed = {wrong[0], wrong[1], right[0]}
    after = _results(run_dir)
    out_after = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    for b, a in zip(before, after):
        if a["row_id"] in reviewed:
            assert a["label"] == gold[a["row_id"]] and a["label_source"] == "human_reviewed"
        else:
            assert a == b
    assert sorted(out_before.compare(out_after).index) == sorted(reviewed)
    assert out_after.loc[sorted(reviewed), "label"].tolist() == [gold[r] for r in sorted(reviewed)]
    assert set(out_after.loc[sorted(reviewed), "label_source"]) == {"human_reviewed"}

    section = json.loads((run_dir / "report.json").read_text())["human_reviewed"]
    assert (section["n_reviewed"], section["n_changed"], section["n_rows_human_reviewed"]) == (3, 2, 3)
    assert sorted(c["row_id"] for c in section["changes"]) == sorted(wrong[:2])
    assert section["accuracy_after"] > section["accuracy_before"]


def test_push_creates_the_project_with_tasks_and_predictions(label_studio: LabelStudioServer, tmp_path):
    """With a personal access token, as a new user has one; then the export comes back through the client."""
    _, run_dir = _run(tmp_path)
    results = _results(run_dir)
    gold = _gold(run_dir)
    texts = pd.read_csv(tmp_path / "reviews.csv", dtype=str, keep_default_na=False)["text"].tolist()
    hard = [r for r in results if r["label_source"] == "llm_verified"]

    pushed = invoke("push-labelstudio", str(run_dir), "--url", label_studio.url, "--api-key",
                    label_studio.personal_token, "--title", "pushed by the test")
    assert pushed.exit_code == 0, (pushed.output, pushed.exception)
    project_url = pushed.stdout.strip().splitlines()[-1]
    assert project_url.startswith(f"{label_studio.url}/projects/")
    project_id = int(project_url.split("/projects/")[1].split("/")[0])
    assert f"created project {project_id} with {len(hard)} task(s), {len(hard)} prediction(s)" in pushed.stderr

    project = label_studio.api("GET", f"/api/projects/{project_id}")
    assert project["title"] == "pushed by the test"
    assert project["label_config"] == labeling_config(["positive", "negative"])
    stored = _tasks_by_row(label_studio, project_id)
    assert sorted(stored) == [r["row_id"] for r in hard]
    for rec in hard:
        assert stored[rec["row_id"]]["data"]["text"] == texts[rec["row_id"]]
        (pred,) = _predictions(label_studio, stored[rec["row_id"]]["id"])
        assert pred["result"] == _choice(rec["label"])
        assert pred["score"] == pytest.approx(1 - rec["uncertainty"], abs=1e-4)

    target = next(r["row_id"] for r in hard if r["label"] != gold[r["row_id"]])
    _annotate(label_studio, stored[target]["id"], gold[target])
    with LabelStudioClient(label_studio.url, label_studio.personal_token) as client:
        client._access = "expired.or.revoked"  # the ~5 min access token ran out: the client renews it once
        assert [t["data"]["row_id"] for t in client.export_tasks(project_id)] == [target]

    pulled = invoke("import-labelstudio", str(run_dir), "--project", str(project_id), "--url", label_studio.url,
                    "--api-key", label_studio.personal_token)
    assert pulled.exit_code == 0, (pulled.output, pulled.exception)
    assert "1 reviewed row(s), 1 label(s) changed" in pulled.stdout
    section = json.loads((run_dir / "report.json").read_text())["human_reviewed"]
    assert section["imported_from"] == str((run_dir / f"labelstudio-project-{project_id}.json").resolve())
    after = _results(run_dir)
    assert after[target]["label_source"] == "human_reviewed" and after[target]["label"] == gold[target]
    assert sum(r["label_source"] == "human_reviewed" for r in after) == 1


def test_push_with_a_legacy_token_and_with_bad_keys(label_studio: LabelStudioServer, tmp_path):
    _, run_dir = _run(tmp_path, n=24)
    ok = invoke("push-labelstudio", str(run_dir), "--url", label_studio.url, "--api-key", label_studio.legacy_token,
                "--all")
    assert ok.exit_code == 0, (ok.output, ok.exception)
    project_id = int(ok.stdout.strip().splitlines()[-1].split("/projects/")[1].split("/")[0])
    assert len(_tasks_by_row(label_studio, project_id)) == 24

    def error(key: str) -> str:
        result = invoke("push-labelstudio", str(run_dir), "--url", label_studio.url, "--api-key", key)
        assert isinstance(result.exception, UserError), (result.output, result.exception)
        assert "\n" not in str(result.exception)
        return str(result.exception)

    assert "refused the API key (401: Invalid token.)" in error("0" * 40)
    assert "refused the personal access token" in error(label_studio.personal_token[:-4] + "AAAA")

    # An organization with legacy tokens turned off (the default for a new Label Studio): say what to use.
    settings = label_studio.api("GET", "/api/jwt/settings")
    with LabelStudioClient(label_studio.url, label_studio.personal_token) as admin:
        admin.request("POST", "/api/jwt/settings", json={**settings, "legacy_api_tokens_enabled": False})
        try:
            assert "pass a personal access token instead" in error(label_studio.legacy_token)
        finally:
            admin.request("POST", "/api/jwt/settings", json=settings)
    assert label_studio.api("GET", "/api/jwt/settings")["legacy_api_tokens_enabled"] is True


def test_push_to_an_unreachable_server_is_one_line(tmp_path, monkeypatch):
    """Needs no Label Studio: nothing listens on the port. Through the real command line."""
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    _, run_dir = _run(tmp_path, n=24)
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "autoannotator.cli.app", "runs", "push-labelstudio", str(run_dir),
                           "--url", f"http://127.0.0.1:{port}", "--api-key", "k" * 40],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot reach Label Studio at http://127.0.0.1:{port}" in lines[0]

    bad_url = invoke("push-labelstudio", str(run_dir), "--url", "localhost:8080", "--api-key", "k")
    assert isinstance(bad_url.exception, UserError) and "must be a Label Studio address" in str(bad_url.exception)
    neither = invoke("import-labelstudio", str(run_dir))
    assert isinstance(neither.exception, UserError) and "either Label Studio's EXPORT.json or --project" in \
        str(neither.exception)
    no_url = invoke("import-labelstudio", str(run_dir), "--project", "3")
    assert isinstance(no_url.exception, UserError) and "--project needs --url" in str(no_url.exception)
