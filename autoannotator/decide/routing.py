"""Which rows go to the LLM: the paper's counting rule, and a rule on the label model's posterior.

``paper``: U(x) >= epsilon (``ensemble.is_hard``), U = 1 - top vote share. Kept unchanged: it is
what the project reproduces.

``calibrated``: ask the LLM for a row when asking is expected to make its label more likely
right. With the row's posterior p over the labels and the LLM's estimated confusion matrix
C[c, y] = P(LLM says y | true c), the expected accuracy after hearing the answer is

    sum_y max_c p[c] * C[c, y]       (decide by the updated posterior, whatever y is)

and the gain is that minus max_c p[c], the accuracy of deciding now. The gain is never negative;
it is positive only when some answer would change the decision. For two labels and an LLM right
with probability q on either class it is exactly max(0, q - confidence): "ask when the LLM is more
likely right than the row's current label". A row is routed when its gain is at least ``margin``
(the expected accuracy one call must buy; 0.0 by default: any positive gain). Nothing here is
fitted to a data set: the rule adapts through the estimated confusions, so an LLM that answers one
label for everything (every column of C alike) gains nothing and is asked only for the audit.
"""

from __future__ import annotations

import numpy as np

from autoannotator.ensemble import is_hard

ROUTINGS = ("paper", "calibrated")
GAIN_FLOOR = 1e-9  # float noise in the gain of a row no answer can flip


def paper_route(uncertainty: np.ndarray, epsilon: float) -> np.ndarray:
    """The paper's rule as a mask; NaN (no text to label) is never hard."""
    u = np.asarray(uncertainty, dtype=np.float64)
    return np.where(np.isnan(u), False, is_hard(np.nan_to_num(u, nan=0.0), epsilon))


def expected_gain(posterior: np.ndarray, llm_confusion: np.ndarray) -> np.ndarray:
    """Expected gain in P(label right) from one LLM answer per row, [n] (see module docstring)."""
    p = np.asarray(posterior, dtype=np.float64)
    c = np.asarray(llm_confusion, dtype=np.float64)
    joint = p[:, :, None] * c[None, :, :]  # [n, true, answer]
    after = joint.max(axis=1).sum(axis=1)
    return np.maximum(after - p.max(axis=1), 0.0)


def calibrated_route(posterior: np.ndarray, llm_confusion: np.ndarray, margin: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows to ask, their gain): ask when the gain is at least ``margin`` and positive."""
    gain = expected_gain(posterior, llm_confusion)
    return (gain >= margin) & (gain > GAIN_FLOOR), gain


def route(routing: str, *, uncertainty: np.ndarray | None = None, epsilon: float = 1e-6,
          posterior: np.ndarray | None = None, llm_confusion: np.ndarray | None = None, margin: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray]:
    """(mask, priority) for either rule; priority orders rows for a budget (higher = ask first).

    The paper rule's priority is U(x); the calibrated rule's is the expected gain.
    """
    if routing == "paper":
        if uncertainty is None:
            raise ValueError("paper routing needs the uncertainty U(x)")
        u = np.asarray(uncertainty, dtype=np.float64)
        return paper_route(u, epsilon), np.nan_to_num(u, nan=0.0)
    if routing == "calibrated":
        if posterior is None or llm_confusion is None:
            raise ValueError("calibrated routing needs the posterior and the LLM's confusion")
        return calibrated_route(posterior, llm_confusion, margin)
    raise ValueError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
