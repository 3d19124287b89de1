"""The BioImage Model Zoo package of a run: written by ``python -m aeatrain.export``
(aeatrain/export.py, the CLI), read back by ``train.init_from`` (:mod:`.read`).

Not named ``packaging``: ``aeatrain/train.py`` runs as a script, with aeatrain/ first on
sys.path, where a folder of that name would hide the ``packaging`` distribution."""

STATE_DICT = "weights_state_dict.pt"  # an attachment, for train.init_from (not a weight format)
