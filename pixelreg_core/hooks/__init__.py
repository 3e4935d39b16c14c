"""Test hooks: host-read and operator counting, and fault injection (`PIXELREG_FAULTS`)."""
