"""The switch for the optional compiled helpers (target/_burst.c, initiator/_compiled.c).

Each helper's loader asks here first, so ``AOE_ACCEL=0`` has one meaning in one place:
keep every pure-Python path, the reference, even where the compiled one was built.
"""

from __future__ import annotations

import os


def wanted() -> bool:
    """False when the user set AOE_ACCEL=0."""
    return os.environ.get("AOE_ACCEL", "1") != "0"
