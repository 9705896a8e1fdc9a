"""`python -m parity.benchmark`: the speed benchmark, side by side in one process, paired ratios (`run`)."""
