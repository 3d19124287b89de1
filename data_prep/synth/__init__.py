"""Synthetic SEM image pairs in the public dataset's layout, with their true registration.

Why: the paper's 22 pairs are not ours to ship, yet every stage must run and be tested on
any machine. The generator is physically motivated so that registration meets the same
difficulties as on real pairs and a network has real work to do (the HR holds detail the
LR lost, under its own noise):

- one specimen model per run (a material system: nanoparticle clusters on a host),
  varied per pair, so pooled training has common features to learn;
- the specimen of a pair is rendered once on a fine canvas (``2 * scale`` canvas pixels
  per LR pixel, i.e. twice the HR pixel density) covering the LR field;
- each acquisition (LR at magnification M, HR at ``scale * M``) blurs the canvas with its
  own probe (Gaussian, sigma fixed in specimen units, focus jitter per acquisition) and
  its pixel integration, then samples it at its own pixel centres with ``cv2.remap``:
  the affine map from HR pixels to LR pixels is exact by construction, and it is what
  ``truth.json`` records (as the LR->HR homography);
- then scan-line jitter (random shifts of each scan line), a slow brightness variation
  (charging), Poisson shot noise, detector noise, gain and offset, quantisation;
- an SEM data bar under the image area with high-contrast text and a scale bar, which
  the build must cut off.

Specimen units are LR pixels (at magnification M): LR pixel ``(x, y)`` has its centre at
specimen point ``(x, y)`` (OpenCV pixel-centre convention, docs/formats.md).

The modules, each importing only those above it:

- ``config.py``: ``SynthConfig`` (what is imaged and how) and the presets;
- ``canvas.py``: the fine canvas and the rendering every specimen family shares;
- ``families.py``: the specimen families of ``--family``;
- ``scan.py``: the two acquisitions of a canvas, and the data bar;
- ``generate.py``: pairs, folders (``synthesize``, ``synthesize_mix``) and ``truth.json``.
"""
