"""`python -m parity.benchmark`: the speed benchmark, side by side in one process, paired ratios (`run`; the
lockstep section in `lockstep`, the timing and tables in `timing`)."""

LR = 0.005  # every candidate trains at the tutorial's learning rate
