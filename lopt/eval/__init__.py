"""Evaluation: exact ranking metrics of the lambdaopt and standard protocols, the blockwise
evaluator and the beyond-accuracy statistics."""

from lopt.eval.evaluator import DEFAULT_BLOCK_SIZE, RankingEvaluator
from lopt.eval.metrics import full_ranking_metrics, metric_names, ranking_metrics

__all__ = ["DEFAULT_BLOCK_SIZE", "RankingEvaluator", "full_ranking_metrics", "metric_names", "ranking_metrics"]
