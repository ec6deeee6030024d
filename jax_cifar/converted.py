"""The converted checkpoint on disk: a folder of metadata.json (the arch, the head's classes, the
source, a sha256 of the arrays) and an orbax state of float32 arrays named as the models'
variables. Written whole (a temp folder renamed into place, so a kill leaves no partial output),
read back checked (its arch, no more values than that model holds, the sha256). Making one from
torchvision: convert.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from jax_cifar import atomic_folder, errors, step_folders
from jax_cifar import workdir
from jax_cifar.models import create_model
from jax_cifar.models.resnet import ARCHS as _RESNET_ARCHS


class ConversionError(errors.UserError, ValueError):
  """Weights that do not fit the architecture, or a file that is not what it should be."""


class OutputExistsError(errors.UserError, FileExistsError):
  """--output holds something the converter must not replace."""


class OutputPathError(errors.UserError, OSError):
  """--output's folder is a file or takes no files (found before converting)."""


ARCHS = tuple(_RESNET_ARCHS)
_METADATA_FILE = 'metadata.json'
_STATE_DIR = 'state'
_FORMAT = 'jax_cifar.convert/1'
# Test hook: the converter SIGKILLs itself at this named point ('before_rename': the temp folder
# is complete, the output untouched; 'after_rename': the new output is in place, the old one not
# yet deleted), so tests can show that no kill leaves a partial output.
KILL_ENV = 'JAX_CIFAR_CONVERT_KILL_AT'


def _flatten(tree: Mapping) -> Iterator[tuple[tuple, Any]]:
  """(path tuple, leaf) of a nested dict (empty sub-dicts dropped)."""
  return iter(traverse_util.flatten_dict(dict(tree)).items())


def _unflatten(items: Mapping[tuple, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(items))


def _dotted(path: tuple) -> str:
  return '.'.join(str(k) for k in path)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 of {dotted key: float32 array}: names, shapes and bytes, in key order. orbax reads
  flipped bits of a converted checkpoint back without a word (a byte changed in its data file
  gave other weights, and a NaN), so the converter records this and every read checks it."""
  h = hashlib.sha256()
  for key in sorted(arrays):
    value = np.ascontiguousarray(arrays[key], np.float32)
    h.update(f'{key}:{value.shape};'.encode())
    h.update(value.tobytes())
  return h.hexdigest()


def abstract_variables(arch: str, num_classes: int) -> tuple[nnx.State, nnx.State]:
  """(params, batch stats) of `create_model(arch, num_classes)` as ShapeDtypeStructs; no compute."""
  model = nnx.eval_shape(lambda: create_model(arch, num_classes, stem='imagenet', rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param, nnx.BatchStat)


# What Finder writes into a folder it shows: .DS_Store, and ._NAME (AppleDouble) files on file
# systems without extended attributes, known by their first bytes.
_DESKTOP_MAGIC = {'.DS_Store': b'\x00\x00\x00\x01Bud1', '._': b'\x00\x05\x16\x07'}


def _desktop_file(folder: str, name: str) -> bool:
  """Whether `folder/name` is a file Finder wrote: such files had blocked --overwrite (a portability
  review). Only a regular file with Finder's first bytes: a user's `._notes` or a folder is not one,
  and --overwrite refuses it (the diff review)."""
  magic = _DESKTOP_MAGIC.get(name) or (_DESKTOP_MAGIC['._'] if name.startswith('._') else None)
  path = os.path.join(folder, name)
  if magic is None or os.path.islink(path) or not os.path.isfile(path):
    return False
  try:
    with open(path, 'rb') as f:
      return f.read(len(magic)) == magic
  except OSError:
    return False


def _is_converted(path: str) -> bool:
  """True if `path` holds exactly what `save_converted` writes (state/ and our metadata.json)."""
  if sorted(e for e in os.listdir(path) if not _desktop_file(path, e)) != sorted((_METADATA_FILE,
                                                                                  _STATE_DIR)):
    return False
  try:
    with open(os.path.join(path, _METADATA_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError, RecursionError):
    return False
  return (isinstance(meta, dict) and meta.get('format') == _FORMAT
          and os.path.isdir(os.path.join(path, _STATE_DIR)))


def check_output(path: str, overwrite: bool, *, hint: str = 'pass overwrite=True') -> None:
  """Raises FileExistsError unless `path` is free, or `overwrite` and it holds only a previous
  converter output (or nothing): replacing must never delete files the converter did not write."""
  if why := workdir.orbax_cannot_use(path):
    raise OutputPathError(f'output {why}')
  if not os.path.lexists(path):
    _check_parent(path)
    return
  if os.path.islink(path) or not os.path.isdir(path):  # (Before the hint: --overwrite refuses it.)
    raise OutputExistsError(f'{path} is not a folder but a file or link; refusing to replace it')
  if not overwrite:
    raise OutputExistsError(f'{path} exists ({hint} to replace a previous converter output)')
  # (Finder's files alone, as an empty folder: replaced.)
  entries = sorted(e for e in os.listdir(path) if not _desktop_file(path, e))
  foreign = [e for e in entries if e not in (_METADATA_FILE, _STATE_DIR)]
  if foreign:
    shown = ', '.join(foreign[:5]) + (f' (+{len(foreign) - 5} more)' if len(foreign) > 5 else '')
    raise OutputExistsError(f'{path} holds files the converter did not write ({shown}); refusing '
                          'to replace it: move them away or choose another output')
  if entries and not _is_converted(path):
    raise OutputExistsError(f'{path} is not a converted checkpoint (its {_METADATA_FILE} is not '
                          f'{_FORMAT!r}); refusing to replace it')


def _check_parent(path: str) -> None:
  """Fails before any converting unless `path`'s folder exists or can be made, and takes files
  (workdir.why_unwritable's probe)."""
  parent = os.path.dirname(os.path.abspath(path))  # ('out' has no dirname: '' never exists.)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise OutputPathError(f'{path}: {parent} is a file, not a folder')
  why = workdir.why_unwritable(parent)
  if why:
    raise OutputPathError(f'{path}: cannot create files in {parent} ({why})')


class InterruptedAfterWrite(KeyboardInterrupt):
  """A Ctrl-C that `save_converted` held until its output was in place: that output is whole."""


def save_converted(pure_dict: Mapping, arch: str, path: str, *, source: str = '',
                   overwrite: bool = False) -> None:
  """Writes an orbax checkpoint plus metadata.json into a temp sibling, then renames it into place.

  A kill at any point leaves no output or a previous complete one. `overwrite` replaces only a
  previous output of this function (see `check_output`), swapped atomically on Linux. A Ctrl-C
  (in the main thread) is held until the write under way ends: KeyboardInterrupt then, with
  nothing published, or `InterruptedAfterWrite` if it came once the output was being put in place.
  """
  if arch not in ARCHS:
    raise ConversionError(f'unknown arch {arch!r}; allowed: {", ".join(ARCHS)}')
  path = os.path.abspath(workdir.expanded(path))  # '~/w' as read_converted reads it.
  check_output(path, overwrite)
  # Orbax wants string keys; list indices become '0', '1', ... and are matched back on load.
  tree = _unflatten({tuple(str(k) for k in p): np.asarray(v, np.float32)
                     for p, v in _flatten(pure_dict)})
  fc_kernel = tree.get('fc', {}).get('kernel')
  meta = {'format': _FORMAT, 'arch': arch, 'source': source,
          'num_classes': None if fc_kernel is None else int(fc_kernel.shape[1]),
          'sha256': _digest({_dotted(p): v for p, v in _flatten(tree)})}
  errors.drop_library_noise()  # A failed save's orbax tracebacks ("Event loop is closed").
  published = []  # (Set at the rename: a second Ctrl-C in the fsync after it finds it set.)
  try:
    with atomic_folder.sigint_held('Ctrl-C: stopping once the write under way ends (the next '
                                   'Ctrl-C stops at once)') as held:
      with atomic_folder.publish(path, lambda: check_output(path, overwrite), KILL_ENV,
                                 lambda: published.append(True)) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
          ckptr.save(os.path.join(tmp, _STATE_DIR), tree)
        with open(os.path.join(tmp, _METADATA_FILE), 'w') as f:
          json.dump(meta, f, indent=2)
        held.check()  # A Ctrl-C so far stops here, before anything is published.
  except KeyboardInterrupt:
    if published:  # It came during the rename or the old folder's removal: the output is whole.
      raise InterruptedAfterWrite(path) from None
    raise
  except Exception as e:  # pylint: disable=broad-except
    code = errors.os_error_code(e)
    if code is None or isinstance(e, OSError):
      raise  # (An OSError prints its file and reason already.)
    # A full disk came as tensorstore's ValueError, a bug's 650-line traceback (a review).
    raise ConversionError(f'writing {path} failed: {errors.os_reason(code, os.strerror(code))}; '
                          'nothing was written there') from e


def read_metadata(path: str, arch: str | None = None) -> dict:
  """metadata.json of a `save_converted` checkpoint (checked to hold `arch` if given): what a run
  checks before it reads any data."""
  path = workdir.expanded(path)
  if why := workdir.orbax_cannot_use(path):
    raise ConversionError(f'converted checkpoint {why}')
  meta_file = os.path.join(path, _METADATA_FILE)
  if not os.path.isfile(meta_file):
    if not os.path.exists(path):
      switch = path.strip().lower() in ('true', 'yes', '1', 'imagenet', 'default')
      raise ConversionError(f'{path}: no such converted checkpoint' + (
          ' (it is the folder of converted weights, not a switch as timm\'s pretrained=True: '
          'convert torchvision\'s ImageNet weights once, python -m jax_cifar.convert --arch ARCH '
          '--weights IMAGENET1K_V1 --output weights/ARCH, and give that folder)' if switch else ''))
    hint = (': a torchvision state_dict is converted first, with python -m jax_cifar.convert'
            if os.path.isfile(path) else '')
    if os.path.isfile(os.path.join(path, workdir.CONFIG_FILE)):  # A training run's folder.
      hint = (': it is a jax-cifar training run; start from its weights with '
              f'model.init_from={shlex.quote(str(path))} (or jax_cifar.load_model({path!r}) in '
              'Python)')
    raise ConversionError(f'{path} is not a converted checkpoint (no {_METADATA_FILE}){hint}')
  try:
    with open(meta_file) as f:
      meta = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    raise ConversionError(f'{meta_file} is unreadable ({type(e).__name__}: {e})') from e
  if not isinstance(meta, dict):
    raise ConversionError(f'{meta_file} is not a converter\'s metadata (not a JSON object)')
  if arch is not None and meta.get('arch') != arch:
    raise ConversionError(f'checkpoint {path} holds arch {meta.get("arch")!r}, model is {arch!r}')
  return meta


MAX_NUM_CLASSES = 100_000  # A head larger than ImageNet-21k's (21,843) is no converter's output.


def _check_declared_size(ckptr, state_dir: str, path: str, meta: dict) -> None:
  """Refuses a checkpoint whose arrays (as its files declare them) hold more values than a model
  of meta's arch and head: orbax reads each array whole at its declared shape, and a few KB of
  crafted files had declared gigabytes, or crashed the process in C++ (a security audit)."""
  declared = ckptr.metadata(state_dir)
  declared = getattr(declared, 'item_metadata', declared)  # (orbax versions differ here.)
  declared = getattr(declared, 'tree', declared)
  total = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(declared)
              if isinstance(getattr(leaf, 'shape', None), tuple))  # (An orbax that says less: 0.)
  arch, num_classes = meta.get('arch'), meta.get('num_classes')
  if arch not in ARCHS:
    raise ConversionError(f'{path}: its {_METADATA_FILE} names arch {arch!r}, not one of '
                          f'{", ".join(ARCHS)}')
  if num_classes is not None and not (type(num_classes) is int  # pylint: disable=unidiomatic-typecheck
                                      and 0 < num_classes <= MAX_NUM_CLASSES):
    raise ConversionError(f'{path}: its {_METADATA_FILE} gives num_classes {num_classes!r}, not '
                          f'null or 1..{MAX_NUM_CLASSES:,}')
  limit = sum(math.prod(v.shape) for state in abstract_variables(arch, num_classes or 0)
              for v in jax.tree_util.tree_leaves(state))
  if total > limit:
    head = f'a head of {num_classes} classes' if num_classes else 'no head'
    raise ConversionError(f'{path}: its arrays declare {total:,} values, more than a {arch} with '
                          f'{head} holds ({limit:,}): not a converter\'s output')


def read_converted(path: str, arch: str | None = None) -> tuple[dict, dict]:
  """Returns (metadata, {dotted key: float32 numpy array}) of a `save_converted` checkpoint
  (checked to hold `arch` first, if given)."""
  path = workdir.expanded(path)
  meta = read_metadata(path, arch)
  errors.drop_library_noise()  # A failed read's leftovers print pages.
  state_dir = os.path.abspath(os.path.join(path, _STATE_DIR))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      _check_declared_size(ckptr, state_dir, path, meta)
      tree = ckptr.restore(state_dir)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore: missing or cut files)
    raise ConversionError(
        f'{path} is a damaged converted checkpoint ({type(e).__name__}: '
        f'{step_folders.root_cause(e)}); convert the '
        'torchvision weights again: python -m jax_cifar.convert ... --output '
        f'{shlex.quote(str(path))} '
        '--overwrite') from None
  arrays = {_dotted(p): np.asarray(v, np.float32) for p, v in _flatten(tree)}
  recorded = meta.get('sha256')  # (Outputs of converters before it have none: read as they are.)
  if recorded is not None and not (isinstance(recorded, str) and len(recorded) == 64):
    raise ConversionError(f'{path}: its {_METADATA_FILE} gives sha256 {recorded!r}, not a digest '
                          'of the converter\'s (64 hex digits); convert the weights again')
  if recorded is not None and recorded != _digest(arrays):
    raise ConversionError(
        f'{path} is a damaged converted checkpoint: its arrays are not the ones converted (the '
        f'sha256 in its {_METADATA_FILE} differs); convert the torchvision weights again: '
        f'python -m jax_cifar.convert ... --output {shlex.quote(str(path))} --overwrite')
  return meta, arrays
