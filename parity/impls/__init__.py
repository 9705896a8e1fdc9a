"""Checking code written to the tutorial's interface: find its classes, drive them like `train()`, inject bugs.

- `loader`: find `Conv3x3`, `MaxPool2`, `Softmax` in a directory, a `.py` file or a module (with a name mapping).
- `adapter`: `TutorialSide`, a lockstep `Side` that runs those classes exactly as the tutorial's `train()` does and
  recovers each layer's parameter gradients from its in-place SGD update; they are the spec `conv3x8,pool2,dense10`,
  so every tensor carries its spec name (`conv1.out`, `pool1.d_in`, ...) and a batch axis of 1.
- `bugs`: realistic bugs, each a small subclass of a correct implementation, for `cnn-parity selftest`.

NumPy only: nothing here imports torch.
"""
