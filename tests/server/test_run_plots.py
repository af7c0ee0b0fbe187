"""The run's plots (issue 22 item 10): integer round ticks, the random-init and warm-start
references on the accuracy plot, the collapse plot's rank axis from 0, the target epsilon."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from fedssl.server.report import plot_run, run_figures

ROWS = [{"round": 0, "linear_probe_accuracy": 0.80, "knn_accuracy": 0.7,
         "feature_std_ratio": 0.5, "effective_rank": 63.5},
        {"round": 5, "loss": -1.0, "linear_probe_accuracy": 0.85, "knn_accuracy": 0.75,
         "feature_std_ratio": 0.6, "effective_rank": 63.7}]


def test_the_plots_carry_their_references(tmp_path: Path) -> None:
    figures = run_figures(tmp_path, ROWS, None,
                          references={"random init": {"linear_probe_accuracy": 0.7},
                                      "warm start": {"linear_probe_accuracy": 0.8}})
    assert set(figures) == {"loss", "accuracy", "collapse"}  # no ledgers: no epsilon plot
    acc = figures["accuracy"].axes[0]
    labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert "random init (linear probe)" in labels and "warm start (linear probe)" in labels
    ticks = acc.get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # rounds, not 0.5 steps
    rank_axis = figures["collapse"].axes[1]
    assert rank_axis.get_ylim()[0] == 0  # 63.5 -> 63.7 is not shown as a collapse
    for fig in figures.values():
        plt.close(fig)


def test_plot_run_writes_each_figure(tmp_path: Path) -> None:
    plot_run(tmp_path, ROWS, None)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "accuracy.png", "collapse.png", "loss.png"]
