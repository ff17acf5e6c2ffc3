"""One run's lifecycle, in the order a run goes through it: start-up checks (:mod:`.validate`),
the output directory and resume (:mod:`.resume`), the configured Trainer callbacks
(:mod:`.trainer_callbacks`), checkpoints and signals (:mod:`.checkpointing`), provenance
(:mod:`.provenance`), and the context that ties them around ``fit`` (:mod:`.lifecycle`)."""
