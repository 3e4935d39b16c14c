"""Test hooks: host-read counting and fault injection (`PIXELREG_FAULTS`)."""
