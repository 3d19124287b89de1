"""Pieces of the training loop that need no accelerator: schedule, loss, preemption flag,
the skipped-step guard, validation and TensorBoard images. aeatrain/train.py joins them."""
