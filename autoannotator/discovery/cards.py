"""``read_model_card``: what a model card says, in a shape an LLM can weigh before picking a model.

Where the card comes from, first hit wins:
  packaged scorer name -> a card written here from ``tools.packaged`` (they have no Hub card);
  existing folder      -> its README.md and config.json;
  hub id, online       -> README.md and config.json fetched from the Hub;
  hub id, offline      -> the copies in the Hugging Face cache (or cached by an earlier online read).
The YAML header gives pipeline tag, datasets, languages, licence and the metrics the authors
report in ``model-index``; labels come from config.json's ``id2label`` because cards rarely list
them. The body is cut to ``max_body_chars`` at a line end, and the headings after the cut are
listed so the LLM knows what else the card covers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from langchain_core.tools import ToolException
from pydantic import BaseModel, Field

from autoannotator.slm.catalog import BUILTINS, classifier_labels, parse_hf_spec
from autoannotator.discovery.candidates import Source, as_list, as_text
from autoannotator.discovery.hubnet import cached_file, fetch_file, hub_status, mark_down, network_errors
from autoannotator.discovery.packaged import PackagedFacts, packaged_facts


_HEADER = re.compile(r"\A\s*---\r?\n.*?\r?\n---\s*?\r?\n", re.DOTALL)  # a card's YAML block


class ReadModelCardArgs(BaseModel):
    model: str = Field(min_length=1, max_length=500,
                       description="hub id (org/name), an hf:<id> spec, a local model folder, or a packaged "
                                   "scorer name such as 'vader'")
    max_body_chars: int = Field(1500, ge=200, le=10_000, description="how much of the card's text to return")


class ReportedMetric(BaseModel):
    metric: str
    value: float | str | None = None
    name: str | None = None
    dataset: str | None = None
    split: str | None = None
    task: str | None = None


class ModelCardResult(BaseModel):
    model: str
    found: bool
    source: Source | None = None
    pipeline_tag: str | None = None
    labels: list[str] = Field(default_factory=list, description="the model's own labels (config.json id2label)")
    datasets: list[str] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=list)
    license: str | None = None
    base_model: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    metrics: list[ReportedMetric] = Field(default_factory=list)
    body: str = ""
    body_truncated: bool = False
    more_headings: list[str] = Field(default_factory=list, description="section headings after the cut")
    note: str | None = None


def trim_body(text: str, limit: int) -> tuple[str, bool, list[str]]:
    """(first ``limit`` characters cut at a line end, whether cut, the headings that were cut off)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if len(text) <= limit:
        return text, False, []
    cut = text.rfind("\n", 0, limit)
    cut = cut if cut > limit // 2 else limit
    headings, in_code, pos = [], False, 0
    for line in text.splitlines(keepends=True):  # from the top: the cut may fall inside a code block
        if line.lstrip().startswith("```"):
            in_code = not in_code  # '# comment' inside a code block is not a heading
        elif pos >= cut and not in_code and re.match(r"#{1,6}\s+\S", line):
            headings.append(line.strip())
        pos += len(line)
    body = text[:cut].rstrip()
    if sum(line.lstrip().startswith("```") for line in body.splitlines()) % 2:
        body += "\n```"  # close a code block the cut left open, so the rest is not read as code
    return body, True, headings[:40]


def _metrics(data: Any) -> list[ReportedMetric]:
    return [ReportedMetric(metric=r.metric_type, value=r.metric_value if isinstance(r.metric_value, (int, float, str))
                           else str(r.metric_value), name=r.metric_name, dataset=r.dataset_name,
                           split=r.dataset_split, task=r.task_type)
            for r in (getattr(data, "eval_results", None) or [])]


def card_from_files(model: str, source: Source, readme: Path | None, config: Path | None, limit: int,
                    note: str | None = None) -> ModelCardResult:
    from huggingface_hub import ModelCard

    labels = (classifier_labels(config) or []) if config else []
    # Cards often omit pipeline_tag; labels read from config.json imply a sequence classifier.
    implied_tag = "text-classification" if labels else None
    if readme is None:
        return ModelCardResult(model=model, found=config is not None, source=source, labels=labels,
                               pipeline_tag=implied_tag,
                               note=note or "the repository has no model card (README.md)")
    text = readme.read_text(encoding="utf-8-sig", errors="replace")
    try:
        card = ModelCard(text, ignore_metadata_errors=True)  # tolerates bad fields, not bad YAML
    except Exception as exc:  # yaml.YAMLError: keep the text, drop the header
        card = ModelCard(_HEADER.sub("", text, count=1), ignore_metadata_errors=True)
        note = "; ".join(filter(None, [note, f"unreadable YAML header ({type(exc).__name__})"]))
    meta = card.data.to_dict()
    body, cut, headings = trim_body(card.text, limit)
    return ModelCardResult(
        model=model, found=True, source=source, pipeline_tag=as_text(meta.get("pipeline_tag")) or implied_tag,
        labels=labels, datasets=as_list(meta.get("datasets")), languages=as_list(meta.get("language")),
        license=as_text(meta.get("license")), base_model=as_list(meta.get("base_model")),
        tags=as_list(meta.get("tags")), metrics=_metrics(card.data), body=body, body_truncated=cut,
        more_headings=headings, note=note)


def packaged_card(facts: PackagedFacts, limit: int) -> ModelCardResult:
    labels = facts.labels or []
    said = ", ".join(labels) if labels else "the task's own labels"
    text = (f"# {facts.name} (packaged with autoannotator)\n\n{facts.origin}.\n\n## Labels\n\n{said}\n\n"
            f"## How it scores\n\n{facts.how_it_scores}\n\n## Licence\n\n{facts.licence}\n")
    body, cut, headings = trim_body(text, limit)
    return ModelCardResult(model=facts.name, found=True, source="packaged", pipeline_tag="text-classification",
                           labels=labels, languages=facts.languages, license=facts.licence, tags=[facts.kind],
                           body=body, body_truncated=cut, more_headings=headings,
                           note="trainable: fine-tuned during the run" if facts.trainable else None)


def _check_hub_id(ident: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ident)
    except ValueError:
        raise ToolException(f"{ident!r} is not a hub id (org/name), an existing folder, or a packaged scorer "
                            f"({', '.join(BUILTINS)})") from None


def read_model_card(args: ReadModelCardArgs) -> ModelCardResult:
    ident, _ = parse_hf_spec(args.model.strip())  # 'hf:org/name#LABEL_0=x' -> 'org/name'
    limit = args.max_body_chars
    if (facts := packaged_facts(ident)) is not None:
        return packaged_card(facts, limit)
    folder = Path(ident).expanduser()
    if folder.is_dir():
        return card_from_files(ident, "local-dir", _file(folder / "README.md"), _file(folder / "config.json"), limit)
    _check_hub_id(ident)
    online, why = hub_status()
    if online:
        try:
            readme, config = fetch_file(ident, "README.md"), fetch_file(ident, "config.json")
            if readme is None and config is None:
                return ModelCardResult(model=ident, found=False, source="hub",
                                       note=f"{ident} not found on the Hub (or gated)")
            return card_from_files(ident, "hub", readme, config, limit)
        except network_errors() as exc:
            mark_down(f"{type(exc).__name__}: {exc}")
            why = f"Hub read failed ({type(exc).__name__})"
    readme, config = cached_file(ident, "README.md"), cached_file(ident, "config.json")
    if readme is None and config is None:
        return ModelCardResult(model=ident, found=False, note=f"{why}; no local copy of {ident}'s card")
    return card_from_files(ident, "hf-cache", readme, config, limit, note=f"{why}; read from the local cache")


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


