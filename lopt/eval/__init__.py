"""Evaluation: exact ranking metrics of the lambdaopt protocol and the blockwise evaluator."""

from lopt.eval.evaluator import DEFAULT_BLOCK_SIZE, RankingEvaluator
from lopt.eval.metrics import metric_names, ranking_metrics

__all__ = ["DEFAULT_BLOCK_SIZE", "RankingEvaluator", "metric_names", "ranking_metrics"]
