"""kit parity's default sample and tolerances, in a module of their own so the CLI shows them
in --help without importing kit.parity (which loads torch: two seconds on every kit command)."""

DEFAULT_ATOL = 1e-5
# float32 keeps about 7 digits: a correct package whose predictions are in the thousands (a
# post-processing scale, raw-unit targets) rounds beyond any atol. Its rounding error follows
# the size of the target's predictions, not of each one (a value near 0 made from large
# terms), so rtol is relative to the largest |prediction| of that target in the sample.
DEFAULT_RTOL = 1e-6
DEFAULT_SEQS = 16
