"""The model pieces: MF (:mod:`.mf`), the NeuMF network (:mod:`.neumf`), Λ and its granularities
(:mod:`.granularity`), the regularizer and the Θ-gradient clip (:mod:`.regularizer`), and the row
helpers every layer above uses (:mod:`.rows`)."""
