"""Classification metrics on host arrays: top-k accuracy, calibration (ECE), per-class and confusion.

Everything takes per-example log-probabilities [N, C] and integer labels [N], so the same code serves
plain predictions and test-time augmentation (flip or shifted views: an average of probabilities).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def top_k_accuracy(log_probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the k highest scores (ties broken by index)."""
  k = min(k, log_probs.shape[-1])
  top = np.argsort(-log_probs, axis=-1, kind='stable')[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
  """ECE over `bins` equal-width confidence bins (lo, hi]: sum_b |acc_b - conf_b| * n_b / N."""
  confidence = probs.max(axis=-1)
  correct = probs.argmax(axis=-1) == labels
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.searchsorted(edges, confidence, side='left') - 1, 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    in_bin = which == b
    if in_bin.any():
      ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.mean()
  return float(ece)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [true, predicted] counts."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def group_accuracy(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                   num_groups: int) -> np.ndarray:
  """Accuracy within each group (e.g. class or superclass of the true label); NaN for empty groups."""
  correct = np.bincount(groups, weights=(predictions == labels), minlength=num_groups)
  count = np.bincount(groups, minlength=num_groups)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, correct / np.maximum(count, 1), np.nan)


def classification_metrics(log_probs: np.ndarray, labels: np.ndarray) -> dict:
  """Loss (mean NLL), top-1, top-5, ECE and count."""
  log_probs = np.asarray(log_probs, np.float64)
  labels = np.asarray(labels, np.int64)
  nll = -log_probs[np.arange(len(labels)), labels]
  return {
      'loss': float(nll.mean()),
      'accuracy': float(np.mean(log_probs.argmax(-1) == labels)),
      'top5_accuracy': top_k_accuracy(log_probs, labels, 5),
      'ece': expected_calibration_error(np.exp(log_probs), labels),
      'count': int(len(labels)),
  }


def named(values: np.ndarray, names: list[str]) -> dict[str, float | None]:
  """{name: value} for JSON (NaN -> None)."""
  return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values)}
