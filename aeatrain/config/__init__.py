"""The config tree of a training run (``configs/*.yaml``, ``RUN/config.yaml``):

- :mod:`.schema`: what a config may hold: five typed sections and ``Config``, every field
  with its range, default and description;
- :mod:`.load`: reading one: ``load_config`` (a YAML file plus ``--section.key value``
  overrides, validated), ``read_saved_config`` (a run's saved config) and ``ConfigError``;
- :mod:`.docs`: the config reference in docs/training.md, generated from the descriptions.
"""
