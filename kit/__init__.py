"""kit: a submission kit for streaming sequence-prediction code competitions."""

__version__ = "0.1.0"
