"""Checking people's own from-scratch code: loading it (`loader`), driving it as the tutorial does (`adapter`), the
`check` command (`command`), and the injected bugs (`bugs`) that `selftest` shows caught."""
