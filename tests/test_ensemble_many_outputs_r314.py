"""The selection table's post-processing past SHOWN_OUTPUTS targets is one line, as its other
rows are (r314: a next-state spec's 32 outputs printed 32 lines, in the report too)."""

from __future__ import annotations

import numpy as np

from kit import ensemble as ensemble_module
from kit.competition import load_spec
from kit.ensemble import ensemble_document, format_selection, select, tune_postprocess
from tests.test_ensemble_pins import _candidates

RNN = load_spec("rnn-challenge")  # 32 outputs


def selection_with_post(monkeypatch):
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((600, RNN.n_outputs))
    cands = _candidates([truth + rng.standard_normal(truth.shape) for _ in range(2)], RNN)
    sel = select(cands, truth, iters=3)
    post = tune_postprocess(RNN, truth, cands[0].preds.astype(np.float64), np.array([0]))
    return ensemble_document(sel, cands, iters=3, init_best=0, postprocess=post)


def test_post_processing_of_many_outputs_is_one_line(monkeypatch):
    doc = selection_with_post(monkeypatch)
    post = doc["postprocess"]
    text = format_selection(doc)
    lines = [line for line in text.splitlines() if line.startswith("post-processing")]
    smoothed = sum(v != 0 for v in post["smoothing"])
    scaled = sum(v != 1 for v in post["scale"])
    assert lines == [
        f"post-processing of 32 outputs: smoothing on {smoothed} ({min(post['smoothing']):g} "
        f"to {max(post['smoothing']):g}), scale other than 1 on {scaled} "
        f"({min(post['scale']):g} to {max(post['scale']):g}); each output's values are in the "
        "file's [postprocess]"], text
    doc["postprocess"]["scale"][3] = post["scale"][3] * 2  # edited by hand: named
    [line] = [line for line in format_selection(doc).splitlines()
              if line.startswith("post-processing")]
    assert line.endswith(f"; set by hand after tuning: {RNN.outputs[3]} (kit pack --ensemble, "
                         "then kit score, scores these)"), line
