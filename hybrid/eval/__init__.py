"""Evaluation: ARC voting and pass@k (`hybrid.eval.arc`); pictures of grids (`hybrid.eval.pictures`, matplotlib)."""

from hybrid.eval.arc import PASS_AT_K, SCORING_RULES, ARCEvaluator

__all__ = ["ARCEvaluator", "PASS_AT_K", "SCORING_RULES"]
