"""RUN/, the folder of one training run: its layout and same-run policy (:mod:`.folder`),
checkpoints (:mod:`.checkpoint`), the trainer's lock (:mod:`.lock`), the final files that
evaluate, predict, refmaps and export read (:mod:`.final`), and the ``--weights/--device``
options of those tools (:mod:`.options`)."""
