"""What a training run records: loss rows (CSV), TensorBoard scalars, |gamma| statistics during sparsity
training, validation APs, and the curves and histograms drawn at the end."""

from __future__ import annotations

import csv
import io
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from ..files import atomic_write_bytes, atomic_write_text
from ..model.checkpoint import serialize
from ..model.prune import plot_gamma_histograms
from ..model.safe_load import load_tensors
from .sparsity import gamma_statistics

LOSS_TERMS = ("box", "conf", "mask", "segm", "total")
LOSS_CSV, GAMMA_CSV, INITIAL_WEIGHTS, TENSORBOARD = "log.csv", "gamma.csv", "gamma_initial.pth", "tensorboard"
CURVES, GAMMA_HISTOGRAMS = "curves.png", "gamma_hist.png"
# Everything a run's log writes into its folder (besides the checkpoints).
RUN_FILES = (LOSS_CSV, GAMMA_CSV, INITIAL_WEIGHTS, TENSORBOARD, CURVES, GAMMA_HISTOGRAMS)


class TrainingLog:
    """The logs of the main process of one run in ``out_dir``.

    A run resumed at ``iteration`` keeps the rows up to it and drops any a stopped run wrote after its last
    checkpoint, so no iteration is logged twice. With a ``sparsity_scope`` (sparsity training) the |gamma|
    statistics of that scope are logged too (and the BN-free groups' norms with scope ``all``) and the
    weights at the start are kept (once, across resumes) for the before/after histogram.
    """

    def __init__(self, out_dir: Path, iteration: int, model: nn.Module, sparsity_scope: str | None):
        self.out_dir, self.sparsity = out_dir, sparsity_scope
        self.loss_csv, self.gamma_csv = out_dir / LOSS_CSV, out_dir / GAMMA_CSV
        self.initial_weights = out_dir / INITIAL_WEIGHTS
        self.writer, self._quiet = None, _QuietWriterThreads()
        try:
            self.writer = _tensorboard(out_dir, iteration)
            _start_csv(self.loss_csv, ["iteration", "lr", *LOSS_TERMS, "seconds"], iteration)
            if sparsity_scope:
                if not self.initial_weights.exists():
                    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                    atomic_write_bytes(self.initial_weights, serialize(state))
                _start_csv(self.gamma_csv, ["iteration", *gamma_statistics(model, sparsity_scope)], iteration)
        except BaseException:
            self.close()
            raise

    def losses(self, iteration: int, lr: float, losses: Mapping[str, float], seconds: float, model: nn.Module) -> None:
        _append_row(self.loss_csv, [iteration, lr, *(f"{losses[k]:.5f}" for k in LOSS_TERMS), f"{seconds:.1f}"])
        self._scalars("loss", losses, iteration)
        self._scalars("", {"lr": lr}, iteration)
        if self.sparsity:
            stats = gamma_statistics(model, self.sparsity)
            _append_row(self.gamma_csv, [iteration, *(f"{v:.5f}" for v in stats.values())])
            self._scalars("gamma", stats, iteration)

    def validation(self, row: Mapping[str, float]) -> None:
        iteration = int(row["iteration"])
        tqdm.write(f"iter {iteration}: box AP {100 * row['box_ap']:.2f}  mask AP {100 * row['mask_ap']:.2f}")
        self._scalars("val", {"box_ap": row["box_ap"], "mask_ap": row["mask_ap"]}, iteration)

    def finish(self, history: list[dict[str, float]], model: nn.Module) -> None:
        """The curves PNG, and with sparsity the |gamma| histograms before and after."""
        plot_curves(self.loss_csv, history, self.out_dir / CURVES)
        if self.sparsity:
            before = load_tensors(self.initial_weights)
            plot_gamma_histograms([before, model], ["before", "after"], self.out_dir / GAMMA_HISTOGRAMS)

    def close(self) -> None:
        """Close the TensorBoard writer (once). A write it failed is raised here unless one is on its way."""
        writer, self.writer = self.writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            failure = self._quiet.restore()
        if failure is not None and sys.exc_info()[1] is None:
            raise failure

    def _scalars(self, group: str, values: Mapping[str, float], iteration: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{group}/{name}" if group else name, value, iteration)


def _tensorboard(out_dir: Path, iteration: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("tensorboard is not installed: logging to CSV only")
        return None
    return SummaryWriter(str(out_dir / TENSORBOARD), purge_step=iteration)


class _QuietWriterThreads:
    """While a log is open, a failure in TensorBoard's writer thread (a full disk) is kept for :meth:`restore`
    instead of printed as a thread traceback: the main thread reports the same error as one line. Other
    threads' failures still reach the hook that was installed before."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__module__.startswith("tensorboard."):
            self.failure = self.failure or args.exc_value
        else:
            self._previous(args)

    def restore(self) -> BaseException | None:
        if threading.excepthook == self._hook:
            threading.excepthook = self._previous
        return self.failure


def _start_csv(path: Path, header: list[str], iteration: int) -> None:
    """A new CSV with ``header`` for a fresh run; a resumed run's file without the rows after ``iteration``."""
    if iteration == 0 or not path.exists():
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerow(header)
    else:
        _drop_rows_after(path, iteration)


def _append_row(path: Path, row: list[Any]) -> None:
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow(row)


def _drop_rows_after(csv_path: Path, iteration: int) -> None:
    """Remove the rows a run logged after its last checkpoint (it was stopped between checkpoints), so that
    a resumed run does not log those iterations twice."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= iteration]
    if len(kept) < len(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        atomic_write_text(csv_path, buffer.getvalue())


def plot_curves(log_path: Path, history: list[dict[str, float]], out_png: Path) -> None:
    """Loss terms over iterations and validation APs, in one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    with open(log_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    if rows:
        its = [int(r["iteration"]) for r in rows]
        for term in LOSS_TERMS:
            axes[0].plot(its, [float(r[term]) for r in rows], label=term, linewidth=1)
        axes[0].set_yscale("log")
    axes[0].set(title="training loss", xlabel="iteration")
    axes[0].legend()
    if history:
        its = [h["iteration"] for h in history]
        axes[1].plot(its, [100 * h["box_ap"] for h in history], "o-", label="box AP")
        axes[1].plot(its, [100 * h["mask_ap"] for h in history], "o-", label="mask AP")
        axes[1].legend()
    axes[1].set(title="validation AP@[.5:.95]", xlabel="iteration", ylabel="%")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out_png, buffer.getvalue())
