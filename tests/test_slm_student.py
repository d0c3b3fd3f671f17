"""The MiniLM student: abstains untrained, learns a separable toy task, survives save/load/clone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoannotator.config import FinetuneSettings
from autoannotator.errors import UserError
from autoannotator.slm.student import MiniLMStudent

LABELS = ["positive", "negative"]
POS = ["I love this, it is wonderful", "Absolutely fantastic product", "Great, amazing, excellent",
       "Best purchase ever, so happy", "Delightful and lovely", "Superb quality, I adore it",
       "Brilliant, works perfectly", "What a joy, highly recommended", "Awesome experience, thrilled",
       "Perfect, beautiful and great", "I am very pleased with it", "Outstanding and wonderful service"]
NEG = ["I hate this, it is awful", "Absolutely terrible product", "Horrible, dreadful, disgusting",
       "Worst purchase ever, so angry", "Broken and useless junk", "Awful quality, I despise it",
       "Pathetic, fails constantly", "What a disaster, avoid it", "Miserable experience, furious",
       "Garbage, ugly and bad", "I am very disappointed with it", "Appalling and rude service"]
TEXTS = POS + NEG
Y = np.array([0] * len(POS) + [1] * len(NEG))
CFG = FinetuneSettings(lr=1e-4, head_lr=5e-3, batch_size=8, epochs=4, max_length=32)


@pytest.fixture(scope="module")
def trained() -> tuple[MiniLMStudent, dict]:
    student = MiniLMStudent(LABELS, device="cpu", seed=0)
    metrics = student.train_on(TEXTS, Y, CFG)
    return student, metrics


def test_untrained_student_abstains():
    student = MiniLMStudent(LABELS, device="cpu")
    assert not student.is_trained and student.trainable
    pred = student.predict(["great", "awful"])
    assert pred.votes.tolist() == [-1, -1]
    assert student.mapping.mapping == {"positive": "positive", "negative": "negative"}


def test_training_beats_chance(trained):
    student, metrics = trained
    assert student.is_trained
    assert metrics["n"] == len(TEXTS) and metrics["epochs"] == CFG.epochs and metrics["seconds"] > 0
    assert np.isfinite(metrics["final_loss"])
    votes = student.predict(TEXTS + [""]).votes
    assert votes[-1] == -1
    assert (votes[:-1] == Y).mean() >= 0.8


def test_save_load_clone_round_trip(trained, tmp_path):
    student, _ = trained
    probe = ["what a lovely day", "this is a disaster", "It arrived on Tuesday."]
    want = student.native_proba(probe)
    student.save(tmp_path / "s")
    assert (tmp_path / "s" / "model.safetensors").is_file() and (tmp_path / "s" / "head.safetensors").is_file()
    fresh = MiniLMStudent(LABELS, device="cpu", seed=1)
    fresh.load(tmp_path / "s")
    assert fresh.is_trained
    np.testing.assert_array_equal(fresh.native_proba(probe), want)
    twin = student.clone()
    np.testing.assert_array_equal(twin.native_proba(probe), want)
    with torch.no_grad():
        next(twin.model.parameters()).zero_()  # the twin's weights are its own
    np.testing.assert_array_equal(student.native_proba(probe), want)


def test_same_seed_same_head():
    a = MiniLMStudent(LABELS, device="cpu", seed=3)
    b = MiniLMStudent(LABELS, device="cpu", seed=3)
    assert torch.equal(a.model.head.weight, b.model.head.weight)


def test_padding_does_not_change_a_texts_probabilities(trained):
    """Mean pooling must skip pad tokens: a short text scores the same alone as beside a long one."""
    student, _ = trained
    alone = student.native_proba(["great"])
    padded = student.model  # batch the two texts together by hand, so "great" really is padded
    enc = student.tokenizer(["great", "great " + "and wonderful " * 20], padding=True, return_tensors="pt")
    assert enc["attention_mask"][0].sum() < enc["attention_mask"][1].sum()
    with torch.inference_mode():
        together = torch.softmax(padded(**enc).logits, dim=-1)[0].numpy()
    np.testing.assert_allclose(alone[0], together, atol=1e-5)


def test_a_student_saved_by_the_older_cls_head_format_is_refused_clearly(trained, tmp_path):
    student, _ = trained
    student.save(tmp_path / "old")
    (tmp_path / "old" / "head.safetensors").unlink()
    with pytest.raises(UserError, match="older autoannotator"):  # the CLI prints it as one line
        MiniLMStudent(LABELS, device="cpu").load(tmp_path / "old")
