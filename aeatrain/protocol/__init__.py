"""The paper's evaluation protocol, in one place: where a pair's training region and test
tiles lie (:mod:`.split`), how a prediction is scored (:mod:`.metrics`), how a model is
scored on a dataset, by ``python -m aeatrain.evaluate`` and by training's validation alike
(:mod:`.scoring`), runs as the rows of the table and its report (:mod:`.evaluation`,
:mod:`.report`); how a network is run on an image (:mod:`.inference`: padding, tiles, the
D4 ensemble), new images super-resolved (:mod:`.superres`, predict's library) and the
shared references drawn (:mod:`.heatmaps`, refmaps' library)."""
