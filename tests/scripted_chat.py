"""Run `autoannotator` with a scripted chat model and a seeded stand-in verifier: no test needs a model.

    python tests/scripted_chat.py chat --runs-dir runs ...     (the script: $AUTOANNOTATOR_CHAT_SCRIPT)

The script is JSON: {"replies": [text | {"content", "tool_calls": [{"name", "args"}]}], "weak": bool,
"verifier_p": P}. The CLI ships no test code: this file swaps `cli.chat.chat_model_opener` for its own.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

SCRIPT_ENV = "AUTOANNOTATOR_CHAT_SCRIPT"


class ScriptedChat(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def simulated_verifier_factory(p: float) -> Any:
    """Verifiers answering the gold label with probability p (the run's own gold column)."""
    def factory(task: Any, run_dir: Path, run_id: str) -> Any:
        from autoannotator.data import load_dataset
        from autoannotator.run.plan import RunPlan
        from autoannotator.verify.simulated import SimulatedVerifier

        plan = RunPlan.load(run_dir)
        ds = load_dataset(plan.data_path, plan.task.text_column, plan.gold_column)
        return SimulatedVerifier(ds.gold or [None] * len(ds.texts), task, p, run_id=run_id)
    return factory


def scripted_opener(path: Path):
    """A `chat_model_opener` that answers from the script at ``path``."""
    def opener(settings: Any, stack: ExitStack, loop: Any) -> tuple[Any, bool]:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        ids = itertools.count()
        replies = [AIMessage(r) if isinstance(r, str) else AIMessage(
            r.get("content", ""), tool_calls=[{"name": c["name"], "args": c.get("args", {}), "id": f"s{next(ids)}",
                                               "type": "tool_call"} for c in r.get("tool_calls", [])])
            for r in spec.get("replies", [])]
        loop.verifier_factory = simulated_verifier_factory(float(spec.get("verifier_p", 0.9)))
        loop.verifier_info = {"simulated": True}
        return ScriptedChat(messages=iter(replies)), bool(spec.get("weak", False))
    return opener


def main() -> None:
    from autoannotator.cli import app, chat

    chat.chat_model_opener = scripted_opener(Path(os.environ[SCRIPT_ENV]))
    sys.argv = ["autoannotator", *sys.argv[1:]]
    app.main()


if __name__ == "__main__":
    main()
