"""``probe_models``: try candidate SLMs on 20-50 of the user's own texts, in the sandbox, before choosing k.

Hub popularity says little about a model's fit to THIS data. The probe shows, per candidate: does
it load here, which task labels can it vote for, how its votes spread, how often it abstains, and
(when the LLM labelled the same texts) how often it agrees with the LLM. ``rank_by_probe`` turns
that into a choice; ``rank_by_downloads`` is the popularity baseline it is compared with.

The probe program is the vetted deployment template itself, run once with ``--smoke N
--one-at-a-time`` (each candidate loaded, run and freed in turn: bounded memory however many are
probed). Model code runs only in the sandbox, never in this process. Files:
``RUN/deploy/probe/probe<N>.py``, ``probe<N>.smoke.json`` (the run) and ``probe<N>.json`` (the report).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from autoannotator.sandbox import Sandbox, SandboxError, SandboxLimits
from autoannotator.deploy.proxy import DeploymentSpec, ModelDeployment, stage_work_dir
from autoannotator.deploy.codegen import SMOKE_REPORT, render_deployment

MAX_SAMPLES = 50
MAX_REPORT_BYTES = 8 << 20  # written by the sandboxed program: read only a bounded amount
PROBE_LIMITS = SandboxLimits(memory_mb=4096, timeout_s=600)


class CandidateProbe(BaseModel):
    spec: str
    loaded: bool
    error: str | None = Field(None, description="one line: why it could not load or run")
    native_labels: list[str] = Field(default_factory=list)
    coverage: list[str] = Field(default_factory=list, description="task labels it can vote for")
    distribution: dict[str, int] = Field(default_factory=dict, description="votes per task label, plus 'abstain'")
    abstain_rate: float | None = None
    agreement_with_llm: float | None = Field(
        None, description="share of the LLM-labelled texts where it voted the LLM's label (abstaining disagrees)")
    n_compared: int = 0
    load_seconds: float | None = None
    seconds: float | None = Field(None, description="time to label the sample texts")


class ProbeReport(BaseModel):
    task_labels: list[str]
    n_samples: int
    backend: str
    seconds: float
    candidates: list[CandidateProbe]
    program: str | None = None
    error: str | None = None


RESULT_MODEL = ProbeReport


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return exc.errors()[0]["msg"].removeprefix("Value error, ")[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _summarise(spec: str, entry: dict[str, Any], labels: list[str], llm: list[str | None] | None) -> CandidateProbe:
    if not entry.get("loaded") or entry.get("error") or not isinstance(entry.get("votes"), list):
        return CandidateProbe(spec=spec, loaded=bool(entry.get("loaded")), error=str(entry.get("error") or "no votes"))
    votes = [v if isinstance(v, int) and -1 <= v < len(labels) else -1 for v in entry["votes"]]
    dist = {t: sum(v == i for v in votes) for i, t in enumerate(labels)} | {"abstain": votes.count(-1)}
    agree, compared = None, 0
    if llm is not None:
        pairs = [(v, gold) for v, gold in zip(votes, llm) if gold in labels]
        compared = len(pairs)
        agree = round(sum(v == labels.index(g) for v, g in pairs) / compared, 4) if compared else None
    return CandidateProbe(
        spec=spec, loaded=True, native_labels=[str(x) for x in entry.get("native_labels", [])],
        coverage=[t for t in labels if t in (entry.get("covers") or [])], distribution=dist,
        abstain_rate=round(votes.count(-1) / len(votes), 4) if votes else None, agreement_with_llm=agree,
        n_compared=compared, load_seconds=entry.get("load_seconds"), seconds=entry.get("seconds"))


def _read_untrusted(path: Path) -> str | None:
    """A regular file the sandbox wrote, never through a link it planted, and only so much of it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        data = fh.read(MAX_REPORT_BYTES + 1)
    return data.decode("utf-8", "replace") if len(data) <= MAX_REPORT_BYTES else None


def _read_summary(report_file: Path, stdout: str) -> dict[str, Any]:
    """Per-model entries: the full report file (label lists included), else stdout's last line."""
    texts = [t for t in [_read_untrusted(report_file)] if t is not None]
    texts += [ln for ln in stdout.splitlines() if ln.strip()][-1:]
    for text in texts:
        try:
            models = json.loads(text).get("models")
        except (ValueError, AttributeError):
            continue
        if isinstance(models, dict):
            return models
    return {}


def probe_models(candidates: Sequence[str], texts: Sequence[str], task_labels: Sequence[str], sandbox: Sandbox,
                 run_dir: Path, llm_labels: Sequence[str | None] | None = None, *,
                 limits: SandboxLimits = PROBE_LIMITS) -> ProbeReport:
    t0 = time.monotonic()
    labels = list(task_labels)
    texts = [t if isinstance(t, str) else "" for t in texts][:MAX_SAMPLES]
    if llm_labels is not None and len(llm_labels) < len(texts):
        raise ValueError(f"llm_labels has {len(llm_labels)} entries for {len(texts)} texts")
    llm = list(llm_labels)[:len(texts)] if llm_labels is not None else None
    specs = list(dict.fromkeys(c.strip() for c in candidates if c.strip()))
    invalid: dict[str, str] = {}
    valid: list[ModelDeployment] = []
    for spec in specs:
        try:
            valid.append(ModelDeployment(spec=spec))
        except ValidationError as exc:
            invalid[spec] = _one_line(exc)
    out = Path(run_dir) / "deploy" / "probe"
    out.mkdir(parents=True, exist_ok=True)
    n = 1 + sum(1 for _ in out.glob("probe*.json") if not _.name.endswith(".smoke.json"))
    summary: dict[str, Any] = {}
    error, program = None, None
    if valid:
        program = out / f"probe{n}.py"
        program.write_text(render_deployment(DeploymentSpec(task_labels=labels, models=valid)))
        work = Path(tempfile.mkdtemp(prefix="aa-probe-"))
        try:
            stage_work_dir(work, DeploymentSpec(task_labels=labels, models=valid), texts)
            result = sandbox.run(program, work, ["--smoke", str(len(texts)), "--one-at-a-time"], limits)
            (out / f"probe{n}.smoke.json").write_text(result.model_dump_json(indent=1))
            summary = _read_summary(work / SMOKE_REPORT, result.stdout)
            if not summary:
                error = result.killed_reason or (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
        except SandboxError as exc:
            error = str(exc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    probes = [CandidateProbe(spec=s, loaded=False, error=invalid[s]) if s in invalid
              else _summarise(s, summary.get(s) or {"error": error or "not in the probe's output"}, labels, llm)
              for s in specs]
    report = ProbeReport(task_labels=labels, n_samples=len(texts), backend=sandbox.name,
                         seconds=round(time.monotonic() - t0, 3), candidates=probes,
                         program=str(program) if program else None, error=error)
    (out / f"probe{n}.json").write_text(report.model_dump_json(indent=1))
    return report


def rank_by_probe(report: ProbeReport, k: int) -> list[str]:
    """The k best usable candidates: agreement with the LLM first, then coverage, then fewer abstentions."""
    usable = [(i, c) for i, c in enumerate(report.candidates) if c.loaded and c.coverage]
    usable.sort(key=lambda ic: (-(ic[1].agreement_with_llm if ic[1].agreement_with_llm is not None else -1.0),
                                -len(ic[1].coverage), ic[1].abstain_rate or 0.0, ic[0]))
    return [c.spec for _, c in usable[:k]]


def rank_by_downloads(candidates_with_downloads: Iterable[tuple[str, int | None] | Mapping[str, Any]],
                      k: int) -> list[str]:
    """The popularity baseline: most downloads first (unknown counts last), ties in input order."""
    rows = [(c["spec"], c.get("downloads")) if isinstance(c, Mapping) else (c[0], c[1])
            for c in candidates_with_downloads]
    ordered = sorted(enumerate(rows), key=lambda ir: (-(ir[1][1] or 0), ir[0]))
    return [spec for _, (spec, _) in ordered[:k]]


