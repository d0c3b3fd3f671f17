#!/usr/bin/env python
"""Regenerate docs/chat-trace.png: a real `autoannotator chat` session, recorded and drawn as a picture.

The session runs the real chat graph, tools, runner and trace renderer on 160 bundled review sentences
(vader + textblob in the generated, sandboxed deployment code when bubblewrap or Docker is there, else
in-process, plus the trainable student, so a fine-tuning round shows). Two stand-ins keep it offline and
reproducible: the chat LLM is the weak-model path (the deterministic intent router turns the words into
tool calls, as it does for the embedded SmolLM2), and the verifier is the benchmark's seeded simulated
one (gold label with P = 0.9; the trace says "verifier simulated:0.9").

rich records the console (``Console(record=True)``) and saves it as SVG; ``rsvg-convert`` (Debian
``librsvg2-bin``) or, failing that, ``cairosvg`` (PyPI) turns the SVG into the PNG, in Fira Code where
fontconfig has it (Debian ``fonts-firacode``), else the system's monospace font. None of these is a
runtime dependency of autoannotator.

    .venv/bin/python scripts/render_chat_trace.py [--out docs/chat-trace.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.text import Text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from autoannotator.cli import chat as chat_cli  # noqa: E402
from autoannotator.cli.chat import build_graph, drive  # noqa: E402
from autoannotator.config import Settings  # noqa: E402
from autoannotator.sandbox import get_sandbox  # noqa: E402
from autoannotator.run.store import RunStore  # noqa: E402
from autoannotator.cli.trace import TraceRenderer  # noqa: E402
from scripted_chat import scripted_opener  # noqa: E402  (tests/: the scripted model lives with the tests)

WIDTH = 104


class ScriptedConsole(Console):
    """A recording console whose questions (the confirmation) are answered from a list, echoed as typed."""

    def __init__(self, answers: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.answers = iter(answers)

    def input(self, prompt: str = "", **kwargs) -> str:  # type: ignore[override]
        answer = next(self.answers)
        self.print(Text.from_markup(prompt) + Text(answer))
        return answer


def _sandbox() -> str:
    try:
        get_sandbox("auto")
        return "auto"
    except Exception:  # no bubblewrap, no Docker engine: the models run in-process, show_code says so
        return "none"


def record_session(work: Path) -> Console:
    os.chdir(work)  # the user's words name the data file relative to where they chat
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(160).to_csv(
        work / "reviews.csv", index=False)
    (work / "script.json").write_text(json.dumps({"weak": True, "replies": [], "verifier_p": 0.9}))
    settings = Settings(models=["vader", "textblob", "student"], sandbox=_sandbox(), beta=40, batch_size=32,
                        runs_dir=work / "runs")
    console = ScriptedConsole(["yes"], record=True, width=WIDTH, color_system="truecolor", file=open("/dev/null", "w"))
    cfg = {"configurable": {"thread_id": "docs"}, "recursion_limit": 100}
    with ExitStack() as stack:
        chat_cli.chat_model_opener = scripted_opener(work / "script.json")
        graph = build_graph(settings, stack, work / "runs" / "chat.sqlite")
        renderer = TraceRenderer(console, "normal", work / "runs" / "chat" / "docs" / "trace.jsonl")

        def say(text: str) -> None:
            console.print(Text.assemble(("you › ", "bold cyan"), text))
            renderer({"type": "user", "text": text}, render=False)
            drive(graph, {"messages": [("user", text)]}, cfg, renderer, console)

        say("label reviews.csv for sentiment with labels positive,negative and gold column label")
        run_dir = Path(graph.get_state(cfg).values["run_dir"])
        store = RunStore(run_dir / "run.sqlite")
        hard = next(r["row_id"] for r in store.results() if r["label_source"] == "llm_verified")
        store.close()
        say(f"why did row {hard} go to the LLM?")
        say("show me the deployment code")
        say("how much did it cost?")
    return console


def to_png(svg: Path, png: Path) -> None:
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "--zoom", "1.5", "--background-color", "#0c0c0c", "-o", str(png), str(svg)],
                       check=True)
        return
    try:
        import cairosvg
    except ImportError:
        sys.exit("need rsvg-convert (apt-get install librsvg2-bin) or cairosvg (pip install cairosvg) for SVG→PNG")
    cairosvg.svg2png(url=str(svg), write_to=str(png), scale=1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "chat-trace.png")
    parser.add_argument("--keep", type=Path, help="keep the session's run directory and trace here")
    args = parser.parse_args()
    work = (args.keep or Path(tempfile.mkdtemp(prefix="chat-trace-"))).resolve()
    args.out = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    console = record_session(work)
    svg = args.out.with_suffix(".svg")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(svg), title="autoannotator chat")
    # rich writes each styled run as its own <text> with &#160; for spaces; librsvg drops the leading
    # ones unless whitespace is preserved, which glued "64/160" to "LLM calls".
    svg.write_text(svg.read_text(encoding="utf-8").replace("<svg ", '<svg xml:space="preserve" ', 1), encoding="utf-8")
    to_png(svg, args.out)
    svg.unlink()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
