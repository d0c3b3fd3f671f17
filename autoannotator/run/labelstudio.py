"""Label Studio round trip: export a run's hard rows as pre-annotated tasks, import the reviewed labels back.

Export writes Label Studio's JSON import format (one task per row, the run's label as a prediction
scored 1 - U) and the labeling config that matches it. Import reads Label Studio's JSON export,
sets each reviewed row's label with label_source ``human_reviewed``, rewrites the labelled output
file and updates report.json (counts, accuracy, and a ``human_reviewed`` section).

``LabelStudioClient`` speaks the few REST calls a push needs (create a project, import tasks, export
annotations) to a real server (checked against label-studio 1.23.2): it takes either kind of API key,
a legacy token (``Authorization: Token``) or a personal access token, which is a JWT refresh token
traded at ``/api/token/refresh/`` for a short-lived ``Bearer`` access token.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import httpx

from autoannotator.data import FINISH_CHUNK_ROWS, DataSource
from autoannotator.ensemble import is_hard
from autoannotator.errors import UserError
from autoannotator.run.output import ShardWriter, assemble, label_columns
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import RunPlan, open_run_source
from autoannotator.run.report import write_report
from autoannotator.run.store import RunStore
from autoannotator.run.tally import RowTally, tally_run

REVIEWED = "human_reviewed"
PUSH_CHUNK_TASKS = 5_000  # tasks per import request: Label Studio parses each request's body whole


def labeling_config(labels: list[str]) -> str:
    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in labels)
    return (f'<View><Text name="text" value="$text"/>'
            f'<Choices name="label" toName="text" choice="single" showInline="true">{choices}</Choices></View>')


def is_hard_row(rec: dict[str, Any], epsilon: float) -> bool:
    """Rows the run sent (or would have sent) to the verifier, plus rows a human already reviewed."""
    if rec["label_source"] in ("llm_verified", REVIEWED):
        return True
    return rec["uncertainty"] is not None and is_hard(rec["uncertainty"], epsilon)


def export_tasks(plan: RunPlan, results: Iterable[dict[str, Any]], texts: Mapping[int, str] | Sequence[str],
                 all_rows: bool) -> list[dict]:
    """The tasks of these result records; ``texts[row_id]`` is each row's text."""
    epsilon = float(plan.settings.get("epsilon", 1e-6))
    tasks = []
    for rec in results:
        if not all_rows and not is_hard_row(rec, epsilon):
            continue
        task: dict[str, Any] = {"data": {"text": texts[rec["row_id"]], "row_id": rec["row_id"]}}
        if rec["label"] is not None:  # an empty text has no label to suggest
            u = rec["uncertainty"] or 0.0
            task["predictions"] = [{"model_version": "autoannotator", "score": round(1.0 - u, 4), "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [rec["label"]]}}]}]
        tasks.append(task)
    return tasks


def parse_export(raw: Any, labels: list[str], n_rows: int, name: str) -> dict[int, str]:
    """row_id -> reviewed label from Label Studio's JSON export. Tasks with no (uncancelled) answer are skipped."""
    if not isinstance(raw, list):
        raise UserError(f"{name}: expected Label Studio's JSON export (a list of tasks), got a {type(raw).__name__}")
    canon = {lbl.lower(): lbl for lbl in labels}
    out: dict[int, str] = {}
    for i, task in enumerate(raw, start=1):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "row_id" not in data:
            raise UserError(f"{name}: task {i} has no data.row_id (export the tasks autoannotator wrote)")
        row_id = data["row_id"]
        if isinstance(row_id, bool) or not isinstance(row_id, int) or not 0 <= row_id < n_rows:
            raise UserError(f"{name}: task {i}: row_id {row_id!r} is not a row of this run (0..{n_rows - 1})")
        choices = _choices(task, name, i)
        if choices is None:
            continue
        if len(choices) != 1:
            raise UserError(f"{name}: task {i} (row {row_id}): expected one label, got {choices}")
        label = canon.get(str(choices[0]).strip().lower())
        if label is None:
            raise UserError(f"{name}: task {i} (row {row_id}): label {choices[0]!r} is not one of {', '.join(labels)}")
        out[row_id] = label
    return out


def _choices(task: dict, name: str, i: int) -> list | None:
    """The choices of the task's latest uncancelled annotation (Label Studio lists them oldest first)."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    for ann in reversed(annotations):
        for item in ann.get("result") or []:
            if isinstance(item, dict) and item.get("type", "choices") == "choices" and \
                    item.get("from_name", "label") == "label":
                choices = (item.get("value") or {}).get("choices")
                if not isinstance(choices, list):
                    raise UserError(f"{name}: task {i}: value.choices must be a list")
                return choices
    return None


def import_review(run_dir: Path, export_path: Path) -> dict[str, Any]:
    """Apply a Label Studio export to a finished run; returns the ``human_reviewed`` section written.

    Holds the reviewed rows only: the store is updated in place, the labelled shards holding a reviewed row
    are rewritten from it, and the output file and the report's figures are rebuilt by streaming the
    input and the store side by side, as at the end of a run."""
    plan = RunPlan.load(run_dir)
    report_path = run_dir / "report.json"
    try:
        raw = json.loads(Path(export_path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {export_path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{Path(export_path).name}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    source = open_run_source(plan)
    labels = plan.task.label_names
    paths = RunPaths(run_dir)
    store = RunStore(paths.store)
    try:
        _require_finished(plan, store, source.n_rows, report_path.is_file())
        reviewed = parse_export(raw, labels, source.n_rows, Path(export_path).name)
        ids = sorted(reviewed)
        old = {r["row_id"]: r for r in store.results_of(ids)}
        changes = [{"row_id": rid, "before": old[rid]["label"], "after": reviewed[rid]}
                   for rid in ids if old[rid]["label"] != reviewed[rid]]
        store.put_results([{**old[rid], "label": reviewed[rid], "label_source": REVIEWED} for rid in ids])
        try:
            written = _rewrite_output(plan, source, store, paths.labelled, ids)
        except BaseException:  # the output could not be written (say, a Parquet type error): the store as it was
            store.put_results([old[rid] for rid in ids])
            _rewrite_shards(store, paths.labelled, ids, source.n_rows)
            raise
        report = json.loads(report_path.read_text(encoding="utf-8"))
        tally = tally_run(store, source, bool(plan.gold_column), labels, [m["name"] for m in report.get("models", [])])
    finally:
        store.close()
    section = {"imported_from": str(Path(export_path).resolve()), "imported_at": datetime.now(timezone.utc).isoformat(),
               "n_reviewed": len(reviewed), "n_changed": len(changes), "changes": changes,
               "n_rows_human_reviewed": tally.sources.get(REVIEWED, 0)}
    _refresh_report(report, tally, section, report.get("accuracy") if plan.gold_column else None, written)
    write_report(report, run_dir)
    with open(run_dir / "report.md", "a", encoding="utf-8") as fh:  # render_markdown knows no review section
        fh.write(_review_markdown(section))
    return section


def _require_finished(plan: RunPlan, store: RunStore, n_rows: int, reported: bool = True) -> None:
    if not reported or not store.covers(n_rows):
        raise UserError(f"run {plan.run_id} is not finished ({store.n_results()} of {n_rows} rows); "
                        f"finish it first: autoannotator runs resume {plan.run_id}")


def _rewrite_shards(store: RunStore, folder: Path, row_ids: Sequence[int], n_rows: int) -> ShardWriter:
    """Rewrite, from the store, each labelled shard that holds one of ``row_ids`` (and fill any gap)."""
    writer = ShardWriter(folder)
    wanted = set(row_ids)
    for lo, hi, _ in writer.shards():
        if any(lo <= r <= hi for r in wanted):
            part = store.results_between(lo, hi + 1)
            writer.append([r["row_id"] for r in part], label_columns(part))
    for lo, hi in writer.missing(n_rows):
        writer.append_stored(store, lo, hi)
    return writer


def _rewrite_output(plan: RunPlan, source: DataSource, store: RunStore, folder: Path, row_ids: Sequence[int]
                    ) -> list[str]:
    return assemble(source, _rewrite_shards(store, folder, row_ids, source.n_rows), Path(plan.out_path))


def _review_markdown(section: dict) -> str:
    lines = ["", "## Human review (Label Studio)", "",
             f"- Imported {section['n_reviewed']} reviewed rows from {section['imported_from']}: "
             f"{section['n_changed']} label(s) changed; {section['n_rows_human_reviewed']} rows human-reviewed in all"]
    if "accuracy_after" in section:
        lines.append(f"- Accuracy against gold: {section['accuracy_before']} before, {section['accuracy_after']} after")
    return "\n".join(lines) + "\n"


def _refresh_report(report: dict, tally: RowTally, section: dict, accuracy_before: float | None,
                    warnings: list[str]) -> None:
    # Counts, agreement and accuracy follow the labels; cost figures stay what the run paid.
    report["label_sources"] = dict(tally.sources)
    report["label_counts"] = dict(tally.label_counts)
    report["model_agreement"] = tally.model_agreement()
    if tally.with_gold:
        report.update(tally.quality())
        section["accuracy_before"], section["accuracy_after"] = accuracy_before, report["accuracy"]
    report["warnings"] = list(dict.fromkeys(report.get("warnings", []) + warnings))
    report["human_reviewed"] = section


# -- a Label Studio server, over HTTP -------------------------------------------------------------
def _jwt_claims(key: str) -> dict[str, Any] | None:
    """The (unverified) claims of a JWT, or None when the key is not one (a legacy token is 40 hex digits)."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _detail(response: httpx.Response) -> str:
    """Label Studio's one-line reason for an error response (its JSON ``detail``), else the status text."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("validation_errors") or body
        return " ".join(str(detail).split())[:300]
    return " ".join(str(body).split())[:300]


class LabelStudioClient:
    """The REST calls autoannotator makes to a Label Studio server; failures are one-line ``UserError``s."""

    def __init__(self, url: str, api_key: str, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"--url must be a Label Studio address like http://localhost:8080, not {url!r}")
        if not api_key.strip():
            raise UserError("no Label Studio API key: pass --api-key (Account & Settings > Personal Access Token)")
        self.url = url.strip().rstrip("/")
        self._key = api_key.strip()
        self._claims = _jwt_claims(self._key)
        self._access: str | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LabelStudioClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- auth and transport --
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise UserError(f"Label Studio at {self.url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"cannot reach Label Studio at {self.url}: {reason}") from None

    def _auth(self, renew: bool = False) -> dict[str, str]:
        if self._claims is None:
            return {"Authorization": f"Token {self._key}"}
        if self._claims.get("token_type") not in (None, "refresh"):
            raise UserError("that Label Studio API key is a short-lived access token; pass the personal access "
                            "token itself (Account & Settings > Personal Access Token)")
        if self._access is None or renew:
            resp = self._send("POST", "/api/token/refresh/", json={"refresh": self._key})
            try:
                access = resp.json().get("access") if resp.status_code == 200 else None
            except (ValueError, AttributeError):
                access = None
            if not isinstance(access, str):
                raise UserError(f"Label Studio at {self.url} refused the personal access token "
                                f"({resp.status_code}: {_detail(resp)}); create a new one in Account & Settings")
            self._access = access
        return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One authenticated API call; its JSON answer. A personal access token's access token lasts
        about 5 minutes, so a 401 with one is retried once with a fresh access token."""
        resp = self._send(method, path, headers=self._auth(), **kwargs)
        if resp.status_code == 401 and self._claims is not None:
            resp = self._send(method, path, headers=self._auth(renew=True), **kwargs)
        if resp.status_code in (401, 403):
            detail = _detail(resp)
            hint = ("legacy tokens are turned off for this organization: pass a personal access token instead"
                    if "legacy token" in detail.lower() else "check --api-key (Account & Settings)")
            raise UserError(f"Label Studio at {self.url} refused the API key ({resp.status_code}: {detail}); {hint}")
        if resp.status_code == 404:
            raise UserError(f"Label Studio at {self.url} has no {path} (404): is this a Label Studio server?")
        if resp.status_code >= 400:
            raise UserError(f"Label Studio at {self.url}: {method} {path} failed ({resp.status_code}: {_detail(resp)})")
        try:
            return resp.json()
        except ValueError:
            raise UserError(f"{self.url}{path} answered something that is not JSON: is this a Label Studio "
                            f"server?") from None

    # -- the calls --
    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        project = self.request("POST", "/api/projects", json={"title": title, "label_config": label_config})
        if not isinstance(project, dict) or not isinstance(project.get("id"), int):
            raise UserError(f"Label Studio at {self.url} did not return the new project's id")
        return project

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Tasks with their predictions; Label Studio's import summary (task_count, prediction_count, ...)."""
        summary = self.request("POST", f"/api/projects/{project_id}/import", json=tasks)
        return summary if isinstance(summary, dict) else {}

    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's annotated tasks in Label Studio's JSON export format (what import_review reads)."""
        exported = self.request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})
        if not isinstance(exported, list):
            raise UserError(f"Label Studio at {self.url} exported a {type(exported).__name__}, not a list of tasks")
        return exported

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"


@dataclass(frozen=True)
class PushResult:
    project_id: int
    project_url: str
    n_tasks: int
    n_predictions: int


def iter_run_tasks(run_dir: Path, plan: RunPlan, all_rows: bool = False) -> Iterator[dict]:
    """The run's hard rows (or all) as Label Studio tasks, in row order, read from its store and its input
    ``FINISH_CHUNK_ROWS`` rows at a time."""
    source = open_run_source(plan)
    store = RunStore(RunPaths(run_dir).store)
    try:
        _require_finished(plan, store, source.n_rows)
        for chunk in source.iter_chunks(0, FINISH_CHUNK_ROWS):
            part = store.results_between(chunk.row_ids[0], chunk.row_ids[-1] + 1)
            yield from export_tasks(plan, part, dict(zip(chunk.row_ids, chunk.texts)), all_rows)
    finally:
        store.close()


def write_tasks(tasks: Iterable[dict], out_file: Path) -> int:
    """Tasks as one JSON list (Label Studio's import format), written as they come; returns how many."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for task in tasks:
                fh.write(("," if n else "") + "\n  " + json.dumps(task, ensure_ascii=False))
                n += 1
            fh.write("\n]\n" if n else "]\n")
        tmp.replace(out_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def push_run(run_dir: Path, client: LabelStudioClient, all_rows: bool = False, title: str | None = None,
             chunk_tasks: int = PUSH_CHUNK_TASKS) -> PushResult:
    """Create a Label Studio project for the run (its labelling config) and import its hard rows (or all)
    as tasks with the run's labels as predictions: the first half of the review round trip. The tasks go
    ``chunk_tasks`` to a request, so neither side holds them all."""
    plan = RunPlan.load(run_dir)
    tasks = iter_run_tasks(run_dir, plan, all_rows)
    first = list(itertools.islice(tasks, chunk_tasks))
    if not first:
        raise UserError(f"run {plan.run_id} has no hard rows to review; pass --all to push every row")
    title = title or f"autoannotator {plan.run_id}"[:50]  # Label Studio's limit: 3 to 50 characters
    project = client.create_project(title, labeling_config(plan.task.label_names))
    sent = n_tasks = n_predictions = 0
    chunk = first
    while chunk:
        summary = client.import_tasks(project["id"], chunk)
        sent += len(chunk)
        n_tasks += int(summary.get("task_count", -1))
        n_predictions += int(summary.get("prediction_count", 0))
        if n_tasks != sent:
            raise UserError(f"Label Studio imported {n_tasks} of {sent} tasks into project {project['id']}")
        chunk = list(itertools.islice(tasks, chunk_tasks))
    return PushResult(project["id"], client.project_url(project["id"]), n_tasks, n_predictions)
