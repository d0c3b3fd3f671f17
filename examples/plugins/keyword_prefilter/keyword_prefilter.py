"""An example autoannotator tool plugin: keyword -> label rules that settle some rows outright.

Some rows need no model at all ("refund" in a support ticket is a billing question). Given rules
and the rows, the tool says which rows a rule settles (every rule that fires names the same
label), which rows the rules disagree on, and which no rule touches. It labels nothing itself:
the orchestrating LLM decides what to do with the answer.

It is built with ``autoannotator.tools.base.make_tool``, as every tool should be: a pydantic
args model (validated; a bad call comes back to the LLM as a readable message) and a pydantic
result model (the tool returns its ``model_dump``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, model_validator

# Imported under another name: this module's own ``make_tool`` is the entry point.
from autoannotator.tools.base import ToolException
from autoannotator.tools.base import make_tool as build_tool

MAX_ROWS = 100_000


class Rule(BaseModel):
    keyword: str = Field(min_length=1, max_length=200, description="word or phrase to look for")
    label: str = Field(min_length=1, max_length=64, description="label a row containing it gets")


class KeywordPrefilterArgs(BaseModel):
    rules: list[Rule] = Field(min_length=1, max_length=500)
    texts: list[str] | None = Field(None, max_length=MAX_ROWS, description="the rows' texts (row id = position)")
    row_ids: list[int] | None = Field(None, max_length=MAX_ROWS,
                                      description="ids of rows of the run's data, instead of texts")
    case_sensitive: bool = False
    whole_word: bool = Field(True, description="match 'bad' but not 'badge'")

    @model_validator(mode="after")
    def _one_source(self) -> "KeywordPrefilterArgs":
        if (self.texts is None) == (self.row_ids is None):
            raise ValueError("give exactly one of texts or row_ids")
        return self


class SettledRow(BaseModel):
    row: int
    label: str
    keywords: list[str]


class ConflictRow(BaseModel):
    row: int
    labels: list[str]


class KeywordPrefilterResult(BaseModel):
    settled: list[SettledRow]
    conflicts: list[ConflictRow]
    unmatched: list[int]


def _rows(args: KeywordPrefilterArgs, context: Any) -> list[tuple[int, str]]:
    if args.texts is not None:
        return list(enumerate(args.texts))
    # Row ids only mean something against the run's data, which the host passes as context.
    texts: Sequence[str] | Mapping[int, str] | None = getattr(context, "texts", None)
    if texts is None:
        raise ToolException("row_ids need a run whose context has the texts; pass texts instead")
    missing = [i for i in args.row_ids or [] if not _has(texts, i)]
    if missing:
        raise ToolException(f"unknown row ids: {missing[:10]}")
    return [(i, str(texts[i])) for i in args.row_ids or []]


def _has(texts: Sequence[str] | Mapping[int, str], i: int) -> bool:
    return i in texts if isinstance(texts, Mapping) else 0 <= i < len(texts)


def prefilter(args: KeywordPrefilterArgs, context: Any = None) -> KeywordPrefilterResult:
    flags = 0 if args.case_sensitive else re.IGNORECASE
    edge = r"(?<!\w){}(?!\w)" if args.whole_word else "{}"
    compiled = [(re.compile(edge.format(re.escape(r.keyword)), flags), r) for r in args.rules]
    settled, conflicts, unmatched = [], [], []
    for row, text in _rows(args, context):
        fired = [r for pattern, r in compiled if pattern.search(text)]
        labels = sorted({r.label for r in fired})
        if not fired:
            unmatched.append(row)
        elif len(labels) == 1:
            settled.append(SettledRow(row=row, label=labels[0], keywords=[r.keyword for r in fired]))
        else:
            conflicts.append(ConflictRow(row=row, labels=labels))
    return KeywordPrefilterResult(settled=settled, conflicts=conflicts, unmatched=unmatched)


def make_tool(settings: Any = None, context: Any = None):
    """Entry point ``autoannotator.tools: keyword_prefilter``: the registry calls it with (settings, context)."""
    return build_tool(
        lambda args: prefilter(args, context), name="keyword_prefilter",
        description=("Apply keyword -> label rules to rows (texts, or row ids of the run's data). Returns the "
                     "rows a rule settles (all rules that fire agree), the rows where rules disagree, and the "
                     "rows no rule matches. Labels nothing by itself."),
        args_schema=KeywordPrefilterArgs, result_model=KeywordPrefilterResult)
