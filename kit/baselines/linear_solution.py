"""Linear baseline submission: ridge over the current row and EWMs of it.

Written by `kit.baselines.write_linear_submission`; needs only numpy. Not imported by kit
itself.
"""

import os

import numpy as np


class PredictionModel:
    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        with np.load(os.path.join(here, "weights.npz")) as weights:
            self.coef = weights["coef"]  # (1 + F * (1 + n_alphas), K)
            self.alphas = weights["alphas"][:, None]  # (n_alphas, 1)
        self.seq_ix = None
        self.ewm = None

    def predict(self, data_point):
        x = np.asarray(data_point.state, dtype=np.float64)
        x = np.where(np.isfinite(x), x, 0.0)
        if data_point.seq_ix != self.seq_ix:  # a new sequence: forget the old state
            self.seq_ix = data_point.seq_ix
            self.ewm = np.tile(x, (self.alphas.shape[0], 1))
        else:
            self.ewm += self.alphas * (x - self.ewm)
        if not data_point.need_prediction:
            return None
        return self.coef[0] + x @ self.coef[1 : 1 + x.size] + self.ewm.ravel() @ self.coef[
            1 + x.size :
        ]
