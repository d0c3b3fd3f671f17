"""The re-verification prompt: the sample sits in a delimited data block and is never obeyed; the
answer is constrained to the task's labels (a ``Literal`` schema sent as a forced function call)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from autoannotator.prompts import render
from autoannotator.task import TaskSpec
from autoannotator.verify.base import Example

_DATA_TAG = re.compile(r"<\s*/?\s*text_to_classify\s*>", re.IGNORECASE)
# An example's text must not close its own block or the data block either.
_EXAMPLE_TAG = re.compile(r"<\s*/?\s*(?:text_to_classify|example)\s*>", re.IGNORECASE)
# Examples are context, not the text to judge: a shorter cut keeps N of them from swamping the prompt.
EXAMPLE_MAX_CHARS = 600


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail: openings and conclusions carry most of a text's label."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def example_excerpt(text: str) -> str:
    """What an example shows of its text; idempotent, so a picker may keep excerpts instead of whole texts."""
    return text if len(text) <= EXAMPLE_MAX_CHARS else truncate_middle(text, EXAMPLE_MAX_CHARS - 40)


class VerifyPrompt:
    """The re-verification prompt for one task: shared by the LLM verifier and the simulated one."""

    def __init__(self, task: TaskSpec, max_text_chars: int = 4000) -> None:
        self.labels = task.label_names
        self.max_text_chars = max_text_chars
        self._system = render("verify_system.md", instruction=task.instruction, labels=task.labels,
                              label_names=self.labels)

    def messages(self, text: str, examples: Sequence[Example] = ()) -> list[BaseMessage]:
        """The system and user messages for one text; ``examples`` (labelled rows, ``--few-shot``) are
        rendered by the template before the text. Without examples the prompt is the zero-shot one."""
        # Neutralise our own delimiters so a text cannot close the data block and speak as the user.
        body = _DATA_TAG.sub("[tag removed]", truncate_middle(text, self.max_text_chars))
        shown = [{"text": _EXAMPLE_TAG.sub("[tag removed]", example_excerpt(e.text)), "label": e.label}
                 for e in examples]
        return [SystemMessage(self._system),
                HumanMessage(render("verify_user.md", text=body, label_names=self.labels, examples=shown))]
