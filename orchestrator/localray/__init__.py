"""The local Ray a launch starts: starting and stopping it, its processes, CUDA MPS."""
