"""Softmax cross-entropy on the logits `(N, classes)`: the mean loss over the batch, as `F.cross_entropy`.

Two numerical modes:
- "stable" (default): log-sum-exp from max-shifted logits; dL/dlogits = (p - onehot) / N.
- "tutorial": `exp(totals) / sum` with no shift (overflows past ~709 in float64, ~88 in float32), loss -log p, and
  backward through the tutorial's `-1/p` initial gradient and its e^t / S^2 Jacobian.
"""

from __future__ import annotations

import numpy as np

from scratch._checks import check_choice

SOFTMAX_MODES = ("stable", "tutorial")


class SoftmaxCrossEntropy:
    """The network's loss: probabilities, the mean loss, and dL/dlogits, side by side."""

    def __init__(self, mode: str = "stable") -> None:
        self.mode = check_choice("softmax", mode, SOFTMAX_MODES)
        self._rows: dict[int, np.ndarray] = {}  # np.arange(N) by batch size: the row of each sample's label

    def _label_rows(self, batch: int) -> np.ndarray:
        if batch not in self._rows:
            self._rows[batch] = np.arange(batch)
        return self._rows[batch]

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities `(N, classes)`, mean loss as a 0-d array) for integer `labels` `(N,)`."""
        rows = self._label_rows(len(labels))
        self.labels, self.rows = labels, rows
        if self.mode == "tutorial":
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the overflow is shown, not warned
                self.exp = np.exp(logits)
                self.probs = self.exp / np.sum(self.exp, axis=1, keepdims=True)
                losses = -np.log(self.probs[rows, labels])
            return self.probs, _mean(losses)
        shift = np.maximum.reduce(logits, axis=1, keepdims=True)  # the ufunc itself: ndarray.max wraps it in Python
        exp = logits - shift
        np.exp(exp, out=exp)
        exp_sum = np.add.reduce(exp, axis=1, keepdims=True)
        # Shifted, every exp is <= 1 and the sum >= 1: the division cannot raise; NaN logits give NaN quietly.
        self.probs = exp / exp_sum
        losses = shift[:, 0] + np.log(exp_sum[:, 0]) - logits[rows, labels]  # log-sum-exp - logit of the label
        return self.probs, _mean(losses)

    def backward(self) -> np.ndarray:
        """dL/dlogits `(N, classes)` for the last forward."""
        rows, labels, batch = self.rows, self.labels, len(self.labels)
        if self.mode == "tutorial":
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                d_L_d_out = -1 / self.probs[rows, labels]  # the tutorial's first gradient, at the label only
                t_exp, t_label = self.exp, self.exp[rows, labels][:, np.newaxis]
                S = np.sum(t_exp, axis=1, keepdims=True)
                # The tutorial squares a NumPy scalar, which is C's pow() and can differ from S * S (what an array's
                # `** 2` computes) in the last bit: squared per sample the tutorial's way, it rounds as the tutorial.
                S_squared = np.array([[float(total) ** 2] for total in S[:, 0]], dtype=S.dtype)
                d_out_d_t = -t_label * t_exp / S_squared
                d_out_d_t[rows, labels] = (t_label * (S - t_label) / S_squared)[:, 0]
                d_L_d_t = d_L_d_out[:, np.newaxis] * d_out_d_t
        else:
            d_L_d_t = self.probs.copy()
            d_L_d_t[rows, labels] -= 1  # d(cross-entropy)/dlogits = p - onehot
        if batch > 1:
            d_L_d_t /= d_L_d_t.dtype.type(batch)  # the mean over the batch
        return d_L_d_t


def _mean(losses: np.ndarray) -> np.ndarray:
    return losses[0] if len(losses) == 1 else np.mean(losses)
