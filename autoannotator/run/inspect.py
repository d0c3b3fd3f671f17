"""Reading runs back: find a run by id, how far it got, one row's text and verifier answer, its code.

Everything here reads the run directory without changing it; the CLI (``runs ...``) and the chat's
tools both call these, so `autoannotator runs sample` and the chat's `explain_row` cannot disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoannotator.data import load_dataset
from autoannotator.errors import UserError
from autoannotator.run.cache import HUMAN, AnswerCache
from autoannotator.run.output import OUTPUT_COLUMNS
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import RunPlan, open_run_source
from autoannotator.run.store import RunStore
from autoannotator.task import LabelSource


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """RUN as a run directory path, a run id under runs_dir, or an unambiguous prefix (else part) of one."""
    for candidate in (Path(ref), runs_dir / ref):
        if RunPaths(candidate).is_run():
            return candidate
    runs = list_runs(runs_dir)
    found = [p for p in runs if p.name.startswith(ref)] or [p for p in runs if ref in p.name]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"'{ref}' matches {len(found)} runs ({', '.join(p.name for p in found[:4])}"
                        f"{', ...' if len(found) > 4 else ''}); give more of the id")
    raise UserError(f"no run '{ref}' in {runs_dir} (see `autoannotator runs list`)")


def list_runs(runs_dir: Path) -> list[Path]:
    """Every run directory under ``runs_dir``, oldest (by name: ids start with their time) first."""
    return sorted(p for p in runs_dir.iterdir() if RunPaths(p).is_run()) if runs_dir.is_dir() else []


def read_report(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(RunPaths(run_dir).report_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet (or cut short by a crash while written): not finished
        return None


class RunState(BaseModel):
    done: int
    total: int | None
    finished: bool
    report: dict[str, Any] | None
    llm_calls: int | None
    tokens_in: int = 0
    tokens_out: int = 0
    label_sources: dict[str, int] = {}
    pool_size: int = 0


def run_state(run_dir: Path, plan: RunPlan) -> RunState:
    """Rows done and total, whether the run finished, its report (if any) and what it paid so far."""
    paths = RunPaths(run_dir)
    report = read_report(run_dir)
    stats = RunStore.read_stats(paths.store)
    total = report["n_samples"] if report else _checkpoint_rows(paths.checkpoints, plan.run_id)
    usage = AnswerCache(paths.answers, create=False).ledger(plan.run_id)
    calls = report["llm_calls"] if report else usage.calls
    return RunState(done=stats["results"], total=total, finished=report is not None and stats["results"] == total,
                    report=report, llm_calls=calls,
                    tokens_in=report["llm_tokens_in"] if report else usage.tokens_in,
                    tokens_out=report["llm_tokens_out"] if report else usage.tokens_out,
                    label_sources=stats["label_sources"], pool_size=stats["pool"])


def _checkpoint_rows(checkpoints: Path, run_id: str) -> int | None:
    # Before the report exists, only the graph's checkpoint knows the row count without reading the data file.
    if not checkpoints.is_file():
        return None
    from langgraph.checkpoint.sqlite import SqliteSaver

    try:
        with SqliteSaver.from_conn_string(str(checkpoints)) as saver:
            found = saver.get_tuple({"configurable": {"thread_id": run_id}})
    except Exception:  # a damaged checkpoint only costs the total in a listing
        return None
    return found.checkpoint["channel_values"].get("n_rows") if found else None


def row_text(plan: RunPlan, row: int) -> tuple[str, str | None]:
    """Text and gold from the data file; if it is gone or changed, the text from the run's output file."""
    try:
        found = open_run_source(plan).chunk(row, 1)
        if not found.row_ids:
            raise UserError(f"row {row} is not in the data of run {plan.run_id}")
        return found.texts[0], (found.gold[0] if found.gold else None)
    except UserError as first:
        if not Path(plan.out_path).is_file():
            raise first from None
        ds = load_dataset(plan.out_path, plan.task.text_column, None)
        frame = ds.frame
        # write_labelled renames an input column that clashes with its own output columns.
        gold_col = next((c for c in (plan.gold_column, f"input_{plan.gold_column}") if c in frame.columns
                         and c not in OUTPUT_COLUMNS), None)
        return ds.texts[row], (str(frame[gold_col].iloc[row]) or None) if gold_col else None


class RowAnswer(BaseModel):
    """What the verifier said about one row, and who paid for it."""

    kind: str  # "not_asked", "skipped_by_human", "failed" (asked, no valid label), "answered"
    note: str = ""
    label: str | None = None
    who: str | None = None  # "human" or "LLM <model id>"
    paid_by_this_run: bool | None = None
    paid_by_run: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_estimated: bool = False

    def paid_line(self) -> str:
        paid = "answered for this run" if self.paid_by_this_run else f"from the cache (paid by run {self.paid_by_run})"
        tokens = "" if self.who == HUMAN else \
            f", tokens in/out {self.tokens_in}/{self.tokens_out}{' (estimated)' if self.tokens_estimated else ''}"
        return paid + tokens

    def line(self) -> str:
        if self.kind != "answered":
            return self.note
        if self.who is None:
            return f"{self.label!r} {self.note}"
        return f"{self.who}: {self.label!r} — {self.paid_line()}"


def row_answer(run_dir: Path, plan: RunPlan, max_text_chars: int, text: str, rec: dict) -> RowAnswer:
    """The verifier's answer for the row, from the store and the run's answer cache (who paid, tokens)."""
    from autoannotator.verify.human import human_key
    from autoannotator.verify.llm import prompt_key
    from autoannotator.verify.prompt import VerifyPrompt

    labels = plan.task.label_names
    cache = AnswerCache(RunPaths(run_dir).answers, create=False)
    hkey = human_key(text, labels)
    if cache.skipped([hkey]):
        return RowAnswer(kind="skipped_by_human", note="the human skipped this row twice: the models' majority was kept")
    if rec["label_source"] == LabelSource.LLM_FAILED:
        return RowAnswer(kind="failed", note="asked, but no valid label came back: the label from the models' votes was kept "
                                             "(`autoannotator runs retry-failed` asks again)")
    if rec["llm_label"] is None:
        return RowAnswer(kind="not_asked", note="not asked (the models agreed)"
                         if rec["label_source"] != LabelSource.SKIPPED_EMPTY else "not asked (empty)")
    messages = VerifyPrompt(plan.task, max_text_chars).messages(text)
    # The cache is keyed by prompt: rebuild the key for each verifier that answered in this run dir.
    keys = [hkey if model_id == HUMAN else prompt_key(model_id, labels, messages) for model_id in cache.model_ids()]
    hits = cache.answers(keys)
    if not hits:
        return RowAnswer(kind="answered", label=rec["llm_label"],
                         note="(no cache record: the verifier keeps none, e.g. a simulated one)")
    hit = hits[0]
    return RowAnswer(kind="answered", label=rec["llm_label"], who=HUMAN if hit.model_id == HUMAN else f"LLM {hit.model_id}",
                     paid_by_this_run=hit.paid_by_run == plan.run_id, paid_by_run=hit.paid_by_run,
                     tokens_in=hit.tokens_in, tokens_out=hit.tokens_out, tokens_estimated=hit.tokens_estimated)


def code_versions(folder: Path) -> list[tuple[int, Path]]:
    """``v<N>.py`` files of one deploy folder, by version."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"v(\d+)\.py", p.name))]
    return sorted(found)


def deploy_folders(run_dir: Path) -> list[Path]:
    deploy = RunPaths(run_dir).deploy
    return sorted(p for p in deploy.iterdir() if p.is_dir()) if deploy.is_dir() else []
