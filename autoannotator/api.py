"""The Python API: ``label``, ``plan``, ``bench``, ``resume`` (exposed lazily as ``autoannotator.label`` ...).

The command line is a thin layer over these functions. Data may be a file path (CSV, TSV, JSONL,
JSON, Parquet), a ``pandas.DataFrame``, a list or iterator of dicts, or a ``datasets.Dataset``
(when that package is installed); anything but a path is written into the run directory as
Parquet first, so the run can be resumed from its own copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from autoannotator.config import Settings, load_settings
from autoannotator.errors import UserError
from autoannotator.task import LabelDef, parse_labels

INPUT_FILE = "input.parquet"


class Report(BaseModel):
    """report.json as a model: the main figures typed, every other field kept as it is (``extra``)."""

    model_config = ConfigDict(extra="allow")

    run: dict[str, Any]
    n_samples: int
    label_sources: dict[str, int]
    llm_calls: int
    llm_call_rate: float
    llm_tokens_in: int
    llm_tokens_out: int
    est_cost_usd: float
    all_llm_baseline_cost_usd: float | None = None
    accuracy: float | None = None
    finetune_rounds: list[dict[str, Any]] = []
    model_agreement: dict[str, dict[str, Any]] = {}
    per_batch: list[dict[str, Any]] = []
    estimate: dict[str, Any] | None = None
    warnings: list[str] = []


@dataclass
class LabelResult:
    """What ``label`` and ``resume`` return: the labelled rows, the report and where the run lives.

    ``data`` reads the labelled output file on first use (the command line never pays for it).
    """

    report: Report
    run_dir: Path
    out_path: Path
    _data: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def data(self) -> pd.DataFrame:
        if self._data is None:
            self._data = read_output(self.out_path)
        return self._data

    @property
    def labels(self) -> pd.Series:
        return self.data["label"]

    def __repr__(self) -> str:
        r = self.report
        return (f"LabelResult({r.n_samples} rows, {r.llm_calls} LLM calls ({r.llm_call_rate:.1%}), "
                f"est. ${r.est_cost_usd:.6f}, run_dir={str(self.run_dir)!r})")


@dataclass
class BenchResult:
    rows: list[Any]  # bench.suite.BenchRow, one per strategy
    trajectory: list[dict[str, Any]]
    meta: dict[str, Any]
    out_dir: Path
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


# -- inputs ----------------------------------------------------------------------------------------


def _settings(overrides: Mapping[str, Any], config: str | Path | None) -> Settings:
    """Settings from env < config file < keyword arguments; an unknown keyword is a user error, not ignored."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)} (see autoannotator.config.Settings)")
    return load_settings(dict(overrides), Path(config) if config is not None else None)


def _labels(labels: str | Iterable[str | LabelDef] | None) -> list[LabelDef] | None:
    """``"a,b"``, ``["a", "b:description"]`` or LabelDefs."""
    if labels is None:
        return None
    if isinstance(labels, str):
        return parse_labels(labels)
    out: list[LabelDef] = []
    for item in labels:
        if isinstance(item, LabelDef):
            out.append(item)
            continue
        name, _, desc = str(item).partition(":")
        try:
            out.append(LabelDef(name=name.strip(), description=desc.strip()))
        except ValueError:
            raise UserError(f"bad label {item!r}: a label needs a name of 1 to 64 characters") from None
    return out


def _frame(data: Any) -> pd.DataFrame:
    """A DataFrame from the in-memory inputs the API accepts."""
    if isinstance(data, pd.DataFrame):
        return data
    if type(data).__module__.split(".")[0] == "datasets" and hasattr(data, "to_pandas"):
        return data.to_pandas()
    if isinstance(data, Mapping):
        raise UserError("give a list of dicts (one per row), a DataFrame or a file path, not a single dict")
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        rows = list(data)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise UserError(f"row {bad} is a {type(rows[bad]).__name__}, not a dict of column -> value")
        return pd.DataFrame.from_records(rows)
    raise UserError(f"cannot label a {type(data).__name__}: give a file path, a DataFrame, a list of dicts "
                    "or a datasets.Dataset")


def materialise(data: Any, run_dir: Path) -> Path:
    """The file the run reads: the given path, or the in-memory data written to RUN_DIR/input.parquet."""
    if isinstance(data, (str, Path)):
        return Path(data)
    frame = _frame(data)
    if frame.empty:
        raise UserError("the data has no rows")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / INPUT_FILE
    frame.columns = [str(c) for c in frame.columns]
    try:
        frame.to_parquet(path, index=False)
    except Exception as exc:  # pyarrow cannot store some object columns (mixed types)
        raise UserError(f"cannot store the data as Parquet: {str(exc).splitlines()[0]}") from None
    return path


def read_output(path: str | Path) -> pd.DataFrame:
    """The labelled output file back as a DataFrame (CSV/TSV cells as strings, as written)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".parquet":
        return pd.read_parquet(path)
    if ext in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", dtype=str, keep_default_na=False)
    if ext in (".jsonl", ".ndjson"):
        return pd.DataFrame.from_records([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                          if line.strip()])
    return pd.DataFrame.from_records(json.loads(path.read_text(encoding="utf-8")))


def _verifier_hooks(verifier: str | Callable | None, verifier_info: dict | None) -> dict[str, Any]:
    if verifier is None or verifier == "llm":
        return {}
    if callable(verifier):
        return {"verifier_factory": verifier, "verifier_info": verifier_info}
    if verifier == "human":
        from autoannotator.verify.human import human_hooks  # lazy: it draws with rich

        return human_hooks("human", None, console=None)  # the human verifier opens its own stderr console
    raise UserError(f"verifier takes 'llm', 'human' or a factory (task, run_dir, run_id) -> Verifier, got {verifier!r}")


def _result(report: dict[str, Any], run_dir: Path) -> LabelResult:
    return LabelResult(report=Report.model_validate(report), run_dir=Path(run_dir),
                       out_path=Path(report["run"]["out_path"]))


# -- the API -----------------------------------------------------------------------------------------


def label(data: Any, task: str | None = None, labels: str | Iterable[str | LabelDef] | None = None, *,
          text_column: str | None = None, gold_column: str | None = None, out: str | Path | None = None,
          run_dir: str | Path | None = None, verifier: str | Callable | None = None,
          verifier_info: dict[str, Any] | None = None, config: str | Path | None = None,
          on_progress: Callable[[dict], None] | None = None, **settings: Any) -> LabelResult:
    """Label ``data`` for ``task``; returns the labelled rows, the report and the run directory.

    ``settings`` are :class:`autoannotator.config.Settings` fields (``k=3, beta=40, models=[...],
    llm_base_url=..., sandbox="none"``). ``verifier``: ``"llm"`` (default: the configured endpoint
    or the embedded model), ``"human"`` (the terminal), or a factory ``(task, run_dir, run_id) ->
    Verifier`` of your own (then no LLM is started and ``labels`` must be given).
    """
    from autoannotator import runner
    from autoannotator.run.plan import new_run_id

    cfg = _settings(settings, config)
    if not task:
        raise UserError('say what to label: --task "label these reviews for sentiment" (in Python: task="...")')
    run_id = new_run_id(task)  # one id, so a directory named for the run carries the id its report gives
    run_dir = Path(run_dir) if run_dir is not None else cfg.runs_dir / run_id
    path = materialise(data, run_dir)
    report, used = runner.label(cfg, path, instruction=task, labels=_labels(labels), text_column=text_column,
                                gold_column=gold_column, out_path=Path(out) if out is not None else None,
                                run_dir=run_dir, run_id=run_id, on_progress=on_progress or (lambda event: None),
                                **_verifier_hooks(verifier, verifier_info))
    return _result(report, used)


def resume(run_dir: str | Path, *, out: str | Path | None = None, verifier: str | Callable | None = None,
           verifier_info: dict[str, Any] | None = None, config: str | Path | None = None,
           on_progress: Callable[[dict], None] | None = None, switch_llm: bool = False,
           **settings: Any) -> LabelResult:
    """Continue a stopped run (or re-read a finished one): every row comes out once, no answer is paid twice.

    The run keeps its own LLM; ``switch_llm=True`` goes on with the one configured now (the report lists both).
    """
    from autoannotator import runner

    cfg = _settings(settings, config)
    report, used = runner.label(cfg, None, run_dir=Path(run_dir), resume=True,
                                out_path=Path(out) if out is not None else None,
                                on_progress=on_progress or (lambda event: None), switch_llm=switch_llm,
                                **_verifier_hooks(verifier, verifier_info))
    return _result(report, used)


def plan(data: Any, task: str, labels: str | Iterable[str | LabelDef] | None = None, *,
         text_column: str | None = None, verifier: str = "llm", pilot_rows: int | None = None,
         config: str | Path | None = None, **settings: Any):
    """Estimate a run's LLM calls, tokens, cost and wall time without labelling anything.

    The models are the ones the run would use (``models=[...]``, else a plan cached for this task
    and data, else the offline default); they vote on a pilot sample, and the run's routing rule
    says how many rows would go to the verifier. Returns a :class:`autoannotator.plan_estimate.PlanEstimate`.
    """
    import tempfile

    from autoannotator.plan_estimate import DEFAULT_PILOT_ROWS, estimate_for_data

    cfg = _settings(settings, config)
    parsed = _labels(labels)
    if not parsed:
        raise UserError("plan needs the label set: labels=['positive', 'negative'] (--labels)")
    with tempfile.TemporaryDirectory(prefix="aa-plan-") as scratch:
        path = materialise(data, Path(scratch))
        return estimate_for_data(cfg, path, task, parsed, text_column=text_column, verifier=verifier,
                                 pilot_rows=pilot_rows or DEFAULT_PILOT_ROWS)


def bench(data: Any, task: str, gold_column: str, labels: str | Iterable[str | LabelDef] | None = None, *,
          text_column: str | None = None, verifier: str = "llm", epsilons: Iterable[float] = (1e-6,),
          betas: Iterable[int] | None = None, out_dir: str | Path = "bench-results", trajectory: bool = True,
          include_llm_only: bool = True, config: str | Path | None = None,
          routings: Iterable[str] = ("paper", "calibrated"), budgets: Iterable[float] = (),
          on_progress: Callable[[str], None] | None = None, command: str | None = None,
          **settings: Any) -> BenchResult:
    """Each SLM alone, their majority vote, the LLM alone and AutoAnnotator on labelled data (``bench`` CLI).

    ``verifier``: ``"llm"``, ``"human"`` or ``"simulated:P"`` (a seeded stand-in right with
    probability P; every table that uses it says so). Writes results.json/.md and tradeoff.png.
    """
    from autoannotator.benchmark.output import write_results
    from autoannotator.benchmark.suite import run_bench

    cfg = _settings(settings, config)
    out_dir = Path(out_dir)
    path = materialise(data, out_dir)
    rows, traj, meta = run_bench(cfg, path, instruction=task, gold_column=gold_column, labels=_labels(labels),
                                 text_column=text_column, verifier=verifier, epsilons=list(epsilons),
                                 betas=list(betas) if betas is not None else [cfg.beta], out_dir=out_dir,
                                 trajectory=trajectory, include_llm_only=include_llm_only,
                                 routings=list(routings), budgets=list(budgets),
                                 on_progress=on_progress or (lambda msg: None))
    meta["command"] = command or f"autoannotator.bench({str(path)!r}, task={task!r}, verifier={verifier!r})"
    write_results(rows, traj, meta, out_dir)
    table = pd.DataFrame([r.model_dump() for r in rows])
    return BenchResult(rows=rows, trajectory=traj, meta=meta, out_dir=out_dir, table=table)
