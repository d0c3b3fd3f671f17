"""The label model on synthetic votes whose reliabilities are known."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.decide.label_model import LabelModel, majority_vote, one_coin, wilson

SOURCES = ["good", "mid", "weak", "llm"]


def simulate(n: int, n_labels: int, accs: list[float], seed: int, constant: dict[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Truth and [n, m] votes: source j right with accs[j], else a uniformly other label;
    ``constant`` maps a source to the one label it always answers."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_labels, size=n)
    votes = np.empty((n, len(accs)), dtype=np.int64)
    for j, a in enumerate(accs):
        wrong = (y + rng.integers(1, n_labels, size=n)) % n_labels
        votes[:, j] = np.where(rng.random(n) < a, y, wrong)
    for j, label in (constant or {}).items():
        votes[:, j] = label
    return y, votes


@pytest.mark.parametrize("n_labels", [2, 3])
@pytest.mark.parametrize("llm_acc", [0.9, 0.4])
def test_recovers_known_accuracies_and_beats_majority(n_labels: int, llm_acc: float) -> None:
    accs = [0.95, 0.7, 0.6, llm_acc]
    y, votes = simulate(4000, n_labels, accs, seed=n_labels * 10 + int(llm_acc * 10))
    model = LabelModel(n_labels, SOURCES).fit(votes)
    rel = model.reliability()
    for name, true_acc in zip(SOURCES, accs):
        assert abs(rel[name].accuracy - true_acc) < 0.04, (name, rel[name].accuracy, true_acc)
    post_acc = (model.posterior(votes).argmax(axis=1) == y).mean()
    mv_acc = (majority_vote(votes, n_labels) == y).mean()
    assert post_acc > mv_acc + 0.02


def test_bad_llm_does_not_override_confident_agreement() -> None:
    y, votes = simulate(3000, 3, [0.95, 0.7, 0.6, 0.4], seed=7)
    model = LabelModel(3, SOURCES).fit(votes)
    post = model.posterior(votes)
    slms_agree = (votes[:, 0] == votes[:, 1]) & (votes[:, 1] == votes[:, 2])
    llm_dissents = slms_agree & (votes[:, 3] != votes[:, 0])
    assert llm_dissents.sum() > 100
    assert (post[llm_dissents].argmax(axis=1) == votes[llm_dissents, 0]).all()
    verdict = model.llm_verdict(votes, "llm")
    assert verdict.unreliable and verdict.llm_accuracy < 0.5 < verdict.slm_consensus_accuracy


def test_good_llm_is_trusted_over_weak_slms() -> None:
    y, votes = simulate(3000, 2, [0.7, 0.65, 0.6, 0.92], seed=3)
    model = LabelModel(2, SOURCES).fit(votes)
    verdict = model.llm_verdict(votes, "llm")
    assert not verdict.unreliable
    post = model.posterior(votes)
    # two weak SLMs agreeing against the LLM lose to it
    against = (votes[:, 0] == votes[:, 1]) & (votes[:, 3] != votes[:, 0])
    assert (post[against].argmax(axis=1) == votes[against, 3]).mean() > 0.9


def test_constant_answer_llm_is_judged_uninformative() -> None:
    """The README's failure: an LLM that answers one label for everything."""
    y, votes = simulate(2000, 2, [0.85, 0.7, 0.65, 0.0], seed=11, constant={3: 1})
    model = LabelModel(2, SOURCES).fit(votes)
    conf = model.confusion("llm")
    assert conf[0, 1] > 0.9 and conf[1, 1] > 0.9  # says 1 whatever the truth
    assert model.llm_verdict(votes, "llm").unreliable
    mv3 = majority_vote(votes[:, :3], 2)
    assert (model.posterior(votes).argmax(axis=1) == y).mean() >= (mv3 == y).mean() - 0.005


def test_fit_mask_removes_a_copying_student() -> None:
    """A student that copies the LLM on its training rows would vouch for a bad LLM; masked, it cannot."""
    y, votes = simulate(3000, 2, [0.8, 0.75, 0.7, 0.55], seed=5)
    student = votes[:, 3].copy()  # on its training rows the student repeats the LLM label
    trained = np.zeros(len(y), dtype=bool)
    trained[:2000] = True
    rng = np.random.default_rng(1)
    own = np.where(rng.random(len(y)) < 0.85, y, 1 - y)
    student[~trained] = own[~trained]
    all_votes = np.column_stack([votes, student])
    names = SOURCES + ["student"]
    unmasked = LabelModel(2, names).fit(all_votes).reliability()
    mask = np.ones_like(all_votes, dtype=bool)
    mask[trained, 4] = False
    masked = LabelModel(2, names).fit(all_votes, fit_mask=mask).reliability()
    assert unmasked["llm"].accuracy > 0.65  # fooled by the copy
    assert abs(masked["llm"].accuracy - 0.55) < 0.05
    assert abs(masked["student"].accuracy - 0.85) < 0.05
    assert masked["student"].n_votes == pytest.approx(1000, abs=1)


def test_thin_data_shrinks_toward_one_coin() -> None:
    y, votes = simulate(12, 3, [0.9, 0.8, 0.7, 0.9], seed=2)
    model = LabelModel(3, SOURCES).fit(votes)
    for name in SOURCES:
        conf = model.confusion(name)
        assert np.allclose(conf.sum(axis=1), 1.0)
        assert (conf > 0.01).all()  # no zero from a dozen rows
        assert np.diag(conf).min() > 0.4


def test_anchors_clamp_and_abstentions() -> None:
    y, votes = simulate(500, 2, [0.9, 0.7, 0.6, 0.9], seed=4)
    votes[::3, 1] = -1
    votes[5] = -1  # nobody voted on row 5
    model = LabelModel(2, SOURCES).fit(votes, anchors={0: (1 - int(y[0]), 1.0)})
    post = model.posterior(votes, anchors={0: (1 - int(y[0]), 1.0)})
    assert post[0].argmax() == 1 - y[0]
    assert np.allclose(post[5], model.class_prior())


def test_deterministic_and_state_roundtrip() -> None:
    _, votes = simulate(800, 3, [0.9, 0.7, 0.6, 0.9], seed=9)
    a = LabelModel(3, SOURCES).fit(votes)
    b = LabelModel(3, SOURCES).fit(votes)
    assert np.array_equal(a.posterior(votes), b.posterior(votes))
    c = LabelModel(3, SOURCES).load_state_dict(a.state_dict())
    assert np.allclose(c.posterior(votes), a.posterior(votes))
    warm = LabelModel(3, SOURCES).load_state_dict(a.state_dict()).fit(votes, warm_start=True)
    assert warm.n_iter < a.n_iter or a.n_iter <= 2


def test_rejects_bad_votes() -> None:
    model = LabelModel(2, ["a", "b"])
    with pytest.raises(ValueError):
        model.fit(np.array([[0, 2]]))
    with pytest.raises(ValueError):
        model.fit(np.array([[0, 1, 1]]))


def test_helpers() -> None:
    assert np.allclose(one_coin(0.7, 3), [[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]])
    lo, hi = wilson(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.13
