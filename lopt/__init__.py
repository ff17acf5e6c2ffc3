"""lopt: λOpt (KDD 2019) — learning fine-grained regularization for MF-BPR, with Hydra + Lightning.

Python API: ``from lopt import train; metrics = train(["+experiment=ml100k_dui", "seed=1"])``
(:func:`lopt.api.train`: one run with the command line's overrides; torch and Lightning load on
the call, not on ``import lopt``).
"""

from lopt.api import train

__version__ = "0.1.0"

__all__ = ["train", "__version__"]
