"""The config tree of a training run (``configs/*.yaml``, ``RUN/config.yaml``): its typed
sections, reading them and the generated reference (:mod:`.schema`)."""
