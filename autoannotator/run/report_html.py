"""report.html: the run's report as one self-contained page to look at.

Everything is inline (CSS, SVG charts drawn here), so the file opens anywhere without a network and
without a JavaScript library. Every string that came from outside (the task, label names, model
specs, warnings, file paths) goes through :func:`_e` before it reaches the page.

The page reads the report dict (``report.json``). Two fields are computed for it from the run
store's result records by the functions below: ``per_batch`` (:func:`per_batch`) and, with gold
labels, ``confusion_by_source`` (:func:`confusion_by_source`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from autoannotator.plan_estimate import spent_figures
from autoannotator.run.report_decisions import decision_view
from autoannotator.run.tally import NO_LABEL, RowTally  # NO_LABEL: the page's name for it too

_PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"]


# -- the fields the page needs, computed from the run store's records ----------------------------------


def per_batch(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows and verifier answers per batch, in batch order: ``[{batch, rows, llm_calls, by_source}]``.

    ``llm_calls`` counts the batch's rows that the verifier answered (``llm_label`` set; records
    without that key fall back to ``label_source == "llm_verified"``). A duplicate text answered
    from the cache counts here too, so on a file with repeated texts the sum can exceed the
    report's paid ``llm_calls``.
    """
    return RowTally([]).add_all(results).per_batch()


def finetune_batches(batches: Sequence[dict[str, Any]], beta: int, n_rounds: int) -> list[int]:
    """The batch after which each fine-tuning round ran, replaying the β rule on the per-batch counts.

    The annotation graph fine-tunes once ``pool - pool_at_last_finetune >= beta`` after a batch's
    verified rows join the pool; the replay stops at the ``n_rounds`` the run recorded (a run
    without a trainable model records none).
    """
    marks: list[int] = []
    pool = last = 0
    for b in batches:
        pool += int(b["llm_calls"])
        if len(marks) < n_rounds and beta > 0 and pool - last >= beta:
            marks.append(int(b["batch"]))
            last = pool
    return marks


def confusion_by_source(results: Iterable[dict[str, Any]], gold: Sequence[str | None],
                        labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per label source: ``{labels, columns, matrix}`` with ``matrix[i][j]`` = rows of gold ``labels[i]``
    labelled ``columns[j]``. Rows whose gold label is outside the label set are not scored (as in
    the report's accuracy); a row left without a label falls in the last column, ``(no label)``.
    """
    return RowTally(labels, with_gold=True).add_all(results, gold).confusion_by_source()


# -- small helpers -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape for HTML text and attribute values alike (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value.is_integer() or abs(value) >= 100:
            return f"{round(value):,}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return _e(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.6f}"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``: 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _ticks(top: float, n: int = 4) -> list[float]:
    return [top * i / n for i in range(n + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.2f}"


# -- charts (inline SVG) ---------------------------------------------------------------------------------


def batch_chart(batches: Sequence[dict[str, Any]], marks: Sequence[int] = (), width: int = 1040,
                height: int = 230) -> str:
    """Bars per batch: all rows (grey) and the rows sent to the verifier (blue); dashed lines at fine-tuning rounds."""
    left, right, top, bottom = 48, 16, 16, 40
    pw, ph = width - left - right, height - top - bottom
    n = len(batches)
    ymax = _nice_max(max((b["rows"] for b in batches), default=1))
    slot = pw / max(n, 1)
    bar = max(slot * 0.8, 0.5)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'><title>LLM calls per batch</title>']
    for t in _ticks(ymax):
        y = top + ph - t / ymax * ph
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt_tick(t)}</text>')
    index = {b["batch"]: i for i, b in enumerate(batches)}
    for i, b in enumerate(batches):
        x = left + i * slot + (slot - bar) / 2
        h_rows = b["rows"] / ymax * ph
        h_llm = b["llm_calls"] / ymax * ph
        tip = f'batch {b["batch"]}: {b["llm_calls"]} of {b["rows"]} rows to the verifier'
        parts.append(f'<g><title>{_e(tip)}</title>'
                     f'<rect x="{x:.2f}" y="{top + ph - h_rows:.2f}" width="{bar:.2f}" height="{h_rows:.2f}" class="rows"/>'
                     f'<rect x="{x:.2f}" y="{top + ph - h_llm:.2f}" width="{bar:.2f}" height="{h_llm:.2f}" class="llm"/>'
                     '</g>')
    for r, m in enumerate(marks, start=1):
        if m not in index:
            continue
        x = left + (index[m] + 1) * slot
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="mark"/>'
                     f'<text x="{x + 3:.1f}" y="{top + 11}" class="marklabel">FT {r}</text>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):
        x = left + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">'
                     f'{_e(batches[i]["batch"])}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" class="axis" text-anchor="middle">batch</text>'
                 f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axisline"/></svg>')
    return "".join(parts)


def trajectory_chart(rounds: Sequence[dict[str, Any]], width: int = 1040, height: int = 230) -> str:
    """Held-out balanced accuracy per round and model: after (solid), before (dashed), needed to vote (dotted)."""
    left, right, top, bottom = 48, 200, 16, 40
    pw, ph = width - left - right, height - top - bottom
    by_model: dict[str, list[dict[str, Any]]] = {}
    for rec in rounds:
        by_model.setdefault(str(rec.get("model")), []).append(rec)
    max_round = max((int(r.get("round") or 0) for r in rounds), default=1)
    lo_round = min((int(r.get("round") or 0) for r in rounds), default=1)
    span = max(max_round - lo_round, 1)

    def x_of(rnd: int) -> float:
        return left + (rnd - lo_round) / span * pw if max_round > lo_round else left + pw / 2

    def y_of(v: float) -> float:
        return top + ph - v * ph

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'><title>Held-out balanced accuracy per fine-tuning round</title>']
    for t in _ticks(1.0, 5):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y_of(t):.1f}" y2="{y_of(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y_of(t) + 4:.1f}" class="tick" text-anchor="end">{t:.1f}</text>')
    for rnd in range(lo_round, max_round + 1):
        parts.append(f'<text x="{x_of(rnd):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{rnd}</text>')
    legend_y = top + 8
    for i, (model, recs) in enumerate(sorted(by_model.items())):
        color = _PALETTE[i % len(_PALETTE)]
        recs = sorted(recs, key=lambda r: int(r.get("round") or 0))
        for key, cls in (("holdout_balanced_acc_after", "after"), ("holdout_balanced_acc_before", "before"),
                         ("holdout_required", "required")):
            pts = [(x_of(int(r["round"])), y_of(float(r[key]))) for r in recs if r.get(key) is not None]
            if len(pts) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                parts.append(f'<polyline points="{path}" class="{cls}" stroke="{color}"/>')
            if cls != "required":
                for (x, y), r in zip(pts, [r for r in recs if r.get(key) is not None]):
                    tip = (f"{model}, round {r['round']}: {cls} {float(r[key]):.3f}"
                           + ("" if cls == "before" else f"; kept: {r.get('accepted')}, votes: {r.get('votes')}"))
                    fill = color if cls == "after" else "white"
                    parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{color}">'
                                 f'<title>{_e(tip)}</title></circle>')
        parts.append(f'<rect x="{left + pw + 16}" y="{legend_y - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + pw + 30}" y="{legend_y + 1}" class="legend">{_e(model)}</text>')
        legend_y += 18
    for label, cls in (("after the round", "after"), ("before the round", "before"), ("needed to vote", "required")):
        parts.append(f'<line x1="{left + pw + 16}" x2="{left + pw + 40}" y1="{legend_y - 3}" y2="{legend_y - 3}" '
                     f'class="{cls}" stroke="#555"/><text x="{left + pw + 46}" y="{legend_y + 1}" class="legend">'
                     f'{label}</text>')
        legend_y += 18
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" class="axis" text-anchor="middle">fine-tuning round</text>'
                 f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axisline"/></svg>')
    return "".join(parts)


def agreement_chart(agreement: dict[str, dict[str, Any]], width: int = 1040) -> str:
    """Per model, two horizontal bars: how often it voted (coverage) and how often that vote was the final label."""
    left, bar_h, gap = 260, 14, 14
    pw = width - left - 70
    models = list(agreement.items())
    height = 24 + len(models) * (2 * bar_h + gap) + 10
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'><title>Per-model coverage and agreement</title>']
    for t in _ticks(1.0, 4):
        x = left + t * pw
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="14" y2="{height - 10}" class="grid"/>'
                     f'<text x="{x:.1f}" y="10" class="tick" text-anchor="middle">{t:.2f}</text>')
    y = 24
    for name, stats in models:
        parts.append(f'<text x="{left - 8}" y="{y + bar_h + 4}" class="legend" text-anchor="end">{_e(name)}</text>')
        for key, cls in (("coverage", "rows"), ("agreement", "llm")):
            v = stats.get(key)
            w = (float(v) if v is not None else 0.0) * pw
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" class="{cls}">'
                         f'<title>{_e(name)} {key}: {_num(v, 4)}</title></rect>'
                         f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" class="tick">{key} {_num(v, 3)}</text>')
            y += bar_h
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def confusion_table(entry: dict[str, Any]) -> str:
    """One confusion matrix as a table; a cell's shade is its share of its gold row (diagonal green, off red)."""
    cols, labels, matrix = entry["columns"], entry["labels"], entry["matrix"]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for i, (name, row) in enumerate(zip(labels, matrix)):
        total = sum(row) or 1
        cells = []
        for j, count in enumerate(row):
            share = count / total
            hue = 145 if i == j else 0
            style = f"background:hsla({hue},65%,45%,{0.08 + 0.6 * share:.2f})" if count else ""
            cells.append(f'<td style="{style}" title="{_e(f"gold {name}, labelled {cols[j]}: {count}")}">{count}</td>')
        body.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}<td class='total'>{sum(row)}</td></tr>")
    n = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(labels)) if i < len(cols))
    acc = f"{correct / n:.3f}" if n else "–"
    return (f'<table class="confusion"><caption>{n} rows, accuracy {acc}</caption><thead><tr><th>gold \\ label</th>'
            f"{head}<th>total</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


# -- the page ------------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--blue:#2563eb;--grey:#cbd5e1}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#f8fafc}main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}section{background:white;border:1px solid var(--line);
border-radius:8px;padding:16px 20px;margin:16px 0}.muted{color:var(--muted)}.cards{display:grid;
grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px}.card{border:1px solid var(--line);border-radius:8px;
padding:10px 14px}.card .v{font-size:22px;font-weight:600}.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;
letter-spacing:.04em}table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid var(--line);padding:4px 8px;
text-align:right}th{background:#f1f5f9;text-align:left}caption{text-align:left;color:var(--muted);padding:2px 0}
.chart{max-width:100%;height:auto}.grid{stroke:var(--line)}.axisline{stroke:#94a3b8}.tick{font-size:11px;fill:var(--muted)}
.axis{font-size:12px;fill:var(--muted)}.legend{font-size:12px;fill:var(--fg)}.rows{fill:var(--grey)}.llm{fill:var(--blue)}
.mark{stroke:#d97706;stroke-dasharray:4 3}.marklabel{font-size:11px;fill:#d97706}
.after{fill:none;stroke-width:2.5}.before{fill:none;stroke-width:1.5;stroke-dasharray:6 4}
.required{fill:none;stroke-width:1;stroke-dasharray:2 3}.warn{background:#fffbeb;border-color:#fcd34d}
.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}.confusions{display:flex;flex-wrap:wrap;gap:24px}
.confusions h3{font-size:14px;margin:4px 0}td.total{color:var(--muted)}
"""


def _card(key: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div>'
            f'<div class="muted">{sub}</div></div>')


def _headline(report: dict[str, Any]) -> str:
    n = report.get("n_samples", 0)
    cards = [_card("rows labelled", _e(n), ", ".join(f"{_e(k)} {_e(v)}" for k, v in
                                                   (report.get("label_sources") or {}).items()))]
    cards.append(_card("LLM calls", _e(report.get("llm_calls", 0)),
                       f"{_pct(report.get('llm_call_rate'))} of the rows"))
    baseline = report.get("all_llm_baseline_cost_usd")
    ratio = report.get("cost_ratio_to_all_llm")
    prices = (report.get("price_table") or {}).get("model", "")
    cards.append(_card("estimated cost", _e(_usd(report.get("est_cost_usd"))),
                       f"LLM-only: {_e(_usd(baseline))}" + (f" ({_pct(ratio)} of it)" if ratio is not None else "")
                       + f"<br>at {_e(prices)} prices"))
    if report.get("accuracy") is not None:
        cards.append(_card("accuracy vs gold", _num(report["accuracy"], 4), f"over {_e(report.get('n_scored'))} rows"))
    expected = (report.get("decision") or {}).get("expected_accuracy")
    if expected is not None:
        cards.append(_card("expected accuracy", _num(expected, 4), "the final posterior's mean confidence, no gold "
                                                                   "used (the audit below checks it)"))
    est = report.get("estimate")
    if isinstance(est, dict) and est.get("llm_calls"):
        calls = est["llm_calls"]
        spent = calls.get("spent", spent_figures(report)["llm_calls"])
        cards.append(_card("planned LLM calls", _num(calls.get("expected")),
                           f"range {_num(calls.get('low'))}–{_num(calls.get('high'))}; "
                           f"spent {_e(spent)}, the audit included"))
    return f'<section id="headline"><h2>Headline</h2><div class="cards">{"".join(cards)}</div></section>'


def _batches_section(report: dict[str, Any]) -> str:
    batches = report.get("per_batch") or []
    if not batches:
        return ('<section id="per-batch"><h2>LLM calls per batch</h2>'
                '<p class="muted">No per-batch record in this report.</p></section>')
    n_rounds = int(report.get("n_finetune_rounds") or 0)
    marks = finetune_batches(batches, int((report.get("settings") or {}).get("beta") or 0), n_rounds)
    total_rows = sum(b["rows"] for b in batches)
    total_calls = sum(b["llm_calls"] for b in batches)
    legend = ('<span class="swatch" style="background:var(--grey)"></span>rows in the batch'
              '<span class="swatch" style="background:var(--blue)"></span>rows the verifier answered'
              + ('<span class="swatch" style="background:#d97706"></span>fine-tuning round' if marks else ""))
    return (f'<section id="per-batch"><h2>LLM calls per batch</h2><p class="muted">{len(batches)} batches, '
            f'{total_calls} of {total_rows} rows to the verifier. {legend}</p>{batch_chart(batches, marks)}</section>')


def _trajectory_section(report: dict[str, Any]) -> str:
    rounds = report.get("finetune_rounds") or []
    if not rounds:
        return ('<section id="trajectory"><h2>The student, round by round</h2><p class="muted">No fine-tuning round '
                'ran (the pool of verified samples never reached β, or no model is trainable).</p></section>')
    rows = "".join(
        f"<tr><td>{_e(r.get('round'))}</td><th>{_e(r.get('model'))}</th><td>{_e(r.get('n_train'))}</td>"
        f"<td>{_e(r.get('n_holdout'))}</td><td>{_num(r.get('holdout_balanced_acc_before'), 3)}</td>"
        f"<td>{_num(r.get('holdout_balanced_acc_after'), 3)}</td><td>{_num(r.get('holdout_required'), 3)}</td>"
        f"<td>{_e(r.get('accepted'))}</td><td>{_e(r.get('votes'))}</td></tr>" for r in rounds)
    return ('<section id="trajectory"><h2>The student, round by round</h2><p class="muted">Balanced accuracy on the '
            'held-out slice of the verified pool, before and after each round; a round is kept only if it does at '
            'least as well, and the model votes once it clears the dotted line.</p>' + trajectory_chart(rounds)
            + '<table><thead><tr><th>round</th><th>model</th><th>train</th><th>holdout</th><th>before</th>'
              f'<th>after</th><th>needed to vote</th><th>kept</th><th>votes</th></tr></thead><tbody>{rows}</tbody>'
              '</table></section>')


def _agreement_section(report: dict[str, Any]) -> str:
    agreement = report.get("model_agreement") or {}
    if not agreement:
        return '<section id="agreement"><h2>Per-model agreement</h2><p class="muted">No model recorded.</p></section>'
    return ('<section id="agreement"><h2>Per-model agreement</h2><p class="muted">Coverage: the share of labelled '
            'rows the model voted on. Agreement: the share of its votes that match the final label.</p>'
            + agreement_chart(agreement) + "</section>")


def _decisions_section(report: dict[str, Any]) -> str:
    view = decision_view(report)
    if view is None:
        return ""
    items = "".join(f"<li>{_e(b)}</li>" for b in view.bullets)
    tables = "".join(f'<p class="muted">{_e(t.caption)}</p>{_text_table(t.header, t.rows)}' for t in view.tables)
    return f'<section id="decisions"><h2>Decisions</h2><ul>{items}</ul>{tables}</section>'


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of strings, every cell escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion_section(report: dict[str, Any]) -> str:
    conf = report.get("confusion_by_source") or {}
    if "accuracy" not in report and not conf:
        return ""
    blocks = "".join(f"<div><h3>{_e(src)}</h3>{confusion_table(entry)}</div>" for src, entry in conf.items())
    return ('<section id="confusion"><h2>Against gold: confusion per label source</h2><p class="muted">Rows: the gold '
            'label; columns: the label the run gave.</p>'
            + (f'<div class="confusions">{blocks}</div>' if blocks else '<p class="muted">No scored row.</p>')
            + "</section>")


def _estimate_section(report: dict[str, Any]) -> str:
    est = report.get("estimate")
    if not isinstance(est, dict):
        return ""
    spent = spent_figures(report)
    rows = []
    for key, label, digits in (("llm_calls", "LLM calls", 6), ("tokens", "tokens", 6), ("cost_usd", "cost (USD)", 6),
                               ("wall_s", "wall time (s)", 1)):
        r = est.get(key) or {}
        value = r.get("spent", spent[key])
        rows.append(f"<tr><th>{label}</th><td>{_num(r.get('low'), digits)}</td><td>{_num(r.get('expected'), digits)}"
                    f"</td><td>{_num(r.get('high'), digits)}</td><td>{_num(value, digits)}</td></tr>")
    notes = "".join(f"<li>{_e(a)}</li>" for a in est.get("assumptions", []))
    return ('<section id="estimate"><h2>The plan\'s estimate and what was spent, the audit included</h2><table><thead><tr><th></th>'
            '<th>low</th><th>expected</th><th>high</th><th>spent</th></tr></thead><tbody>' + "".join(rows)
            + f"</tbody></table><ul class='muted'>{notes}</ul></section>")


def _warnings_section(report: dict[str, Any]) -> str:
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f'<section id="warnings" class="warn"><h2>Warnings</h2><ul>{items}</ul></section>'


def render_html(report: dict[str, Any]) -> str:
    """The whole page for one report dict: no external resource, every outside string escaped."""
    run = report.get("run") or {}
    llm = report.get("llm") or {}
    s = report.get("settings") or {}
    meta = (f"Task: <b>{_e(run.get('instruction'))}</b> · labels: {_e(', '.join(map(str, run.get('labels') or [])))}"
            f"<br>LLM: {_e(llm.get('model_id'))} ({'embedded' if llm.get('embedded') else 'endpoint'}) · "
            f"k {_e(s.get('k'))}, ε {_e(s.get('epsilon'))}, β {_e(s.get('beta'))}, batch {_e(s.get('batch_size'))}"
            f"<br>Output: {_e(run.get('out_path'))}")
    body = "".join([
        f'<header><h1>autoannotator run {_e(run.get("run_id"))}</h1><p class="muted">{meta}</p></header>',
        _headline(report), _decisions_section(report), _estimate_section(report), _batches_section(report),
        _trajectory_section(report),
        _agreement_section(report), _confusion_section(report), _warnings_section(report),
    ])
    title = _e(f"autoannotator run {run.get('run_id', '')}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><main>{body}</main></body></html>\n")
