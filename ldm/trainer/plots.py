"""PNG plots of a run's CSV metrics: one figure per group (training losses, validation losses, learning rate, other
metrics), one panel per metric against the training batch. Used by `scripts/plot_metrics.py` and at the end of
`main.py` training (`<run>/plots/`)."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
PLOTS_DIR = "plots"
# Columns of Lightning's CSV that are the x axis or bookkeeping, not metrics.
INDEX_COLUMNS = ("step", "epoch")
# (file stem, title) of each figure, in order; `metric_group` decides which one a metric belongs to.
GROUPS: dict[str, str] = {"train_losses": "training losses", "val_losses": "validation losses",
                          "learning_rate": "learning rate", "metrics": "other metrics"}
# Panels per row of a figure.
PANELS_PER_ROW = 3

Series = dict[str, dict[float, float]]  # metric -> {step: value}


def metric_group(key: str) -> str:
    """The GROUPS entry of a metric name: `train/...loss...`, `val/...loss...`, `lr-...` (LearningRateMonitor), rest."""
    lower = key.lower()
    if lower.startswith("lr-") or lower in ("lr", "learning_rate") or lower.endswith("/lr"):
        return "learning_rate"
    if "loss" in lower and lower.startswith("train"):
        return "train_losses"
    if "loss" in lower and lower.startswith("val"):
        return "val_losses"
    return "metrics"


def _version_key(path: str) -> tuple:
    """Sort key: the top-level file first, then version folders by number (version_2 before version_10)."""
    parts = re.split(r"(\d+)", path)
    return (path.count(os.sep), [int(p) if p.isdigit() else p for p in parts])


def metrics_files(run: str) -> list[str]:
    """Every metrics.csv of a run: `<run>/metrics.csv` and those of version folders (`csv/version_0/...`, older
    Lightning layouts), oldest first."""
    found = []
    for folder, dirs, files in os.walk(run):
        dirs[:] = sorted(d for d in dirs if d not in ("wandb", PLOTS_DIR, "checkpoints", "images"))
        if METRICS_FILE in files:
            found.append(os.path.join(folder, METRICS_FILE))
    return sorted(found, key=_version_key)


def read_metrics(paths: Iterable[str]) -> Series:
    """{metric: {step: value}} from Lightning CSV files; a later file or row wins for the same metric and step (a
    resumed run that repeated batches)."""
    series: Series = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = float(row.get("step") or "nan")
                except ValueError:
                    continue
                if math.isnan(step):
                    continue
                for key, text in row.items():
                    if key is None or key in INDEX_COLUMNS or text in (None, ""):
                        continue
                    try:
                        series.setdefault(key, {})[step] = float(text)
                    except ValueError:
                        continue
    return {k: v for k, v in series.items() if v}


def _figure(title: str, series: Series):
    """A matplotlib Figure (Agg canvas, no pyplot state) with one panel per metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted(series)
    cols = min(PANELS_PER_ROW, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.0 * rows + 0.4))
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    # fixed margins: a layout engine (constrained / tight) costs more than drawing the figure
    fig.subplots_adjust(left=0.7 / (4.5 * cols), right=1 - 0.15 / (4.5 * cols), bottom=0.45 / (3.0 * rows + 0.4),
                        top=1 - 0.7 / (3.0 * rows + 0.4), hspace=0.55, wspace=0.35)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps = sorted(series[key])
        values = [series[key][s] for s in steps]
        ax.plot(steps, values, marker="." if len(steps) <= 50 else None, linewidth=1.0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("training batch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    return fig


def plot_metrics(series: Series, outdir: str) -> list[str]:
    """Write `<outdir>/<group>.png` for every group that has metrics; returns the paths."""
    from ldm.files import atomic_write

    grouped: dict[str, Series] = {}
    for key, values in series.items():
        grouped.setdefault(metric_group(key), {})[key] = values
    written = []
    for group, title in GROUPS.items():
        if group not in grouped:
            continue
        fig = _figure(title, grouped[group])
        path = os.path.join(outdir, f"{group}.png")
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
        written.append(path)
    return written


def plot_run(run: str, outdir: str | None = None, files: list[str] | None = None) -> list[str]:
    """Plots of a run folder's metrics (its `metrics_files`, or `files` when already listed) into `outdir` (default
    `<run>/plots`); FileNotFoundError without metrics."""
    files = metrics_files(run) if files is None else files
    if not files:
        raise FileNotFoundError(f"{run}: no {METRICS_FILE} (in the run folder or its version_* folders)")
    series = read_metrics(files)
    if not series:
        raise FileNotFoundError(f"{run}: {', '.join(files)} hold no metric values yet")
    return plot_metrics(series, outdir or os.path.join(run, PLOTS_DIR))


def plot_run_safely(run: str) -> list[str]:
    """`plot_run` for the end of training: nothing without metrics, a warning (never an exception) on failure."""
    try:
        files = metrics_files(run)
        if not files:
            return []
        written = plot_run(run, files=files)
    except Exception as err:  # plotting must never fail a finished run
        log.warning("could not plot the metrics of %s: %s: %s", run, type(err).__name__, err)
        return []
    log.info("plots of the metrics: %s", os.path.join(run, PLOTS_DIR))
    return written
