"""lopt: λOpt (KDD 2019) — learning fine-grained regularization for MF-BPR, with Hydra + Lightning.

Python API: ``from lopt import train; metrics = train(["+experiment=ml100k_dui", "seed=1"])``
(:func:`lopt.api.train`; ``lopt.train`` is the training module, callable as that function).
"""

__version__ = "0.1.0"
