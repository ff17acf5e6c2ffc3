"""lopt: λOpt (KDD 2019) — learning fine-grained regularization for MF-BPR, with Hydra + Lightning."""

__version__ = "0.1.0"
