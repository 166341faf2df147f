"""Suite-wide settings: hypothesis profiles (tests/ is on sys.path for required_tools)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Bounded and deterministic: the same examples on every run, no example database written
# into the tree. HYPOTHESIS_PROFILE=thorough explores more (still derandomized) by hand.
settings.register_profile(
    "default",
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=5000)
# `make mutate` runs the property tests once per mutant: fewer examples, same seed.
settings.register_profile("mutation", parent=settings.get_profile("default"), max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
