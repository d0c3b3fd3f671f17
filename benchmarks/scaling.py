"""How the cost of a run grows with its rows, on each engine, and how close LLM verification comes to the
endpoint's limit.

Part 1, rows: synthetic data of N rows (the UCI Sentiment Labelled Sentences, each text made unique by a
variant suffix), labelled by ``runner.label`` with the frozen lexicon models (vader, textblob, afinn) on the
local and the Ray engine; the hard rows go to a seeded stand-in verifier (no LLM time in these figures). Each
run is its own process, so its peak RSS (ru_maxrss) is its own (Ray's workers are other processes). Prints
rows/s of the whole run (imports, scan, model loading, loop, output, report) and of the loop alone (the
report's throughput), the ensemble's ms per row (a gauge of the machine's load: the models' cost per row
does not depend on the data size), peak RSS and the run directory's size.

Part 2, LLM calls: a loopback fake endpoint with ``--latency`` (200 ms) that answers 429 past
``--max-concurrency`` (50) requests in flight. ``--calls`` unique prompts through (a) a bare async httpx
client at that concurrency and (b) autoannotator's verifier at ``llm_max_concurrency`` = that concurrency,
(c) with ``--llm-engines local,ray``, the same verifier sending its requests from Ray workers.
The ideal is max_concurrency / latency = 250 calls/s.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scaling.py --sizes 1000,10000,100000 --engines local,ray
    PYTHONPATH=$PWD .venv/bin/python benchmarks/scaling.py --skip-rows --calls 2000 --llm-engines local,ray
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
UCI = Path(os.environ.get("AUTOANNOTATOR_UCI_DIR", "/work/shared/data/uci-sentences"))
LABELS = ["positive", "negative"]


def _uci_sentences() -> list[str]:
    texts: list[str] = []
    for path in sorted(UCI.glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            texts.extend(row["text"] for row in csv.DictReader(fh))
    if not texts:  # not on this machine: the example reviews stand in (say so in any figure you record)
        print(f"no UCI sentences under {UCI} (set AUTOANNOTATOR_UCI_DIR); using examples/reviews.csv",
              file=sys.stderr)
        with open(REPO / "examples" / "reviews.csv", newline="", encoding="utf-8") as fh:
            texts = [row["text"] for row in csv.DictReader(fh)]
    return texts


def write_synthetic(path: Path, n: int) -> None:
    """n rows cycling over the UCI sentences; from the second pass on each text gets a variant suffix."""
    base = _uci_sentences()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for i in range(n):
            text = base[i % len(base)]
            w.writerow([i, text if i < len(base) else f"{text} (variant {i // len(base)})"])


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- part 1: one run in a child process ----------------------------------------------------------

class _StandInVerifier:
    """Answers every hard row at once with a label fixed by its row id: measures the loop, not an LLM."""

    model_id = "stand-in"

    def __init__(self, task: Any):
        self.task = task
        self.calls = 0

    def verify(self, items: list[tuple[int, str]]) -> list[Any]:
        from autoannotator.verify.base import VerifyResult

        self.calls += len(items)
        return [VerifyResult(row_id=r, label=LABELS[r % 2], tokens_in=0, tokens_out=0, cached=False,
                             paid_by_run="bench") for r, _ in items]

    def ledger(self, run_id: str | None = None) -> Any:
        from autoannotator.costs import LLMUsage

        return LLMUsage(calls=self.calls)


def child(data: Path, run_dir: Path, engine: str) -> None:
    from autoannotator.config import Settings
    from autoannotator.runner import label
    from autoannotator.task import LabelDef

    settings = Settings(models=["vader", "textblob", "afinn"], sandbox="none", engine=engine, k=3)
    start = time.perf_counter()
    report, _ = label(settings, data, instruction="label these sentences for sentiment",
                      labels=[LabelDef(name=n) for n in LABELS], text_column="text", run_dir=run_dir,
                      verifier_factory=lambda task, rd, rid: _StandInVerifier(task),
                      verifier_info={"kind": "stand-in"})
    wall = time.perf_counter() - start
    print("RESULT " + json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                  / 1024, "rows": report.get("n_samples")}))


def run_rows(sizes: list[int], engines: list[str], work: Path) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        data = work / f"synthetic-{n}.csv"
        write_synthetic(data, n)
        for engine in engines:
            run_dir = work / f"run-{n}-{engine}"
            env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", str(data), str(run_dir), engine],
                                  capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{n} rows, {engine}: FAILED rc={proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(line[7:])
            report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
            row = {"rows": n, "engine": engine, "rows_per_s": n / res["wall_s"], "wall_s": res["wall_s"],
                   "loop_rows_per_s": report["throughput_samples_per_s"],
                   "ensemble_ms_per_row": 1000 * report["timings_s"].get("ensemble", 0.0) / n,
                   "process_s": wall, "peak_rss_mb": res["peak_rss_mb"], "store_mb": _dir_bytes(run_dir) / 2**20,
                   "data_mb": data.stat().st_size / 2**20}
            out.append(row)
            print(f"{n:>7} rows  {engine:5}  {row['rows_per_s']:8.1f} rows/s (loop {row['loop_rows_per_s']:6.1f}, "
                  f"ensemble {row['ensemble_ms_per_row']:.2f} ms/row)  run {row['wall_s']:7.1f} s  "
                  f"peak RSS {row['peak_rss_mb']:7.1f} MB  run dir {row['store_mb']:7.1f} MB "
                  f"(input {row['data_mb']:.1f} MB)", flush=True)
    return out


# --- part 2: LLM calls/s against a fake endpoint -------------------------------------------------

def _start_endpoint(latency: float, max_concurrency: int) -> tuple[subprocess.Popen, str]:
    faults = REPO / "tests" / "faults" / "fake_endpoint.py"
    if faults.exists():
        cmd = [sys.executable, str(faults), "--port", "0", "--label", "positive", "--latency", str(latency),
               "--max-concurrency", str(max_concurrency)]
    else:
        cmd = [sys.executable, str(Path(__file__).with_name("_fake_llm.py")), "--latency", str(latency),
               "--max-concurrency", str(max_concurrency)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the fake endpoint did not start: {line!r}")
    return proc, line.split()[1]


def _payload(text: str) -> dict[str, Any]:
    return {"model": "fake-llm", "messages": [{"role": "user", "content": f"<text_to_classify>{text}"
                                                                         f"</text_to_classify>"}],
            "tools": [{"type": "function", "function": {"name": "ChooseLabel", "parameters": {
                "type": "object", "properties": {"label": {"type": "string", "enum": LABELS}}}}}]}


async def _bare(base_url: str, texts: list[str], concurrency: int) -> tuple[float, int]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = 0
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30, trust_env=False) as client:
        async def one(text: str) -> None:
            nonlocal ok
            async with sem:
                r = await client.post("/chat/completions", json=_payload(text))
                ok += r.status_code == 200

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        return time.perf_counter() - start, ok


def _verifier_run(base_url: str, texts: list[str], concurrency: int, work: Path, engine: str = "local"
                  ) -> tuple[float, int]:
    """The product's path: its LLM client (``llm_session``), its verifier, cache and ledger, its concurrency;
    with ``engine`` ray, the requests go out from Ray workers (engine/ray_verify.py; their start-up is
    paid before the clock starts, by a warm-up of a few prompts, as on the local engine)."""
    from autoannotator.config import Settings
    from autoannotator.llm.factory import llm_session
    from autoannotator.task import LabelDef, TaskSpec
    from autoannotator.verify.llm import LLMVerifier

    task = TaskSpec(instruction="label these sentences for sentiment", labels=[LabelDef(name=n) for n in LABELS])
    settings = Settings(llm_base_url=base_url, llm_model="fake-llm", llm_api_key="unused",
                        llm_max_concurrency=concurrency)
    with llm_session(settings) as llm:
        verifier = LLMVerifier(llm.chooser(task.label_names, concurrency), llm.model_id, task, work / f"llm_cache-{engine}.sqlite", "bench",
                               max_concurrency=concurrency)
        asker = None
        if engine == "ray":
            from autoannotator.engine.ray_engine import ensure_ray
            from autoannotator.engine.ray_verify import spread_verifier

            asker = spread_verifier(verifier, llm, settings, ensure_ray(None))
        # Both engines and the bare client are warmed up before the clock starts: open connections,
        # a started LLM loop (and, on Ray, started workers).
        verifier.verify([(i, f"warm-up {engine} {i}") for i in range(2 * concurrency)])
        try:
            start = time.perf_counter()
            results = verifier.verify(list(enumerate(texts)))
            return time.perf_counter() - start, sum(not r.cached for r in results)
        finally:
            if asker is not None:
                asker.close()


def run_llm(calls: int, latency: float, max_concurrency: int, work: Path, engines: tuple[str, ...] = ("local",)
            ) -> dict[str, float]:
    base = _uci_sentences()
    proc, base_url = _start_endpoint(latency, max_concurrency)
    try:
        warm = [f"warm-up {i}" for i in range(max_concurrency)]
        asyncio.run(_bare(base_url, warm, max_concurrency))
        t_bare, ok_bare = asyncio.run(_bare(base_url, [f"{base[i % len(base)]} #{i} bare" for i in range(calls)],
                                            max_concurrency))
        runs = {e: _verifier_run(base_url, [f"{base[i % len(base)]} #{i} verifier {e}" for i in range(calls)],
                                 max_concurrency, work, e) for e in engines}
    finally:
        proc.terminate()
        proc.wait(10)
    bare = ok_bare / t_bare
    ideal = max_concurrency / latency
    print(f"LLM calls, {calls} unique prompts, endpoint latency {latency * 1000:.0f} ms, {max_concurrency} "
          f"concurrent allowed (ideal {ideal:.0f} calls/s):")
    print(f"  bare async httpx client : {bare:7.1f} calls/s ({ok_bare} answered in {t_bare:.1f} s)")
    out = {"bare_calls_per_s": bare}
    for e, (t_ver, ok_ver) in runs.items():
        ver = ok_ver / t_ver
        print(f"  verifier, {e:5} engine   : {ver:7.1f} calls/s ({ok_ver} answered in {t_ver:.1f} s)  "
              f"= {ver / bare:.0%} of the bare client")
        out[f"verifier_{e}_calls_per_s"] = ver
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--max-concurrency", type=int, default=50)
    ap.add_argument("--llm-engines", default="local", help="local,ray: where the verifier's requests go out from")
    ap.add_argument("--skip-rows", action="store_true")
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the data and run dirs here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aa-scaling-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_llm:
            run_llm(args.calls, args.latency, args.max_concurrency, work, tuple(args.llm_engines.split(",")))
        if not args.skip_rows:
            run_rows([int(x) for x in args.sizes.split(",")], args.engines.split(","), work)


if __name__ == "__main__":
    main()
