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
  """Loss (mean NLL), top-1, top-5, ECE and count of log-probabilities [N, C] and int labels [N].

  Probabilities or logits, and labels of another count or not whole numbers, are refused: they
  had given a loss of -0.009, an ECE of 1.03, or a broadcast top-1 (a library-user review)."""
  log_probs, given = np.asarray(log_probs, np.float64), np.asarray(labels)
  if log_probs.ndim != 2 or given.shape != log_probs.shape[:1]:
    raise ValueError(f'classification_metrics: log-probabilities [N, C] and labels [N], got shapes '
                     f'{log_probs.shape} and {given.shape}')
  if given.size and not (np.issubdtype(given.dtype, np.integer) or (
      np.issubdtype(given.dtype, np.floating) and np.all(given == np.round(given)))):
    raise ValueError(f'classification_metrics: labels are class numbers, got {given.dtype} values '
                     f'such as {given.ravel()[0]!r}')
  labels = given.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= log_probs.shape[1]):
    raise ValueError(f'classification_metrics: labels are 0..{log_probs.shape[1] - 1}, got '
                     f'{labels.min()}..{labels.max()}')
  numbers = log_probs[~np.isnan(log_probs)]  # (A diverged model's NaN rows are scored as such.)
  if numbers.size and numbers.max() > 1e-4:  # A log-probability is at most 0.
    raise ValueError(
        'classification_metrics takes log-probabilities (<= 0), got values up to '
        f'{numbers.max():.3g}: of probabilities give np.log(probs) (predict gives '
        'probabilities), of logits jax.nn.log_softmax(logits)')
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
