"""The comparison engine: tensors compared under one tolerance table, one message and table builder, and the pytest
assertions built on them. NumPy only."""
