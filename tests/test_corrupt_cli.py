"""`python -m jax_cifar.corrupt` under bad input and reruns with other options (interruptions:
test_corrupt_interrupt.py).

Runs on a tiny synthetic cifar-100-python/ (40 random test images, tests/corrupt_runs.py), so no
real data is needed.
"""

import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from corrupt_runs import ARGS, FILES, error_line, make_source, read_manifest, reference_set, run
from corrupt_runs import snapshot
from jax_cifar.corruptions import cli as corrupt_cli
from jax_cifar.corruptions import corrupt
from jax_cifar.corruptions import store as corrupt_store
from jax_cifar.data import ood


@pytest.fixture(scope='module')
def source(tmp_path_factory) -> pathlib.Path:
  return make_source(tmp_path_factory.mktemp('src'))


@pytest.fixture(scope='module')
def reference(source, tmp_path_factory) -> dict[str, bytes]:  # pylint: disable=redefined-outer-name
  return reference_set(source, tmp_path_factory.mktemp('ref') / 'set')


def test_rerun_with_other_options_is_refused_until_overwrite(source, tmp_path, reference):
  out = tmp_path / 'set'
  assert run(source, out, *ARGS).returncode == 0
  before = snapshot(out)
  line = error_line(run(source, out, '--limit', '10', '--corruptions', 'gaussian_noise', '--seed', '1'))
  assert '--limit' in line and '--overwrite' in line and str(out) in line
  assert '--seed' in error_line(run(source, out, *ARGS[:2], '--seed', '2', *ARGS[4:]))
  assert '--format' in error_line(run(source, out, *ARGS, '--format', 'cifar100c'))
  assert snapshot(out) == before  # Nothing mixed in, nothing removed.
  # --overwrite replaces the whole set: no 6-image file survives next to the 10-image ones.
  result = run(source, out, '--limit', '10', '--corruptions', 'gaussian_noise', '--overwrite')
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in out.iterdir()) == ['corrupt_manifest.json', FILES[0], 'labels.npy']
  assert ood.check_image_file(out / FILES[0]).num_images == 50
  assert len(np.load(out / 'labels.npy')) == 50
  manifest = read_manifest(out)
  assert (manifest['num_images'], manifest['limit'], manifest['seed']) == (10, 10, 0)
  assert manifest['corruptions'] == ['gaussian_noise'] and manifest['format'] == 'ds542'


def test_same_options_resume_keep_complete_files_and_add_corruptions(source, tmp_path, reference):
  out = tmp_path / 'set'
  assert run(source, out, *ARGS[:4], '--corruptions', 'fog,gaussian_noise').returncode == 0
  inode = (out / FILES[2]).stat().st_ino
  result = run(source, out, *ARGS)  # Same options, two more corruptions.
  assert result.returncode == 0, result.stderr
  assert f'{FILES[2]}: already complete, kept' in result.stdout
  assert (out / FILES[2]).stat().st_ino == inode  # Not rewritten.
  # Its last lines count the same files (labels.npy had been counted as a 5th).
  assert f'(4 of 4 files complete)\ndone: 4 corruption files and labels.npy in {out}\n' in (
      result.stdout), result.stdout
  assert snapshot(out) == reference  # Including the manifest: order of runs does not matter.
  manifest = read_manifest(out)
  assert all(manifest['files'][f]['complete'] for f in FILES + ['labels.npy'])
  # A complete file damaged (same size) or deleted since is found and written again.
  damaged = bytearray((out / FILES[1]).read_bytes())
  damaged[-1] ^= 0xFF
  (out / FILES[1]).write_bytes(bytes(damaged))
  (out / FILES[3]).unlink()
  result = run(source, out, *ARGS)
  assert result.returncode == 0 and f'{out / FILES[1]} does not match' in result.stderr, result.stderr
  assert snapshot(out) == reference


def test_output_files_without_a_manifest_are_refused(source, tmp_path):
  out = tmp_path / 'foreign'
  out.mkdir()
  np.save(out / 'distortion00.npy', np.zeros((5, 32, 32, 3), np.uint8))
  line = error_line(run(source, out, *ARGS))
  assert 'distortion00.npy' in line and 'corrupt_manifest.json' in line and 'move them away' in line
  assert sorted(p.name for p in out.iterdir()) == ['distortion00.npy']
  # They may be the course's own files: --overwrite does not delete them either (it had).
  assert 'move them away' in error_line(run(source, out, *ARGS, '--overwrite'))
  assert sorted(p.name for p in out.iterdir()) == ['distortion00.npy']
  (out / 'corrupt_manifest.json').write_text('{"format": ')  # Truncated manifest.
  assert 'corrupt_manifest.json: unreadable' in error_line(run(source, out, *ARGS))


def test_files_the_manifest_does_not_record_are_never_removed(tmp_path):
  """A rerun had deleted every file whose name it could write unless the manifest recorded it
  complete, so a user's own distortion00.npy or fog.npy beside a set vanished without a word, and
  --overwrite deleted the other format's files too (an audit). This format's unrecorded names
  are refused, the other format's are left alone, and --overwrite replaces only the old set."""
  images, labels = np.zeros((1, 32, 32, 3), np.uint8), np.array([3])
  out = tmp_path / 'set'
  contrast = ood.distortion_file(ood.CORRUPTIONS.index('contrast'))
  corrupt.build(out, images, labels, names=('brightness',))
  np.save(out / 'fog.npy', np.ones((5, 32, 32, 3), np.uint8))  # A CIFAR-100-C file of the user's.
  corrupt.build(out, images, labels, names=('brightness',))
  corrupt.build(out, images, labels, names=('contrast',), seed=1, overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == [  # The old set's brightness file is gone.
      'corrupt_manifest.json', contrast, 'fog.npy', 'labels.npy']
  assert np.load(out / 'fog.npy').min() == 1
  mine = np.full((5, 32, 32, 3), 7, np.uint8)
  np.save(out / 'distortion00.npy', mine)  # The course's file, say.
  for overwrite in (False, True):
    with pytest.raises(corrupt_store.OutputError, match='distortion00.npy, which its '
                       'corrupt_manifest.json does not record.*never replaces them'):
      corrupt.build(out, images, labels, names=('contrast',), seed=1, overwrite=overwrite)
  assert (np.load(out / 'distortion00.npy') == mine).all() and (out / contrast).exists()


def test_a_folder_that_takes_no_files_reruns_a_complete_set_and_names_itself_otherwise(
    tmp_path, monkeypatch):
  """In a read-only folder (simulated where the manifest is renamed into place: root ignores
  permissions) a rerun of a complete set failed with a PermissionError naming the hidden
  .corrupt_manifest.json.part (an audit). A rerun that changes nothing writes nothing; one that
  must write names the folder and keeps the complete files."""
  images, labels = np.zeros((1, 32, 32, 3), np.uint8), np.array([3])
  out = tmp_path / 'set'
  corrupt.build(out, images, labels, names=('brightness',))
  before = snapshot(out)

  def refused(*args):
    raise PermissionError(13, 'Permission denied', str(args[0]))

  monkeypatch.setattr(corrupt_store.os, 'replace', refused)
  corrupt.build(out, images, labels, names=('brightness',))
  with pytest.raises(corrupt_store.OutputError) as e:
    corrupt.build(out, images, labels, names=('contrast',))
  assert str(e.value) == (f'{out}: cannot write corrupt_manifest.json (Permission denied); the '
                          'files it recorded complete are kept')
  assert snapshot(out) == before


@pytest.mark.parametrize('damage, reason', [
    (lambda m: None, 'not a JSON object but NoneType'),
    (lambda m: {**m, 'files': list(m['files'])}, "'files' is not an object of file entries"),
    (lambda m: {**m, 'files': {k: {'complete': True, 'sha256': 'x'} for k in m['files']}},
     'has no bytes / sha256'),
    (lambda m: {**m, 'corruptions': 'fog'}, "'corruptions' is not a list of names"),
])
def test_a_hand_edited_manifest_is_unreadable_and_the_set_is_kept(source, tmp_path, damage,
                                                                  reason):
  """Each of these had given a TypeError / ValueError / KeyError traceback."""
  out = tmp_path / 'set'
  assert run(source, out, '--limit', '5', '--corruptions', 'fog').returncode == 0
  manifest = out / corrupt_store.MANIFEST
  manifest.write_text(json.dumps(damage(read_manifest(out))))
  before = snapshot(out)
  line = error_line(run(source, out, '--limit', '5', '--corruptions', 'fog'))
  assert 'corrupt_manifest.json: unreadable' in line and reason in line, line
  assert snapshot(out) == before


def test_missing_source_data_is_one_error_line(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  offline = {'https_proxy': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9',
             'no_proxy': '', 'NO_PROXY': ''}  # The download fails at once, without the network.
  line = error_line(run(empty, tmp_path / 'out', *ARGS, env=offline))
  assert 'cannot download' in line and str(empty) in line
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case', ['truncated_pickle', 'unknown_name', 'empty_names', 'negative_limit',
                                  'limit_too_big', 'bad_format', 'out_under_a_file', 'out_is_a_file',
                                  'frost_not_an_image', 'frost_too_small', 'out_empty'])
def test_bad_input_is_one_error_line(source, tmp_path, case, capsys, monkeypatch):
  data, out, args = source, tmp_path / 'out', list(ARGS)
  if case == 'truncated_pickle':
    data = tmp_path / 'data'
    (data / 'cifar-100-python').mkdir(parents=True)
    for name in ('test', 'train', 'meta'):
      (data / 'cifar-100-python' / name).write_bytes((source / 'cifar-100-python' / 'test').read_bytes()[:500])
  args[5] = {'unknown_name': 'gausian_noise,fog', 'empty_names': ' , '}.get(case, args[5])
  args[1] = {'negative_limit': '-1', 'limit_too_big': '41'}.get(case, args[1])
  if case == 'bad_format':
    args += ['--format', 'imagenet-c']
  if case.startswith('frost_'):  # --frost_dir: the official photographs, checked before any work.
    frost = tmp_path / 'frost'
    frost.mkdir()
    for name in ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg'):
      Image.fromarray(np.full((100, 120, 3), 200, np.uint8)).save(frost / name)
    if case == 'frost_not_an_image':
      (frost / 'frost1.png').write_text('not a png')
    args += ['--frost_dir', str(frost)]
  if case in ('out_under_a_file', 'out_is_a_file'):
    (tmp_path / 'file').write_text('x')
    out = tmp_path / 'file' / 'out' if case == 'out_under_a_file' else tmp_path / 'file'
  if case == 'out_empty':  # '' is the current folder: the set had been written there.
    out = ''
    monkeypatch.chdir(tmp_path)
  try:
    code = corrupt_cli.main(['--data_dir', str(data), '--out', str(out), *args])
  except SystemExit as e:  # argparse's errors.
    code = e.code
  lines = capsys.readouterr().err.strip().splitlines()
  assert code != 0 and len(lines) == 1 and lines[0].startswith('error: '), (code, lines)
  expected = {'truncated_pickle': 'cifar-100-python/test', 'unknown_name': "did you mean 'gaussian_noise'",
              'empty_names': '--corruptions is empty', 'negative_limit': '--limit must be >= 0',
              'limit_too_big': 'exceeds the 40 test images', 'bad_format': "'imagenet-c'",
              'out_under_a_file': 'cannot use as output folder', 'out_is_a_file': 'cannot use as output folder',
              'frost_not_an_image': 'frost1.png: not a readable image',
              'frost_too_small': 'frost1.png: 120x100 pixels, 24x20 after the 0.2 shrink',
              'out_empty': 'argument --out: is empty: give the folder for the corrupted set'}
  assert expected[case] in lines[0]
  assert not (tmp_path / 'out').exists()
  assert not list(tmp_path.glob('*.npy')) and not list(tmp_path.glob('*.json'))


def test_each_file_is_independent_of_the_other_corruptions_and_their_order(tmp_path):
  images = np.random.default_rng(3).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(7)
  corrupt.build(tmp_path / 'a', images, labels, seed=4, names=('fog',))
  corrupt.build(tmp_path / 'b', images, labels, seed=4, names=('snow', 'gaussian_noise', 'fog'))
  corrupt.build(tmp_path / 'c', images, labels, seed=4, names=('fog', 'snow'))
  fog, snow = ood.distortion_file(11), ood.distortion_file(9)
  assert (tmp_path / 'a' / fog).read_bytes() == (tmp_path / 'b' / fog).read_bytes()
  assert (tmp_path / 'b' / fog).read_bytes() == (tmp_path / 'c' / fog).read_bytes()
  assert (tmp_path / 'b' / snow).read_bytes() == (tmp_path / 'c' / snow).read_bytes()
  # The streamed writer gives exactly np.save's bytes.
  np.save(tmp_path / 'ref.npy', np.load(tmp_path / 'a' / fog))
  assert (tmp_path / 'ref.npy').read_bytes() == (tmp_path / 'a' / fog).read_bytes()


def test_split_val_corrupts_the_trainers_validation_images(tmp_path, cifar_dir, capsys):
  """--split val: the images and labels are the first of the validation split the trainer holds
  out with the same val_fraction / split_seed (the default config's), never test images."""
  from jax_cifar.configs import default  # pylint: disable=g-import-not-at-top
  from jax_cifar.data import cifar100  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'val'
  assert corrupt_cli.main(['--data_dir', str(cifar_dir), '--out', str(out), '--split', 'val',
                       '--limit', '6', '--corruptions', 'brightness']) == 0
  data = default.get_config().data
  data.dir = str(cifar_dir)
  val = cifar100.get_splits(data)['val']
  np.testing.assert_array_equal(np.load(out / 'labels.npy'), np.tile(val.labels[:6], 5))
  expected = corrupt.corrupt(val.images[:6], 'brightness', 1, np.random.default_rng(0))
  got = np.load(out / ood.distortion_file(ood.CORRUPTIONS.index('brightness')))
  np.testing.assert_array_equal(got[:6], expected)  # Brightness draws no random numbers.
  assert read_manifest(out)['split'] == 'val'
  # Into the same folder with another split or hold-out: named (all had blamed --data_dir alone).
  for args, said in ((['--split', 'test'], "--split: 'val' there, 'test' asked"),
                     (['--split', 'val', '--split_seed', '3'],
                      'the source images and labels (--data_dir, --split, --val_fraction, '
                      '--split_seed): differ')):
    capsys.readouterr()
    assert corrupt_cli.main(['--data_dir', str(cifar_dir), '--out', str(out), *args, '--limit', '6',
                             '--corruptions', 'brightness']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and f'holds a set built with other options ({said})' in err, err
  for args, message in (
      (['--split', 'val', '--val_fraction', '0'], '--val_fraction must be in (0, 1) with --split '
       'val, got 0.0'),
      (['--split', 'val', '--val_fraction', '1e-6'], '--val_fraction 1e-06 holds out no '
       'validation images'),
      (['--split', 'val', '--split_seed', '-1'], "--split_seed must be in [0, 2**32 - 1] "
       "(data.split_seed's range), got -1"),
      (['--split', 'val', '--split_seed', str(2**32)], "--split_seed must be in [0, 2**32 - 1] "
       f"(data.split_seed's range), got {2**32}"),  # Just past the top (2**33 let <= 2**32 pass).
      (['--val_fraction', '0.2'], '--val_fraction: used only with --split val')):
    capsys.readouterr()
    assert corrupt_cli.main(['--data_dir', str(cifar_dir), '--out', str(tmp_path / 'bad'), *args,
                         '--corruptions', 'fog']) == 1
    assert capsys.readouterr().err.strip() == f'error: {message}'
  # The flag the user typed is named (it had said data.dir, the trainer's config key).
  assert corrupt_cli.main(['--data_dir', str(tmp_path / 'typo'), '--out', str(tmp_path / 'bad'),
                           '--corruptions', 'fog']) == 1
  assert capsys.readouterr().err.strip().startswith(
      f'error: --data_dir {tmp_path / "typo"} is not an existing folder')
  assert not (tmp_path / 'bad').exists()


@pytest.mark.parametrize('blocks,match', [
    ([np.zeros((3, 32, 32, 3), np.uint8)], '3 rows written, expected 5'),
    ([np.zeros((5, 32, 32, 3), np.float32)], 'block float32'),
    ([np.zeros((5, 32, 32), np.uint8)], 'block uint8 \\(5, 32, 32\\)')])
def test_a_file_whose_blocks_do_not_fill_its_header_is_never_renamed_into_place(
    tmp_path, blocks, match):
  """A generator yielding too few rows (or another dtype or shape) would leave a .npy whose
  header promises more than it holds, recorded complete with a sha256: refused, nothing kept."""
  options = {k: 0 for k in corrupt_store.SET_OPTIONS} | {'format': 'ds542'}
  with corrupt_store.OutputDir(tmp_path / 'out', options) as out:
    out.request(['fog'])
    with pytest.raises(ValueError, match=match):
      out.write(ood.distortion_file(11), (5, 32, 32, 3), np.uint8, blocks, corruption='fog')
    assert out.progress() == (0, 1)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [corrupt_store.MANIFEST]


def test_a_home_relative_out_is_the_home_folder(source, tmp_path, capsys, monkeypatch):
  """--out=~/ood (the shell leaves that ~) had written the set into ./~/ood."""
  monkeypatch.setenv('HOME', str(tmp_path))
  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  assert corrupt_cli.main(['--data_dir', str(source), '--out=~/ood', '--limit', '4',
                           '--corruptions', 'brightness']) == 0, capsys.readouterr().err
  assert read_manifest(tmp_path / 'ood')['num_images'] == 4
  assert not (tmp_path / 'cwd' / '~').exists()


def test_a_limit_of_every_image_is_accepted(source, tmp_path, capsys):
  """--limit N with N the number of source images is all of them, not 'exceeds' (an off-by-one
  passed every test: a mutation audit)."""
  out = tmp_path / 'all'
  assert corrupt_cli.main(['--data_dir', str(source), '--out', str(out), '--limit', '40',
                           '--corruptions', 'brightness']) == 0, capsys.readouterr().err
  assert read_manifest(out)['num_images'] == 40
  assert len(np.load(out / 'labels.npy')) == 5 * 40


def test_the_largest_split_seed_is_accepted(tmp_path, cifar_dir, capsys):
  """--split_seed's range is data.split_seed's, [0, 2**32 - 1], both ends included."""
  out = tmp_path / 'val'
  assert corrupt_cli.main(['--data_dir', str(cifar_dir), '--out', str(out), '--split', 'val',
                           '--split_seed', str(2**32 - 1), '--limit', '2',
                           '--corruptions', 'brightness']) == 0, capsys.readouterr().err
  assert read_manifest(out)['num_images'] == 2


def test_a_rerun_with_fewer_corruptions_keeps_the_earlier_ones_in_the_manifest(tmp_path):
  """Other corruptions add to the set: a later run asking for fewer must not drop the earlier
  ones from the manifest's list (their files stay recorded and complete)."""
  images, labels = np.zeros((1, 32, 32, 3), np.uint8), np.array([3])
  out = tmp_path / 'set'
  corrupt.build(out, images, labels, names=('contrast', 'brightness'))
  corrupt.build(out, images, labels, names=('fog',))
  manifest = read_manifest(out)
  assert manifest['corruptions'] == [c for c in ood.CORRUPTIONS
                                     if c in ('contrast', 'brightness', 'fog')]
  assert sum(e['complete'] for e in manifest['files'].values()) == 4  # 3 files and labels.npy.


def test_a_negative_seed_is_one_error_line_before_any_work(source, tmp_path, capsys):
  assert corrupt_cli.main(['--data_dir', str(source), '--out', str(tmp_path / 'out'), '--seed',
                           '-1', '--corruptions', 'brightness']) == 1
  assert capsys.readouterr().err.strip() == 'error: --seed must be >= 0, got -1'
  assert not (tmp_path / 'out').exists()


def test_links_planted_at_the_temp_names_are_removed_not_written_through(tmp_path, monkeypatch):
  """The set's temps have fixed names (a rerun removes a killed run's as it opens the folder): a
  link planted there while the run works, in a shared output folder, had had the manifest
  written into the file it led to (a diff review)."""
  images, labels = np.zeros((1, 32, 32, 3), np.uint8), np.array([3])
  fog = ood.distortion_file(ood.CORRUPTIONS.index('fog'))
  victims = {name: tmp_path / f'victim-{name}'
             for name in (f'.{corrupt_store.MANIFEST}.part', f'.{fog}.part',
                          f'.{ood.LABELS_FILE}.part')}
  for victim in victims.values():
    victim.write_text('someone else\n')
  opened = corrupt_store.OutputDir._open  # pylint: disable=protected-access

  def open_then_plant(self, overwrite):  # Planted once the folder's leftovers are cleaned.
    opened(self, overwrite)
    for name, victim in victims.items():
      (self.path / name).symlink_to(victim)

  monkeypatch.setattr(corrupt_store.OutputDir, '_open', open_then_plant)
  out = tmp_path / 'set'
  corrupt.build(out, images, labels, names=('fog',))
  assert all(v.read_text() == 'someone else\n' for v in victims.values())
  assert not any(os.path.lexists(out / name) for name in victims)
  assert sum(e['complete'] for e in read_manifest(out)['files'].values()) == 2


def test_a_set_is_readable_by_whom_the_umask_lets_read_it(tmp_path):
  """A set in a shared folder is for colleagues too: its files get 0666 less the umask, as a plain
  open() gives (a mutation audit: 0600 for the new temps had passed every test)."""
  images, labels = np.zeros((1, 32, 32, 3), np.uint8), np.array([3])
  old = os.umask(0o022)
  try:
    corrupt.build(tmp_path / 'set', images, labels, names=('fog',))
  finally:
    os.umask(old)
  files = [p for p in (tmp_path / 'set').iterdir() if p.is_file() and not p.name.startswith('.')]
  assert {p.name for p in files} >= {corrupt_store.MANIFEST, ood.LABELS_FILE}
  assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: '0o644' for p in files}


def test_a_file_system_that_cannot_fsync_a_folder_still_gets_the_whole_set(source, tmp_path,
                                                                          reference):
  """SMB/CIFS, WSL's DrvFs and VirtualBox's shared folders answer a folder's fsync with EINVAL:
  the set had been written, then "cannot write corrupt_manifest.json (Invalid argument)", on every
  rerun too (a portability review). Such a file system is let be, as git and borg do."""
  shim = tmp_path / 'shim'
  shim.mkdir()
  (shim / 'sitecustomize.py').write_text(
      'import errno, os, stat\n_fsync = os.fsync\n'
      'def fsync(fd):\n'
      '  if stat.S_ISDIR(os.fstat(fd).st_mode):\n'
      '    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))\n'
      '  return _fsync(fd)\n'
      'os.fsync = fsync\n')
  path = os.pathsep.join([str(shim)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  out = tmp_path / 'set'
  result = run(source, out, *ARGS, env={'PYTHONPATH': path})
  assert result.returncode == 0, result.stderr[-3000:]
  assert snapshot(out) == reference
