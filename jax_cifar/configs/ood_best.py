"""OOD-oriented fine-tune of the shared ImageNet ResNet-50: the report's recipe (AutoAugment +
mixup + label smoothing + crop/flip) for 30 epochs, plus additive Gaussian noise and Gaussian blur
(each on 30 % of the training images) and a weight EMA.

  # once: convert the shared torchvision-layout ResNet-50 (or --weights IMAGENET1K_V2, online)
  python -m jax_cifar.convert --arch resnet50 --state_dict FILE.pth --output weights/resnet50
  #   FILE.pth: e.g. $JAX_CIFAR_WEIGHTS_DIR/resnet50-keras-imagenet-tvlayout-fp16.pth
  python -m jax_cifar.train --config configs/ood_best.py --workdir runs/ood_best \
      --config.model.pretrained=weights/resnet50
  python -m jax_cifar.evaluate --config configs/ood_best.py --workdir runs/ood_best \
      --checkpoint best --weights auto --tta shifts --ood_dir DIR --submission submission_ood.csv
  # --tta shifts averages 18 views (18x the inference; --tta flip: 2 views). Add --bn_adapt for
  # test-time adaptation: it re-estimates the BatchNorm statistics on each
  # distortion x severity chunk of the unlabelled test images (never a default; say so if you
  # report its score).

Noise and blur were chosen on one H200 (2026-11-30, docs/robustness.md), comparing on a 19 x 5
set that jax_cifar.corrupt made from 500 *validation* images: two 15-epoch runs sharing the GPU,
the same but for noise/blur (one seed each). Noise/blur lifted that set from 64.4 to 71.3 %
without test-time tools and from 73.0 to 74.8 % with --tta shifts --bn_adapt, for 1.2 points of
clean validation accuracy (83.8 -> 82.6). Reported once on the same-sized set made from test
images: 64.4 -> 70.8 % and 72.6 -> 73.8 %; clean test 83.6 -> 82.7 %. The gains are in the noises
(Gaussian noise 44 -> 72 % without tools) and glass blur (11 -> 24 %); contrast, brightness,
saturation and spatter lose 0.7-3.3 points. The full 30 epochs of this config with noise/blur
are not measured yet. Without them (the earlier recipe), 30 epochs in 420 s gave clean test
84.2 %, that test OOD set 65.2 %, --tta shifts 85.7 / 67.0 %, --bn_adapt 83.2 / 71.7 %, both
84.7 / 73.9 % (raw weights of `best`, step 7,371).

`best` is picked by the EMA's validation accuracy. --weights auto then evaluates the EMA or the
raw weights, whichever had the higher validation accuracy at that checkpoint's step (decided on
validation, never on the OOD set; the eval JSON records which).

How this was chosen (docs/robustness.md): on the shared ResNet-50 (32 px, 10,000 training images,
234 steps, chosen on validation), the report recipe with 3x the epochs beat AugMix + its
Jensen-Shannon loss at the same compute (3 views per image) by 6.2 points validation, 6.4 clean
test and 4.4 OOD (two seeds each; each of its seeds above each JSD seed); plain AugMix and colour
jitter + blur + noise did not beat the report recipe in runs that short (noise and blur without
the jitter did at 15 epochs on the GPU, above), nor did random-resized-crop or JPEG (2026-12-04;
not measured on a GPU), and the EMA cost 0.7 points there (it is kept
for runs this long, where it usually pays; check val_accuracy_ema). At test time, flip averaging
added 2.0 OOD points and 3.2 clean, shifts 6.4 OOD and 7.2 clean, --bn_adapt 5.2 OOD and 2.9 clean,
shifts + --bn_adapt 10.2 OOD and 7.8 clean (one seed, on test-derived sets). Validation agrees:
on the H200 run, clean validation 84.06 % without tools, 84.70 % flip, 85.14 % shifts. So the compute goes into epochs:
30 here, the forward/backward work of the former AugMix + JSD recipe's 10.
On a CPU pass e.g. --config.model.image_size=32 --config.model.dtype=float32; evaluate such a
run without --config (it reads the run's own config.json, which --config.KEY=VALUE overrides
change; this file's model keys would differ).
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'  # The pretrained weights need torchvision's 7x7/2 stem + max-pool.
  c.model.normalize = 'imagenet'
  c.model.image_size = 128  # 32x32 upsampled on device (docs/robustness.md); 32 for CPU checks.
  c.model.pretrained = ''  # Path of the converted checkpoint, given on the command line.
  c.model.dtype = 'bfloat16'  # GPU/TPU; on a CPU pass --config.model.dtype=float32.
  # The report's recipe (configs/resnet152.py): crop/flip + AutoAugment (CIFAR10 policy) + mixup
  # 0.2 + label smoothing 0.1.
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.augment.policy = 'autoaugment_cifar10'
  c.augment.mixup_alpha = 0.2
  c.optim.label_smoothing = 0.1
  # Added to the report's recipe for the noise and blur corruptions, the weak spots of the model
  # without them: Gaussian noise of std U(0, 0.1) and a 3x3 Gaussian blur of sigma U(0.1, 2),
  # each on 30 % of the images (the defaults' strengths).
  c.augment.noise_prob = 0.3
  c.augment.blur_prob = 0.3
  # EMA of the weights; 'best' picked by the EMA's validation accuracy. 30 epochs of 45k images at
  # batch 128 are ~10,500 steps: decay 0.999 averages over the last ~1,000 (about 3 epochs).
  c.ema.decay = 0.999
  c.ema.warmup_power = 0.75
  c.checkpoint.best_weights = 'ema'
  # Fine-tuning settings of configs/resnet50_transfer.py.
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3  # Head rate; the backbone gets lr * backbone_lr_mult.
  c.optim.backbone_lr_mult = 0.1
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 0.5
  c.optim.grad_clip_norm = 1.0
  c.train.batch_size = 128
  c.train.num_epochs = 30
  c.train.log_every_steps = 50
  return c
