"""Fixtures shared by several test files.

Each section belongs to one part of the project; keep a part's fixtures in its own section.
"""

from __future__ import annotations

import pytest

# ==========================================================================================================


# =================================================================================================================
# core: torch on one thread
# =================================================================================================================
@pytest.fixture()
def one_thread():
    """Torch on one thread for the test, restored after: the numbers of the core tests do not depend on the
    machine's core count, and two engineers' test runs do not fight over the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
