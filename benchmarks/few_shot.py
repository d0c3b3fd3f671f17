"""Does a few-shot verification prompt make the verifier more accurate? (``--few-shot N``)

The verifier alone (llm_only-style) on ``--n`` seeded rows of the given files, with 0 and N examples
per row chosen exactly as a run chooses them (``verify/examples.choose_examples``: the nearest rows by
frozen MiniLM embedding, balanced across labels) from a disjoint pool of ``--pool`` rows. The pool's
labels are either gold (``--pool-labels gold``: examples are right, the best case) or the two
lexicons' agreements (``lexicon``: rows where vader and textblob agree, labelled by them, about what a
run's confidently settled rows are).

It needs a real LLM (the configured endpoint, else the embedded SmolLM2-135M): the simulated verifier
ignores prompts. Answers go to one answer cache in OUT, so a rerun pays nothing twice.

    PYTHONPATH=. .venv/bin/python benchmarks/few_shot.py ../shared/data/uci-sentences/{amazon,yelp,imdb}.csv \
        --out bench-out/few_shot --n 200 --pool 600 --shots 0,4,8 --pool-labels gold
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from autoannotator.config import load_settings
from autoannotator.llm.factory import check_reachable, llm_session
from autoannotator.slm.student import SentenceEncoder
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.verify.base import Example
from autoannotator.verify.examples import choose_examples
from autoannotator.verify.llm import LLMVerifier

TASK = "label these reviews for sentiment"


def lexicon_labels(texts: list[str]) -> list[str | None]:
    """vader and textblob's label where both vote and agree (their sign), else None."""
    from textblob import TextBlob
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    out: list[str | None] = []
    for t in texts:
        v, b = vader.polarity_scores(t)["compound"], TextBlob(t).sentiment.polarity
        a = "positive" if v > 0.05 else "negative" if v < -0.05 else None
        c = "positive" if b > 0 else "negative" if b < 0 else None
        out.append(a if a is not None and a == c else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--shots", default="0,4,8")
    ap.add_argument("--pool-labels", choices=["gold", "lexicon"], default="gold")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    frame = pd.concat([pd.read_csv(f) for f in args.files], ignore_index=True)
    order = np.random.default_rng(args.seed).permutation(len(frame))
    query, pool = order[:args.n], order[args.n:args.n + args.pool]
    texts, gold = frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
    labels = sorted(set(gold))
    task = TaskSpec(instruction=TASK, labels=[LabelDef(name=n) for n in labels])
    if args.pool_labels == "gold":
        pool_labels: list[str | None] = [gold[i] for i in pool]
    else:
        pool_labels = lexicon_labels([texts[i] for i in pool])
    kept = [(int(i), lbl) for i, lbl in zip(pool, pool_labels) if lbl is not None]
    pool_ids = [i for i, _ in kept]
    pool_lbl = [lbl for _, lbl in kept]
    pool_right = float(np.mean([gold[i] == lbl for i, lbl in kept])) if kept else None

    start = time.perf_counter()
    encoder = SentenceEncoder(device="cpu")
    vecs = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    needed = np.concatenate([query, pool])
    vecs[needed] = encoder.encode([texts[i] for i in needed])
    embed_s = time.perf_counter() - start

    settings = load_settings({})
    results = {"files": [str(f) for f in args.files], "n": len(query), "pool": len(kept),
               "pool_labels": args.pool_labels, "pool_accuracy": pool_right, "embed_s": round(embed_s, 1),
               "seed": args.seed, "runs": []}
    with llm_session(settings, log_dir=args.out) as llm:
        check_reachable(llm)
        results["llm"] = llm.model_id
        verifier = LLMVerifier(llm.chooser(task.label_names, settings.llm_max_concurrency), llm.model_id, task, args.out / "llm_cache.sqlite", "few_shot",
                               max_concurrency=settings.llm_max_concurrency, max_text_chars=settings.llm_max_text_chars)
        for shots in [int(s) for s in args.shots.split(",")]:
            examples = {int(q): [Example(pool_ids[j], texts[pool_ids[j]], pool_lbl[j]) for j in
                                 choose_examples(vecs[q], vecs[pool_ids], pool_lbl, pool_ids, labels, shots,
                                                 exclude=int(q))]
                        for q in query}
            verifier.set_examples(examples)
            t0 = time.perf_counter()
            out = verifier.verify([(int(q), texts[q]) for q in query])
            wall = time.perf_counter() - t0
            got = {r.row_id: r.label for r in out}
            right = [got.get(int(q)) == gold[q] for q in query]
            # How often the answer is the label of the example right beside the text (the nearest one).
            copied = [bool(examples[int(q)]) and got.get(int(q)) == examples[int(q)][-1].label for q in query]
            per = {lbl: float(np.mean([got.get(int(q)) == lbl for q in query if gold[q] == lbl])) for lbl in labels}
            nearest = [bool(examples[int(q)]) and examples[int(q)][-1].label == gold[q] for q in query]
            run = {"shots": shots, "accuracy": round(float(np.mean(right)), 4),
                   "recall_per_label": {k: round(v, 4) for k, v in per.items()},
                   "answers": dict(Counter(str(got.get(int(q))) for q in query)),
                   "failed": sum(r.failed for r in out), "new_calls": sum(not r.cached for r in out),
                   "tokens_in": sum(r.tokens_in for r in out), "wall_s": round(wall, 1),
                   "answer_is_nearest_example_label": round(float(np.mean(copied)), 4) if shots else None,
                   "nearest_example_accuracy": round(float(np.mean(nearest)), 4) if shots else None}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"| shots | accuracy | recall {' / '.join(labels)} | new calls | tokens in | wall s |")
    for r in results["runs"]:
        rec = " / ".join(f"{r['recall_per_label'][lbl]:.3f}" for lbl in labels)
        print(f"| {r['shots']} | {r['accuracy']:.3f} | {rec} | {r['new_calls']} | {r['tokens_in']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
