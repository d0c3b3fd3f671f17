"""The TF-IDF student: abstains untrained, learns, honours sample weights, continues from saved weights."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.config import FinetuneSettings, Settings
from autoannotator.finetune import finetune_model
from autoannotator.slm.catalog import BUILTINS, build_model, catalog_entries
from autoannotator.slm.tfidf import TfidfStudent
from autoannotator.task import LabelDef, TaskSpec

from tests.test_slm_student import LABELS, NEG, POS, TEXTS, Y

CFG = FinetuneSettings(epochs=2)
PROBE = ["what a lovely wonderful day", "this is an awful disaster", "Delightful!", "terrible junk"]
PROBE_Y = np.array([0, 1, 0, 1])


def test_untrained_abstains_and_training_learns():
    m = TfidfStudent(LABELS)
    assert m.trainable and not m.is_trained and (m.predict(PROBE).votes == -1).all()
    metrics = m.train_on(TEXTS, Y, CFG)
    assert m.is_trained and metrics["n"] == len(TEXTS) and metrics["steps"] == 2 * m.passes_per_epoch
    assert (m.predict(TEXTS).votes == Y).mean() >= 0.9
    assert (m.predict(PROBE).votes == PROBE_Y).mean() >= 0.75
    assert m.predict(["", "   "]).votes.tolist() == [-1, -1]  # blank text: no opinion


def test_sample_weights_decide_which_labels_it_learns():
    """The same texts twice, once rightly and once with flipped labels: the weights pick the winner."""
    texts = TEXTS + TEXTS
    y = np.concatenate([Y, 1 - Y])
    right = np.concatenate([np.ones(len(Y)), np.full(len(Y), 0.05)])
    m = TfidfStudent(LABELS)
    m.train_on(texts, y, CFG, sample_weight=right)
    assert (m.predict(TEXTS).votes == Y).mean() >= 0.9
    flipped = TfidfStudent(LABELS)
    flipped.train_on(texts, y, CFG, sample_weight=right[::-1].copy())
    assert (flipped.predict(TEXTS).votes == 1 - Y).mean() >= 0.9
    with pytest.raises(ValueError):
        m.train_on(TEXTS, Y, CFG, sample_weight=np.ones(3))


def test_save_load_clone_and_continue(tmp_path):
    m = TfidfStudent(LABELS, seed=1)
    m.train_on(TEXTS, Y, CFG)
    want = m.native_proba(PROBE)
    m.save(tmp_path / "t")
    fresh = TfidfStudent(LABELS, seed=9)
    fresh.load(tmp_path / "t")
    assert fresh.is_trained and fresh.rounds == 1
    np.testing.assert_allclose(fresh.native_proba(PROBE), want, atol=1e-5)
    # continuing from the loaded weights matches continuing from the live ones
    twin = m.clone()
    twin.train_on(POS[:4] + NEG[:4], np.array([0] * 4 + [1] * 4), CFG)
    fresh.train_on(POS[:4] + NEG[:4], np.array([0] * 4 + [1] * 4), CFG)
    np.testing.assert_allclose(fresh.native_proba(PROBE), twin.native_proba(PROBE), atol=1e-4)
    np.testing.assert_array_equal(m.native_proba(PROBE), want)  # the clone trained on its own copy
    assert twin.n_docs == m.n_docs  # replayed texts are not counted twice in the IDF
    with pytest.raises(ValueError, match="labels"):
        TfidfStudent(["x", "y", "z"]).load(tmp_path / "t")


def test_continuing_does_not_start_over():
    """A round on a few rows moves the weights from where they were, not from zero."""
    m = TfidfStudent(LABELS)
    m.train_on(TEXTS, Y, CFG)
    before = m.clf.coef_.copy()
    m.train_on(POS[:2], np.array([0, 0]), CFG)
    after = m.clf.coef_
    assert m.rounds == 2
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.5  # still mostly the first round's weights


def test_registered_in_the_catalog_and_judged_by_the_guard(tmp_path):
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=n) for n in LABELS])
    assert "tfidf" in BUILTINS
    entry = next(e for e in catalog_entries(task) if e.name == "tfidf")
    assert entry.trainable and entry.expresses == LABELS
    model = build_model("tfidf", task, Settings())
    assert isinstance(model, TfidfStudent)
    kept, rec = finetune_model(model, (TEXTS, Y, np.ones(len(Y))), (PROBE, PROBE_Y), CFG, 1, tmp_path)
    assert rec["accepted"] and rec["holdout_balanced_acc_before"] == 0.0 and rec["weights"]
    again = build_model("tfidf", task, Settings())
    again.load(rec["weights"])
    np.testing.assert_allclose(again.native_proba(PROBE), kept.native_proba(PROBE), atol=1e-5)
