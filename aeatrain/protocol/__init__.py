"""The paper's evaluation protocol, in one place: where a pair's training region and test
tiles lie (:mod:`.split`), how a prediction is scored (:mod:`.metrics`), and how a model
is scored on a dataset, by ``python -m aeatrain.evaluate`` and by training's validation
alike (:mod:`.scoring`)."""
