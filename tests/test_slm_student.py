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
    # its own tokenizer too: a background round uses the twin from another thread (finetune.overlap)
    assert twin.tokenizer is not student.tokenizer
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


def test_bucketed_batches_cover_each_row_once_with_less_padding():
    from autoannotator.slm.student import bucketed_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    batches = bucketed_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)

    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    random_batches = np.array_split(rng.permutation(1000), 63)
    assert padded(batches) < 0.8 * padded(random_batches)


def test_sample_weights_decide_which_labels_the_student_learns():
    """Each text twice, with its label and with the other: the weights say which copy counts."""
    student = MiniLMStudent(LABELS, device="cpu", seed=0)
    few, few_y = POS[:6] + NEG[:6], np.array([0] * 6 + [1] * 6)  # half the toy set: a CPU test stays short
    texts = few + few
    y = np.concatenate([few_y, 1 - few_y])
    w = np.concatenate([np.ones(len(few_y)), np.full(len(few_y), 0.02)])
    metrics = student.train_on(texts, y, CFG, sample_weight=w)
    assert metrics["weight_mean"] == pytest.approx(w.mean(), abs=1e-3) and metrics["amp"] == "fp32"
    assert (student.predict(TEXTS).votes == Y).mean() >= 0.8  # right on the 12 it saw and the 12 it did not
    with pytest.raises(ValueError, match="sample weights"):
        student.train_on(TEXTS, Y, CFG, sample_weight=-np.ones(len(Y)))


def test_a_round_continues_from_the_current_weights(trained):
    student, _ = trained
    twin = student.clone()
    before = twin.native_proba(TEXTS)
    frozen = CFG.model_copy(update={"lr": 0.0, "head_lr": 0.0})
    twin.train_on(TEXTS[:4], Y[:4], frozen, epochs=1)
    assert twin.rounds == student.rounds + 1
    np.testing.assert_allclose(twin.native_proba(TEXTS), before, atol=1e-6)  # lr 0: nothing re-initialised
    twin.train_on(POS[:2] + NEG[:2], np.array([0, 0, 1, 1]), CFG, epochs=1)  # a small round keeps what it knew
    assert (twin.predict(TEXTS).votes == Y).mean() >= 0.8
