"""Synthetic SEM image pairs (``data_prep synth``, ``synth-mix``): generate.py makes the
pairs and truth.json, families.py the specimen families."""
