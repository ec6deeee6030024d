"""Small fake training-run folders (metrics.jsonl, config.json, eval_best.json) for the report
tests: no training."""

import json

BASE_CONFIG = {'model': {'name': 'resnet18', 'width': 16}, 'train': {'batch_size': 128},
               'optim': {'lr': 0.1, 'schedule': 'cosine'}, 'seed': 0}


def fake_run(path, name_scale: float, test_accuracy=None, config=None, lr=0.1):
  """metrics.jsonl (100 steps, 50 per epoch, a torn last line), config.json, eval_best.json."""
  path.mkdir(parents=True)
  rows = []
  for step in range(10, 110, 10):
    rows.append({'step': step, 'train_loss': 4.6 - name_scale * step / 50,
                 'train_accuracy': name_scale * step / 400, 'images_per_sec': 200.0,
                 'epoch': step / 50, 'learning_rate': lr * (1 - step / 100)})
    if step % 50 == 0:
      rows.append({'step': step, 'val_loss': 4.5 - name_scale * step / 60,
                   'val_accuracy': name_scale * step / 500})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"torn')
  (path / 'config.json').write_text(json.dumps(BASE_CONFIG if config is None else config))
  if test_accuracy is not None:
    (path / 'eval_best.json').write_text(json.dumps({'test_accuracy': test_accuracy,
                                                     'ood_accuracy': 0.1234}))
  return path


def section(md: str, heading: str) -> str:
  """The text of summary.md's `## heading` section (up to the next section or figure)."""
  return md.split(f'## {heading}\n', 1)[1].split('\n## ', 1)[0].split('![', 1)[0]
