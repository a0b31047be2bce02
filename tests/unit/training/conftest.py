"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture
def fresh_state():
    """Accelerate's process-wide state cleared before and after: each test builds its own
    Accelerator (precision, accumulation) in one process."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
