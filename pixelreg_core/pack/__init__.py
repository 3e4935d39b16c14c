"""The seed pack: up to N trials that differ only in seed, th, alpha or target parameters, trained as one grouped
network (model.py), by one loop (train.py), each written as its own trial (trial.py). Off unless `pack` > 1."""
