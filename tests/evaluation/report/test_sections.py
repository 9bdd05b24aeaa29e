"""Sections rendered on their own: learning curves and the embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.evaluation.embedding import embed_features
from medtl.evaluation.report.document import Document
from medtl.evaluation.report.sections import embedding_section, learning_curves


def test_learning_curves_one_line_per_run_coloured_by_strategy(tmp_path):
    rows = []
    for strategy in ("dann", "scratch"):
        for seed in (0, 1):
            for epoch in range(3):
                rows.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1 + seed), "unused_term": 0.0,
                             "best": epoch == 2, "seconds": 3.0 + epoch, "run_id": f"t/frac1/{strategy}/seed{seed}",
                             "strategy": strategy})
    log = tmp_path / "metrics_log.csv"
    pd.DataFrame(rows).to_csv(log, index=False)
    doc, figs = Document(), []
    info = learning_curves(doc, log, figs)
    # a constant term, a flag and wall time are not curves; each run is its own line, coloured by strategy
    assert info["metrics"] == ["train_loss"]
    assert info["by"] == "run_id" and info["colour"] == "strategy"
    png = doc.figures["learning_curves.png"][0]
    assert png.startswith(b"\x89PNG")


def test_learning_curves_show_loss_and_one_validation_metric_by_name(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_auroc": 0.6 + e / 20,
             "val_accuracy": 0.5 + e / 20, "train_align": 0.1 * e, "train_grl_coeff": e / 3, "lr": 0.1 / (e + 1)}
            for e in range(4)]
    log = tmp_path / "log.csv"
    pd.DataFrame(rows).to_csv(log, index=False)
    doc, figs = Document(), []
    info = learning_curves(doc, log, figs)
    assert info["metrics"] == ["train_loss", "val_loss", "val_auroc"]  # not the nine raw log keys
    assert figs[0]["caption"].startswith("Training loss, validation loss, validation AUROC against epoch")
    pd.DataFrame([{"epoch": 0, "lr": 0.1}, {"epoch": 1, "lr": 0.2}]).to_csv(log, index=False)
    with pytest.raises(Exception, match="none of the columns train_loss"):
        learning_curves(Document(), log, [])
    # one epoch: a point, no curve, and no failed report (a 1-epoch pipeline's report stage crashed here)
    pd.DataFrame([{"epoch": 1, "train_loss": 0.7, "val_loss": 0.8}]).to_csv(log, index=False)
    doc, figs = Document(), []
    assert learning_curves(doc, log, figs)["metrics"] == [] and figs == []
    assert "No curve to draw" in doc.markdown()


def test_embedding_section_draws_the_coordinates_it_is_given():
    rng = np.random.default_rng(0)
    emb = embed_features((rng.normal(size=(30, 5)), ["a"] * 15 + ["b"] * 15), "pca")
    doc, figs = Document(), []
    info = embedding_section(doc, emb, figs)
    assert info is emb.info and info["domains"] == {"a": 15, "b": 15}
    assert figs[0]["file"] == "figures/embedding.png" and "PC1/PC2 explain" in figs[0]["caption"]
    assert doc.figures["embedding.png"][0].startswith(b"\x89PNG")
    assert ("h", 2, "Feature embedding") in doc.blocks


def test_the_methods_say_what_temperature_scaling_divided(tmp_path):
    """The Methods text said 'divides the log-probabilities' when the tables had logit columns, which it divided."""
    import numpy as np

    from medtl.evaluation.evaluate import evaluate_predictions
    from medtl.evaluation.predictions import predictions_from_arrays
    from medtl.evaluation.report import render_report

    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 2)) * 3
    y = (z[:, 1] > z[:, 0]).astype(int) ^ (rng.random(60) < 0.2)
    split = ["val"] * 30 + ["test"] * 30
    with_logits = predictions_from_arrays([f"c{i}" for i in range(60)], y, logits=z, class_names=["neg", "pos"],
                                          split=split)
    without = with_logits.drop(columns=[c for c in with_logits if c.startswith("logit_")])
    for table, said in ((with_logits, "divides the logits by one T"), (without, "divides the log-probabilities by")):
        md = render_report(evaluate_predictions(table, n_boot=60, seed=1), tmp_path / said[8:12])["md"].read_text()
        assert said in md
