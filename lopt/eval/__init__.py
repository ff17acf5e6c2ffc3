"""Evaluation: exact ranking metrics of the lambdaopt and standard protocols, the blockwise
evaluator and the beyond-accuracy statistics."""

from lopt.eval.evaluator import RankingEvaluator
from lopt.eval.metrics import full_ranking_metrics, mean_ignoring_nan, metric_names, ranking_metrics

__all__ = ["RankingEvaluator", "full_ranking_metrics", "mean_ignoring_nan", "metric_names", "ranking_metrics"]
