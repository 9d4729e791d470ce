"""scripts/plot_metrics.py and ldm.trainer.plots: CSV logs of a run (several version folders combined) -> one PNG
per group; bad input is a one-line error; at the end of training a plotting failure is only a warning."""

import csv
import importlib.util
import os

from PIL import Image

from ldm.trainer import plots as P

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("plot_metrics", os.path.join(ROOT, "scripts", "plot_metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_csv(path, rows):
    """A Lightning-style metrics.csv (sparse rows: each holds the metrics logged at that step)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def make_run(tmp_path):
    """A run resumed twice: an old-layout csv/version_0, a csv/version_1, and the top-level metrics.csv."""
    run = tmp_path / "2026-01-01T00-00-00_tiny"
    write_csv(str(run / "csv" / "version_0" / "metrics.csv"),
              [{"epoch": 0, "step": s, "train/loss": 1.0 / (s + 1), "lr-AdamW": 1e-4} for s in range(0, 4)]
              + [{"epoch": 0, "step": 3, "val/loss": 0.9}])
    write_csv(str(run / "csv" / "version_1" / "metrics.csv"),  # repeats step 3 after a resume: this value wins
              [{"epoch": 1, "step": s, "train/loss": 0.5, "lr-AdamW": 5e-5} for s in range(3, 6)])
    write_csv(str(run / "metrics.csv"),
              [{"epoch": 2, "step": s, "train/loss": 0.25, "train/kl_loss": 0.1, "perf/images_per_sec": 30.0,
                "shapes/color": 0.5} for s in range(6, 8)] + [{"epoch": 2, "step": 7, "val/loss": 0.4}])
    return run


def test_version_folders_are_combined_and_the_later_value_wins(tmp_path):
    run = make_run(tmp_path)
    files = P.metrics_files(str(run))
    assert [os.path.relpath(f, run) for f in files] == ["metrics.csv", "csv/version_0/metrics.csv",
                                                        "csv/version_1/metrics.csv"]
    series = P.read_metrics(files)
    assert sorted(series["train/loss"]) == list(range(8)) and series["train/loss"][3] == 0.5
    assert series["val/loss"] == {3: 0.9, 7: 0.4} and "epoch" not in series and "step" not in series
    groups = {key: P.metric_group(key) for key in series}
    assert groups == {"train/loss": "train_losses", "train/kl_loss": "train_losses", "val/loss": "val_losses",
                      "lr-AdamW": "learning_rate", "perf/images_per_sec": "metrics", "shapes/color": "metrics"}


def test_script_writes_one_valid_png_per_group(tmp_path, capsys):
    run = make_run(tmp_path)
    written = load_script().main(["-r", str(run)])
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["learning_rate.png", "metrics.png", "train_losses.png", "val_losses.png"]
    assert sorted(os.listdir(run / "plots")) == names
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            image.verify()
    assert capsys.readouterr().out.count("wrote ") == 4


def test_bad_run_folders_are_one_line_errors(tmp_path, capsys):
    from ldm.inference import entry

    script = load_script()
    assert entry.run(script.main, ["-r", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: -r/--resume: {tmp_path / 'missing'} is not a folder"
    assert entry.run(script.main, ["-r", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.csv" in err


def test_plotting_at_the_end_of_training_never_raises(tmp_path, caplog, monkeypatch):
    assert P.plot_run_safely(str(tmp_path / "removed_run")) == []  # no metrics: nothing, silently
    run = make_run(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(P, "_figure", broken)
    assert P.plot_run_safely(str(run)) == []
    assert "could not plot the metrics of" in caplog.text and "RuntimeError: no display" in caplog.text
