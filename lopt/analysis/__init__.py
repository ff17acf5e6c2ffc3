"""Analysis of finished runs: reads their results files (docs/results.md), never trains."""
