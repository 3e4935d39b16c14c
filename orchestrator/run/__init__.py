"""Running a sweep on Ray Tune: preflight, resources, the trainable, Optuna, progress."""
