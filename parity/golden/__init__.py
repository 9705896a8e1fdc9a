"""Golden records of a scratch run: making, reading and rerunning them (`records`), and their two commands
(`command`). NumPy only: torch is never imported."""
