"""The λOpt algorithm: one iteration's steps (:mod:`.steps`: the training loss, the Λ-step, the
Θ-step) and the exact row-wise look-ahead of the Θ-step (:mod:`.dispatch` picks between the fused
kernels of :mod:`.fused` and the autograd replay of :mod:`.replay`; :mod:`.state` reads the Θ
optimizer, :mod:`.clip` decides whether the Θ clip binds). Imports the model pieces and the
optimizers."""
