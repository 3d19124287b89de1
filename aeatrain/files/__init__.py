"""Files on disk: images (:mod:`.images`: read and write 8/16-bit BMP, PNG, TIFF; pixels
to floats; :mod:`.rows`: a large TIFF a band of rows at a time), microscope metadata (:mod:`.microscope`), atomic writes (:mod:`.atomic`),
what ``--overwrite`` may replace (:mod:`.outputs`) and how every YAML file is read
(:mod:`.yamlfile`). Nothing here imports torch."""
