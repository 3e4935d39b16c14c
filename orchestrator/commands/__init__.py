"""The commands: each module parses its arguments (`add_arguments`) and calls its stage (`run`)."""
