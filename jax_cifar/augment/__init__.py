"""On-device augmentation, uint8 in and uint8 out, one key per image: crop/flip and the
pipeline (pipeline.py), AutoAugment/RandAugment/TrivialAugment, AugMix, photometric, resized crop,
JPEG, and the label mixing (mixup/CutMix, label smoothing). Nothing here knows of training."""
