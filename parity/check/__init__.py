"""Checking people's own from-scratch code against PyTorch, one idea per module:

- reading the code: `loader` (finding the layer classes), `catalogue` (what they hold, read without running them),
  `names` (the names matched, and the errors about them), `suggest` (when names do not match), `members` (which
  method is the forward pass and which the backprop), `layercalls` (`--layers`);
- the architecture from it: `infer`, `binding` (one user layer to one spec layer), `layouts` (its weight layouts);
- running it: `usercode` (each call, its exceptions and time limit), `adapter` (the tutorial's `train()` as a
  lockstep side), `layerstate` (a layer's state, taken and put back);
- the check: `run`, `refine`, `results`, `output`, `command` (`cnn-parity check`);
- the self-test: `bugs` (which bugs, and the layer to blame), `patches` (their code), `selftest`, and `examples/`.
"""
