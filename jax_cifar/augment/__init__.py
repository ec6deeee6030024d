"""On-device augmentation, one key per image: the image augmentations (uint8 in, uint8 out): crop/flip
and their order (pipeline.py), AutoAugment/RandAugment/TrivialAugment, AugMix, photometric, resized
crop, JPEG; the model input (pipeline.to_model_input: float, normalised); and the label mixing on
those floats (mixing.py: mixup/CutMix, label smoothing). Nothing here knows of training."""
