#!/usr/bin/env python
"""Plot a run's losses, learning rate and metrics from its CSV logs (PNG files, one per group).

    python scripts/plot_metrics.py -r logs/<run> [--out DIR]

Reads `<run>/metrics.csv` and the metrics.csv of any version folders (older layouts, several resumes), combined
(for a batch logged twice, the later value wins), and writes into `<run>/plots/` (or --out): train_losses.png,
val_losses.png, learning_rate.png and metrics.png, each with one panel per metric against the training batch;
groups without metrics are left out. main.py writes the same plots at the end of training.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.errors import UsageError  # noqa: E402
from ldm.inference import entry  # noqa: E402  (torch-free: --help answers before torch loads)
from ldm.trainer.plots import PLOTS_DIR, plot_run  # noqa: E402


def main(argv: list[str] | None = None) -> list[str]:
    """Parse the arguments, write the plots, print their paths; returns them."""
    parser = entry.script_parser(__doc__)
    parser.add_argument("-r", "--resume", required=True, metavar="RUN", help="run folder (logs/<run>)")
    parser.add_argument("--out", default=None, help=f"output folder (default: <run>/{PLOTS_DIR})")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.resume):
        raise UsageError(f"-r/--resume: {args.resume} is not a folder")
    try:
        written = plot_run(args.resume, args.out)
    except FileNotFoundError as err:
        raise UsageError(f"-r/--resume: {err} (is it a main.py run folder? metrics appear after the first "
                         f"logged batch)") from None
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    sys.exit(entry.run(main))
