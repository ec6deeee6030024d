"""The training loop (trainer.py) and its pure, jitted step (train_step.py)."""
