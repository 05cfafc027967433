"""Shared test configuration: deterministic hypothesis profile, seeded torch."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "flowsde",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "flowsde"))

# Small tensors: one thread avoids oversubscription stalls (the suite runs on 2 shared cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
