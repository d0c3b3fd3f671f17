"""The forgetting guard keeps old weights unless the fine-tuned copy does at least as well on the held-out slice."""

from __future__ import annotations

import copy

import numpy as np

from autoannotator.config import FinetuneSettings
from autoannotator.finetune import finetune_model, split_holdout
from autoannotator.slm.base import LabelMapping, TrainableSLM


class ConstantStudent(TrainableSLM):
    """Votes one fixed label; 'training' switches it to the label it is told to learn."""

    def __init__(self, label_idx: int, learns: int):
        super().__init__("const", LabelMapping.by_name(["a", "b"], ["a", "b"]))
        self.label_idx, self.learns, self.saved = label_idx, learns, None

    @property
    def is_trained(self) -> bool:
        return True

    def native_proba(self, texts):
        out = np.zeros((len(texts), 2), dtype=np.float32)
        out[:, self.label_idx] = 1.0
        return out

    def train_on(self, texts, labels, cfg, **kwargs):
        self.label_idx = self.learns
        return {"n": len(texts)}

    def clone(self):
        return copy.deepcopy(self)

    def save(self, path):
        self.saved = path

    def load(self, path):
        pass


def test_split_holdout_is_stable_and_disjoint():
    cfg = FinetuneSettings(holdout_fraction=0.2, min_holdout=3)
    train, hold = split_holdout(list(range(100)), cfg)
    assert 10 <= len(hold) <= 30 and not set(train) & set(hold) and len(train) + len(hold) == 100
    train2, hold2 = split_holdout(list(range(100)), cfg)
    assert hold == hold2
    _, small = split_holdout(list(range(6)), cfg)
    assert 3 <= len(small) <= 4  # at least min_holdout (capped at half the pool), plus any the hash picks


def test_guard_keeps_better_and_rejects_worse(tmp_path):
    cfg = FinetuneSettings()
    texts = ["x"] * 10
    truth = np.zeros(10, dtype=np.int64)  # the LLM said "a" everywhere
    improving = ConstantStudent(label_idx=1, learns=0)
    kept, rec = finetune_model(improving, (texts, truth), (texts, truth), cfg, 1, tmp_path)
    assert rec["accepted"] and kept is not improving and kept.label_idx == 0
    assert rec["holdout_acc_before"] == 0.0 and rec["holdout_acc_after"] == 1.0 and rec["weights"]

    forgetting = ConstantStudent(label_idx=0, learns=1)
    kept, rec = finetune_model(forgetting, (texts, truth), (texts, truth), cfg, 2, tmp_path)
    assert not rec["accepted"] and kept is forgetting and kept.label_idx == 0 and rec["weights"] is None


def test_a_model_collapsed_onto_the_common_label_keeps_abstaining(tmp_path):
    cfg = FinetuneSettings(rejoin_margin=0.05)
    texts = ["x"] * 10
    truth = np.array([0] * 7 + [1] * 3)  # always answering "a" scores 0.7 accuracy, but chance balanced accuracy
    constant = ConstantStudent(label_idx=1, learns=0)
    kept, rec = finetune_model(constant, (texts, truth), (texts, truth), cfg, 1, tmp_path)
    assert rec["accepted"] and rec["holdout_acc_after"] == 0.7 and rec["votes"] is False
    assert rec["holdout_balanced_acc_after"] == 0.5 and rec["holdout_chance"] == 0.5
    assert not kept.qualified
    assert (kept.predict(texts).votes == -1).all()  # gated: abstains
    assert (kept.predict_ungated(texts).votes == 0).all()  # the weights still answer for the guard


class LookupStudent(ConstantStudent):
    """Answers per text from a table it is given at 'training' time."""

    def __init__(self, answers: dict[str, int]):
        super().__init__(label_idx=0, learns=0)
        self.answers, self.trained = answers, False

    def native_proba(self, texts):
        out = np.zeros((len(texts), 2), dtype=np.float32)
        if not self.trained:
            return out * np.nan
        out[np.arange(len(texts)), [self.answers[t] for t in texts]] = 1.0
        return out

    def train_on(self, texts, labels, cfg, **kwargs):
        self.trained = True
        return {"n": len(texts)}


def _skewed_slice(n: int, cfg: FinetuneSettings, tmp_path):
    """70 % 'a'; the student answers 'a' on the first 30 % and 'b' on the rest: right on 3/7 of 'a', all of 'b'."""
    texts = [f"t{i}" for i in range(n)]
    truth = np.array([0] * (7 * n // 10) + [1] * (n - 7 * n // 10))
    answers = {t: (0 if i < 3 * n // 10 else 1) for i, t in enumerate(texts)}
    kept, rec = finetune_model(LookupStudent(answers), (texts, truth), (texts, truth), cfg, 1, tmp_path)
    return texts, answers, kept, rec


def test_a_model_that_tells_the_labels_apart_votes_even_below_the_skews_accuracy(tmp_path):
    """Hard pools are skewed: 70 of 100 'a'. Right on 30 of 70 'a' and all 30 'b' is 0.6 accuracy, below the
    0.7 of always answering 'a', yet it separates the labels far better than chance (0.714 balanced)."""
    texts, answers, kept, rec = _skewed_slice(100, FinetuneSettings(rejoin_margin=0.05), tmp_path)
    assert rec["accepted"] and rec["holdout_acc_after"] == 0.6 and rec["holdout_balanced_acc_after"] == 0.7143
    assert rec["holdout_required"] == 0.6  # chance 0.5 + two standard errors (2 * 0.5 / sqrt(100))
    assert rec["votes"] is True and kept.qualified
    assert (kept.predict(texts).votes == [answers[t] for t in texts]).all()


def test_on_a_small_slice_the_vote_waits_for_two_standard_errors_above_chance(tmp_path):
    """The same answers on 10 samples: 0.714 balanced could be luck there (chance + 2 SE = 0.816)."""
    _, _, kept, rec = _skewed_slice(10, FinetuneSettings(rejoin_margin=0.05), tmp_path)
    assert rec["accepted"] and rec["holdout_balanced_acc_after"] == 0.7143 and rec["holdout_required"] == 0.8162
    assert rec["votes"] is False and not kept.qualified
    _, _, _, rec = _skewed_slice(10, FinetuneSettings(rejoin_margin=0.05, rejoin_standard_errors=0.0), tmp_path)
    assert rec["holdout_required"] == 0.55 and rec["votes"] is True


def test_a_single_label_holdout_cannot_qualify_a_model(tmp_path):
    """Against a slice where one label is everything, a constant answer scores 1.0: no model can show more."""
    texts, truth = ["x"] * 10, np.zeros(10, dtype=np.int64)
    kept, rec = finetune_model(ConstantStudent(label_idx=1, learns=0), (texts, truth), (texts, truth),
                               FinetuneSettings(rejoin_margin=0.05), 1, tmp_path)
    assert rec["accepted"] and rec["holdout_acc_after"] == 1.0 and rec["votes"] is False
