"""What a kill leaves in checkpoints/ is tidied by the next training launch (a kill audit):
orbax's temp folder of a step killed mid-save, best steps of the training a resume repeats, and a
superseded best step orbax was deleting. Evaluation changes nothing there."""

import json
import pathlib
import shutil

import numpy as np

from jax_cifar import checkpoints, step_folders
from jax_cifar.training import trainer
from test_checkpoints import _config as checkpoint_config  # The same tiny run.


def _config(max_steps: int):
  c = checkpoint_config(max_steps)
  c.train.eval_every_epochs = 0.5  # 6 steps per epoch: validated at steps 3, 6 and 8.
  return c


def _steps(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def _val(workdir: pathlib.Path, step: int) -> list[float]:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['val_accuracy'] for r in rows if r.get('step') == step and 'val_accuracy' in r]


def test_a_resume_sets_aside_best_steps_it_repeats_and_removes_what_a_kill_left(tmp_path):
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(_config(8), str(workdir))
  root = workdir / 'checkpoints'
  assert _steps(root / 'latest') == ['6', '8']
  (best,) = map(int, _steps(root / 'best'))
  # As a kill would leave them: latest/8 never committed (its temp folder in place), a best step
  # 8 of the training after latest 6 (step 8 itself, or a better-ranked copy), and a best step
  # orbax was deleting when the kill came (worse than the best).
  shutil.rmtree(root / 'latest' / '8')
  (root / 'latest' / '8.orbax-checkpoint-tmp').mkdir()
  # ... and temp folders of steps the resumed run does not save again (a relaunch that saves at
  # another cadence, or after a SIGTERM's extra save at step 7 was killed): they had stayed.
  (root / 'latest' / '7.orbax-checkpoint-tmp').mkdir()
  (root / 'best' / '5.orbax-checkpoint-tmp').mkdir()
  if best != 8:
    shutil.copytree(root / 'best' / str(best), root / 'best' / '8')
    (root / 'best' / '8' / 'metrics' / 'metrics').write_text(json.dumps({'val_accuracy': 2.0}))
  shutil.copytree(root / 'best' / str(best), root / 'best' / '2')
  (root / 'best' / '2' / 'metrics' / 'metrics').write_text(json.dumps({'val_accuracy': -1.0}))
  # Evaluation opens the folders without changing them.
  ckpts = checkpoints.Checkpoints(workdir, create=False)
  ckpts.close()
  assert (root / 'latest' / '7.orbax-checkpoint-tmp').exists() and (root / 'best' / '2').exists()

  trainer.train_and_evaluate(_config(8), str(workdir))  # Resumes from 6.
  assert _steps(root / 'latest') == ['6', '8']  # The temp folders are gone.
  # Kept, not deleted: step 8, and the best step up to 6 (the one orbax was deleting, where the
  # run's best was 8 itself).
  assert _steps(root / 'discarded') == sorted(['best-8', f'best-{best if best != 8 else 2}'])
  (kept,) = _steps(root / 'best')  # The superseded step and the temp are gone; the best is:
  recorded = json.loads((root / 'best' / kept / 'metrics' / 'metrics').read_text())
  assert recorded['val_accuracy'] == max(_val(workdir, 3) + _val(workdir, 6) + _val(workdir, 8))
  assert recorded['val_accuracy'] == _val(workdir, int(kept))[-1]


def _best_step(root: pathlib.Path, step: int, accuracy: float, like: int) -> None:
  """A copy of best/`like` as best/`step`, ranked `accuracy`."""
  shutil.copytree(root / 'best' / str(like), root / 'best' / str(step))
  (root / 'best' / str(step) / 'metrics' / 'metrics').write_text(
      json.dumps({'val_accuracy': accuracy}))


def _latest_6_best_4_and_9(tmp_path: pathlib.Path):
  """(checkpoints, state, root): latest step 6, best M = 4 and a better best N = 9 after it."""
  ckpts = checkpoints.Checkpoints(tmp_path / 'run')
  state = {'w': np.arange(4, dtype=np.float32)}
  ckpts.save_latest(state, 6)
  assert ckpts.maybe_save_best(state, 4, 0.25)
  ckpts.wait()
  root = tmp_path / 'run' / 'checkpoints'
  _best_step(root, 9, 0.5, like=4)
  ckpts.best.reload()
  assert ckpts.best.best_step() == 9
  return ckpts, state, root


def test_an_intact_best_of_the_kept_training_stays_restorable_when_a_later_best_is_set_aside(
    tmp_path):
  """Best M (<= latest L) intact, and a better N after L that the resume repeats: M had been
  deleted for good before N was set aside, though it is the best of the training the resume
  keeps and the retrained steps need not reach N's accuracy again (a review). Both are in
  discarded/ now, and M restores by path to what was saved; a step ranked below M is deleted,
  as orbax would have."""
  ckpts, state, root = _latest_6_best_4_and_9(tmp_path)
  _best_step(root, 2, 0.1, like=4)
  ckpts.best.reload()
  assert [m.name for m in ckpts.tidy_best_on_resume(6)] == ['best-4', 'best-9']
  assert _steps(root / 'discarded') == ['best-4', 'best-9'] and _steps(root / 'best') == []
  restored = step_folders.restore_path(root / 'discarded' / 'best-4', state)
  np.testing.assert_array_equal(restored['w'], state['w'])
  ckpts.close()


def test_a_half_deleted_superseded_step_never_becomes_best_when_a_later_one_is_set_aside(
    tmp_path):
  """The likeliest kill: best N (after latest L) committed while orbax deleted the old best M.
  Setting N aside first had left M, half deleted, as best (a review): M leaves best/ first (to
  discarded/, as N is set aside too), then N. Steps without metrics are not touched here (they
  are named as damaged when used)."""
  ckpts, state, root = _latest_6_best_4_and_9(tmp_path)
  for item in (root / 'best' / '4' / 'default').iterdir():  # M: its arrays half deleted.
    if item.is_file() or item.name != 'metrics':
      shutil.rmtree(item) if item.is_dir() else item.unlink()
  ckpts.best.reload()
  moved = ckpts.tidy_best_on_resume(6)
  assert [m.name for m in moved] == ['best-4', 'best-9']
  assert _steps(root / 'discarded') == ['best-4', 'best-9']
  assert ckpts.best.all_steps() == [] and _steps(root / 'best') == []
  # Within the resumed run, a step at or before it stays: a better one, and no other (deleted,
  # as orbax would have).
  assert ckpts.maybe_save_best(state, 3, 0.1)
  ckpts.wait()
  _best_step(root, 5, 0.05, like=3)
  ckpts.best.reload()
  assert ckpts.tidy_best_on_resume(6) == [] and _steps(root / 'best') == ['3']
  assert _steps(root / 'discarded') == ['best-4', 'best-9']
  _best_step(root, 6, 0.9, like=3)  # At the resume step itself: the state it resumes from, kept
  ckpts.best.reload()  # (set aside with `>=`, which passed every other test: a mutation audit).
  assert ckpts.tidy_best_on_resume(6) == [] and ckpts.best.best_step() == 6
  ckpts.close()


def test_every_process_makes_the_same_collectives_whatever_its_own_look_found(tmp_path,
                                                                             monkeypatch):
  """Each agreement of the tidy is a collective: a call made only where this process saw the
  best after the resume step would leave processes that saw otherwise waiting in another one (a
  review). The same three calls either way."""
  calls = []
  real = checkpoints.parallel.any_process
  monkeypatch.setattr(checkpoints.parallel, 'any_process', lambda flag: calls.append(flag) or
                      real(flag))
  made = []
  for folder, resume_step in (('aside', 6), ('stays', 9)):  # 4 and 9 aside; 9 stays, 4 deleted.
    ckpts, _, _ = _latest_6_best_4_and_9(tmp_path / folder)
    calls.clear()
    ckpts.tidy_best_on_resume(resume_step)
    made.append(list(calls))
    ckpts.close()
  assert made == [[True, False, True], [False, True, False]]


def test_a_step_set_aside_again_with_the_same_metrics_replaces_its_earlier_copy(tmp_path):
  """Killed again and again between a best save after latest L and the next latest save, a run
  set aside one whole copy of the same retrained step per kill (best-20, best-20.1, best-20.2: a
  GB each for ResNet-152, a longevity review). A copy of the same recorded metrics replaces the
  earlier one; a copy of other metrics is kept beside it."""
  ckpts, state, root = _latest_6_best_4_and_9(tmp_path)
  assert [m.name for m in ckpts.tidy_best_on_resume(6)] == ['best-4', 'best-9']
  for accuracy, expected in ((0.5, ['best-4', 'best-9']), (0.75, ['best-4', 'best-9', 'best-9.1'])):
    shutil.copytree(root / 'discarded' / 'best-4', root / 'best' / '9')  # Retrained to step 9...
    (root / 'best' / '9' / 'metrics' / 'metrics').write_text(
        json.dumps({'val_accuracy': accuracy}))  # ... as the first time (0.5), or not.
    ckpts.best.reload()
    assert [m.name for m in ckpts.tidy_best_on_resume(6)] == [expected[-1]]
    assert _steps(root / 'discarded') == expected
  restored = step_folders.restore_path(root / 'discarded' / 'best-9', state)
  np.testing.assert_array_equal(restored['w'], state['w'])
  # An earlier copy whose metrics cannot be read is not shown to be the same: kept. One that is a
  # link (to another disk) is kept too, and its target left alone.
  def set_aside_again() -> str:
    shutil.copytree(root / 'discarded' / 'best-4', root / 'best' / '9')
    (root / 'best' / '9' / 'metrics' / 'metrics').write_text(json.dumps({'val_accuracy': 0.5}))
    ckpts.best.reload()
    (moved,) = ckpts.tidy_best_on_resume(6)
    return moved.name
  metrics = (root / 'discarded' / 'best-9' / 'metrics' / 'metrics').read_text()
  (root / 'discarded' / 'best-9' / 'metrics' / 'metrics').unlink()
  assert set_aside_again() == 'best-9.2' and (root / 'discarded' / 'best-9').is_dir()
  (root / 'discarded' / 'best-9' / 'metrics' / 'metrics').write_text(metrics)
  elsewhere = tmp_path / 'elsewhere'
  shutil.move(root / 'discarded' / 'best-9', elsewhere)
  (root / 'discarded' / 'best-9').symlink_to(elsewhere)
  assert set_aside_again() == 'best-9.3' and (elsewhere / 'metrics' / 'metrics').exists()
  ckpts.close()
