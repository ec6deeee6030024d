"""Data sources, splits and (in pipeline.py) the grain input pipeline."""

from jax_cifar.data.cifar100 import (
    DataError,
    Split,
    balanced_subset,
    class_names,
    get_splits,
    load_split,
    read_pickle,
    resolve_data_dir,
    stratified_split,
    synthetic_split,
)
from jax_cifar.data.tfds_source import load_tfds

__all__ = [
    'DataError',
    'Split',
    'balanced_subset',
    'class_names',
    'get_splits',
    'load_split',
    'load_tfds',
    'read_pickle',
    'resolve_data_dir',
    'stratified_split',
    'synthetic_split',
]
