"""Prediction and its numbers: the compiled prediction path the trainer validates with
(inference.py), metrics, test-time augmentation and BatchNorm adaptation, the Kaggle submission CSV
and the report of several runs. Imports nothing of training/."""
