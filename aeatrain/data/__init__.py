"""Datasets: the DATA folder's format, reading it, and the streams training and evaluation use.

- format.py: the typed documents (manifest, sample json, shard index), hashing; torch-free.
- manifest.py: a DATA folder's manifest loaded and checked, its identity, verification.
- shardio.py: the bytes of shards wherever they are (local, ``http(s)://``, ``pipe:``).
- sources.py: a source resolved to indexed shards; samples read and decoded.
- loader.py: the training stream of paired random crops.
- streams.py: the evaluation streams (test tiles, whole images).
- d4.py: the D4 group (training's augmentation, prediction's self-ensemble).
"""
