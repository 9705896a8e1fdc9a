"""Lockstep runs: both sides stepped on the same batches (`stepper`), and the experiment's epochs and test pass
(`experiment`, which builds the PyTorch twin)."""
