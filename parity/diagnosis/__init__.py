"""Naming a divergence: which layer and why (`diagnose`), and per-kind knowledge: max-pool ties and routing
(`pool`), near-tie flips and their consequences upstream (`flips`)."""
