"""Local replay of the competition's step-by-step scorer, sandboxed on one CPU."""

from kit.scoring.sandbox import prepare_submission
from kit.scoring.score import ScoreResult, score_submission

__all__ = ["ScoreResult", "prepare_submission", "score_submission"]
