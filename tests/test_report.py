"""Run reports: learning-curve figures and the markdown summary from run directories."""

import json

import matplotlib.image
import numpy as np

from jax_cifar import report


def _fake_run(path, name_scale: float, test_accuracy=None):
  path.mkdir()
  rows = []
  for step in range(10, 110, 10):
    rows.append({'step': step, 'train_loss': 4.6 - name_scale * step / 50,
                 'train_accuracy': name_scale * step / 400, 'images_per_sec': 200.0,
                 'epoch': step / 50})
    if step % 50 == 0:
      rows.append({'step': step, 'val_loss': 4.5 - name_scale * step / 60,
                   'val_accuracy': name_scale * step / 500})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"torn')
  (path / 'config.json').write_text(json.dumps(
      {'model': {'name': 'resnet18', 'width': 16}, 'train': {'batch_size': 128}}))
  if test_accuracy is not None:
    (path / 'eval_best.json').write_text(json.dumps({'test_accuracy': test_accuracy,
                                                     'ood_accuracy': 0.1234}))


def test_report_draws_both_figures_and_a_summary_table(tmp_path):
  _fake_run(tmp_path / 'small', 1.0, test_accuracy=0.1875)
  _fake_run(tmp_path / 'large', 2.0)
  out = tmp_path / 'report'
  assert report.main([str(tmp_path / 'small'), str(tmp_path / 'large'), '--out', str(out)]) == 0
  for png in ('figure1_loss.png', 'figure2_accuracy.png'):
    img = matplotlib.image.imread(out / png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert np.std(img[..., :3]) > 0.05  # Something was drawn.
  md = (out / 'summary.md').read_text()
  lines = [l for l in md.splitlines() if l.startswith('| small') or l.startswith('| large')]
  assert len(lines) == 2
  small, large = lines
  assert '| 2.0 |' in small  # epochs
  assert '20.00%' in small and '18.75%' in small and '12.34%' in small  # best val, test, OOD
  assert '40.00%' in large and large.count('| - |') >= 2  # No eval JSON: test and OOD unknown.
  # 100 steps x 128 images at 200 images/s = 64 s of training.
  assert '1.1 min' in small


def test_report_on_a_folder_without_metrics_fails_cleanly(tmp_path, capsys):
  assert report.main([str(tmp_path), '--out', str(tmp_path / 'out')]) == 1
  assert 'metrics.jsonl' in capsys.readouterr().err


def test_confusion_and_corruption_figures(tmp_path):
  rng = np.random.default_rng(0)
  cm = rng.integers(0, 5, (100, 100)) + np.eye(100, dtype=int) * 40
  report.plot_confusion(cm, tmp_path / 'cm.png', 'test', np.arange(100) % 20,
                        [f'super{i}' for i in range(20)])
  report.plot_corruption_heatmap({'fog': [0.5, 0.4, 0.3, 0.2, 0.1], 'snow': [0.6] * 5},
                                 tmp_path / 'c.png', 'CIFAR-100-C')
  for png in ('cm.png', 'c.png'):
    assert matplotlib.image.imread(tmp_path / png).ndim == 3
