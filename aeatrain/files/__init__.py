"""Files on disk: images (:mod:`.images`: read and write 8/16-bit BMP, PNG, TIFF; pixels
to floats), microscope metadata (:mod:`.microscope`), atomic writes (:mod:`.atomic`) and
what ``--overwrite`` may replace (:mod:`.outputs`). Nothing here imports torch."""
