"""Θ and Λ optimizers: the row-sparse Θ optimizers and the Λ optimizers, one lazy-Adam core for
the row-sparse Adams, and the compile-with-fallback wrapper of their kernels. Imports the model
pieces (:mod:`lopt.models`) only."""
