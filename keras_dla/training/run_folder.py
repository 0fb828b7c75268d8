"""The folder a training run writes, and the callbacks that write it and make the run resumable.

    DIR/backup/            BackupAndRestore state: the same command started again resumes where it stopped
                           (the backup before the latest is kept, for a kill that damages the latest)
    DIR/best.weights.h5    the weights of the best epoch (validation accuracy, or mean IoU)
    DIR/final.weights.h5   the weights after the last epoch (not written when a NaN loss stopped the run)
                           (no weights file is ever written with a NaN or infinite value: FiniteWeights)
    DIR/history.csv        one row per completed epoch (rewritten to the resumed epochs, then appended to)
    DIR/logs/              TensorBoard
    DIR/curves.png         loss and metric curves
    DIR/run.json           the configuration and the final figures

Under multi-worker training only the chief writes DIR; every other worker keeps its backup in
DIR/workers/worker-<index>/ (so that it resumes at the same epoch as the chief) and its other files in a temporary
folder that is deleted at the end (Keras 3 callbacks have no chief-only logic of their own). Weights files and
the curves are written through a temporary file and renamed, so that a kill never leaves a half-written one, and
every weights file (best, final, the backup) carries the checksum of `keras_dla.weights.checksum`, verified when it is
loaded or resumed from.
"""

import csv
import json
import os
import shutil
import tempfile

import h5py
import keras
import numpy as np

from keras_dla import files
from keras_dla.training import plots
from keras_dla.weights import checksum


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers where it happened (`message`).

    `finite` is the run's `FiniteWeights`, which every weights file of the run is checked with.
    """

    def __init__(self):
        super().__init__()
        self.epoch, self.message = 0, None
        self.finite = FiniteWeights()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.message = (
                f"The loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}: training stopped. "
                "Lower --lr, check the labels, or drop --mixed-precision."
            )
            self.model.stop_training = True


class Curves(keras.callbacks.Callback):
    """Redraws DIR/curves.png from DIR/history.csv after every epoch (so it covers restarted runs)."""

    def __init__(self, csv_path, png_path):
        super().__init__()
        self.csv_path, self.png_path = csv_path, png_path

    def on_epoch_end(self, epoch, logs=None):
        plots.plot_history(read_history(self.csv_path), self.png_path)


def read_history(csv_path):
    """Rows of history.csv as dicts of floats, one per epoch (the last row wins for a repeated epoch)."""
    if not os.path.isfile(csv_path):
        return []
    rows = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                values = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
            except ValueError:
                continue
            if "epoch" in values:
                rows[int(values["epoch"])] = values
    return [rows[e] for e in sorted(rows)]


class RunDirectory:
    """Where a worker writes: the chief's files in `output`, a non-chief's in a temporary folder.

    `tf_config` is the parsed TF_CONFIG of a multi-worker run (None otherwise); `chief` says whether this process
    is its chief (`keras_dla.training.is_chief`).
    """

    def __init__(self, output, tf_config=None, chief=True):
        self.output = os.path.abspath(output)
        self.chief = chief
        if self.chief:
            self.files = self.output
            self.backup = os.path.join(self.output, "backup")
        else:
            index = tf_config["task"]["index"]
            kind = tf_config["task"]["type"]
            self.files = tempfile.mkdtemp(prefix=f"keras_dla_{kind}{index}_")
            self.backup = os.path.join(self.output, "workers", f"{kind}-{index}", "backup")
        os.makedirs(self.files, exist_ok=True)
        os.makedirs(self.backup, exist_ok=True)
        for folder in (self.files, self.backup):  # a kill during a write leaves its temporary file behind
            for name in os.listdir(folder):
                if name.startswith(files.PARTIAL_PREFIX):
                    os.remove(os.path.join(folder, name))

    def path(self, name):
        return os.path.join(self.files, name)

    def cleanup(self):
        if not self.chief:
            shutil.rmtree(self.files, ignore_errors=True)

    def discard_if_unresumable(self):
        """Removes the run folder of a new run that failed before its first backup: nothing there to resume.

        A folder without a backup does not bind the next run to its settings (`keras_dla.training.check_resumable`),
        but nothing of a run that failed before it trained should be left.
        """
        has_backup = any(names for _, _, names in os.walk(self.backup))
        if self.chief and not has_backup:
            shutil.rmtree(self.output, ignore_errors=True)
        self.cleanup()


# What a run writes in its folder, besides its backup: removed when an attempt left them but no backup.
RUN_FILES = ("config.json", "history.csv", "best.weights.h5", "final.weights.h5", "curves.png", "run.json", "logs")


def has_backup(output):
    """Whether the run folder `output` holds a backup to resume from (any file in DIR/backup)."""
    return any(names for _, _, names in os.walk(os.path.join(output, "backup")))


def discard_attempt(output):
    """Removes what an attempt that made no backup left in `output` (`RUN_FILES`); other files stay.

    Such an attempt (killed in its first epoch, or before its first backup) resumes nothing: the next run
    starts from epoch 0, and the rows, best weights and settings of the attempt must not pass for its own.
    """
    for name in RUN_FILES:
        path = os.path.join(output, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def save_weights_atomically(model, path, attrs=None):
    """`model.save_weights(path)` through a temporary file, with its checksum (`checksum.save_weights`)."""
    checksum.save_weights(model, path, attrs)


def non_finite_variable(model):
    """The path of the first weight of `model` or variable of its optimizer holding a NaN or an infinity, else None.

    What a weights file holds: `model.weights` rather than `model.variables`, whose metric totals are NaN for the
    rest of an epoch after one NaN loss, finite weights or not.
    """
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    for variable in variables:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return getattr(variable, "path", None) or variable.name
    return None


class FiniteWeights:
    """Keeps every weights file of a run finite: `allows(model, what)` says whether `what` may be written.

    A weights file holding a NaN or an infinity (a diverged run) would be taken for a result, or resumed from;
    it is not written, and the first refusal of a run says so (once: later ones would repeat it every epoch).
    """

    def __init__(self):
        self.skipped = []

    def allows(self, model, what):
        variable = non_finite_variable(model)
        if variable is None:
            return True
        if not self.skipped:
            print(
                f"keras-dla train: the weights hold a NaN or an infinite value ({variable}): {what} is not written, "
                "nor any weights file of this run from now on.",
                flush=True,
            )
        self.skipped.append(what)
        return False


# The epoch a backup's weights were saved after, stored in the weights file itself too: a kill between the weights
# and training_metadata.json leaves a metadata file one backup behind its weights.
_BACKUP_EPOCH_ATTR = "keras_dla_backup_epoch"


class FiniteBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose backups are finite, checksummed and written whole (each file through a rename).

    Keras writes the backup in place; a kill mid-write would damage it. Here every file of it (the weights, the
    metadata, and their previous copies with `double_checkpoint`) is replaced only by a complete one, the weights
    carry their checksum (`weights.checksum`), and the epoch to resume at is read from the weights file. A latest
    backup that fails its checksum is an `OSError`, so that Keras falls back to the previous one.
    """

    def __init__(self, backup_dir, finite, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.finite = finite

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except OSError as e:
            raise OSError(
                f"The backup in {self.backup_dir} cannot be resumed from ({e}); delete that folder to start the "
                "run again, or choose another output folder."
            ) from None

    def _load_model(self):
        if os.path.isfile(self._weights_path):
            try:
                checksum.verify(self._weights_path)
            except checksum.DamagedWeightsError as e:
                raise OSError(str(e)) from None
        super()._load_model()
        if os.path.isfile(self._weights_path):
            with h5py.File(self._weights_path, "r") as f:
                epoch = f.attrs.get(_BACKUP_EPOCH_ATTR)
            if epoch is not None:
                self.model._initial_epoch = int(epoch)

    def _save_model(self):
        if not self.finite.allows(self.model, "the backup"):
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for current, previous in (
                (self._weights_path, self._prev_weights_path),
                (self._training_metadata_path, self._prev_training_metadata_path),
            ):
                if os.path.isfile(current):
                    files.write_atomically(previous, lambda temporary, c=current: shutil.copyfile(c, temporary))
        checksum.save_weights(self.model, self._weights_path, {_BACKUP_EPOCH_ATTR: self._current_epoch})
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        files.write_text(self._training_metadata_path, json.dumps(metadata))


class BestWeights(keras.callbacks.Callback):
    """Saves the weights to `path` whenever `monitor` improves, through a temporary file.

    Keras' `ModelCheckpoint(save_best_only=True)` writes in place: a kill during the write leaves a damaged file
    where the best weights were. Here the previous best stays until the new file is complete.
    """

    def __init__(self, path, monitor, mode, best=None, finite=None):
        super().__init__()
        self.path, self.monitor, self.mode, self.best = path, monitor, mode, best
        self.finite = finite or FiniteWeights()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(float(value)):
            return
        value = float(value)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            if self.finite.allows(self.model, os.path.basename(self.path)):
                self.best = value
                save_weights_atomically(self.model, self.path)


def drop_partial_last_row(csv_path):
    """Cuts a last line without its newline off `csv_path`: a kill while CSVLogger wrote it.

    The epoch runs again after the restart, and its new row would otherwise be appended to the partial one.
    """
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _is_value(text):
    """Whether `text` is a value CSVLogger writes: a number, "NA", nothing, or a bracketed list."""
    if text in ("", "NA") or (text.startswith("[") and text.endswith("]")):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _epoch_of(line, width, column):
    """The epoch of one whole history line, or None for a line a kill or damage left (cut short, garbled)."""
    if not line.endswith("\n"):
        return None
    try:
        fields = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) != width or not all(_is_value(v) for v in fields):
        return None
    epoch = fields[column]
    return int(epoch) if epoch.isascii() and epoch.isdigit() else None


def rewrite_history(csv_path, before_epoch):
    """Rewrites `csv_path` to hold each epoch before `before_epoch` once, in order, before rows are appended.

    A killed run leaves rows the restarted run writes again: the row of an epoch finished after the last backup
    (the epoch runs again), a row cut short by the kill, and the duplicates an older restart appended. The last
    whole row of each epoch is kept (as `read_history` reads it) and the header as it is; a file without a whole
    header line is removed, so that the logger writes a new one. The file is replaced atomically.
    """
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, encoding="utf-8", errors="replace", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    header = lines[0] if lines and lines[0].endswith("\n") else None
    fields = next(csv.reader([header]), []) if header else []
    if "epoch" not in fields:
        os.remove(csv_path)
        return
    width, column = len(fields), fields.index("epoch")
    rows = {}
    for line in lines[1:]:
        epoch = _epoch_of(line, width, column)
        if epoch is not None and epoch < before_epoch:
            rows[epoch] = line
    kept = header + "".join(rows[e] for e in sorted(rows))
    if kept != "".join(lines):

        def write(partial):
            with open(partial, "w", encoding="utf-8", newline="") as f:
                f.write(kept)

        files.write_atomically(csv_path, write)


class HistoryLog(keras.callbacks.CSVLogger):
    """`CSVLogger(append=True)` that first rewrites the file to the epochs the run resumes after (`rewrite_history`).

    The first epoch a run starts is the one its backup restored (`BackupAndRestore` sets it in its own
    `on_train_begin`, which may run after this one), so the file is opened at the first `on_epoch_begin`.
    """

    def __init__(self, filename):
        super().__init__(filename, append=True)
        self._opened = False

    def on_train_begin(self, logs=None):
        self._opened = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            rewrite_history(self.filename, epoch)
            super().on_train_begin()
            self._opened = True

    def on_epoch_end(self, epoch, logs=None):
        if self._opened:
            super().on_epoch_end(epoch, logs)


def make_callbacks(run_dir, monitor, mode, backup_every=None):
    """The run's callbacks and, separately, its `StopOnNaN` (whose `message` says why a run stopped).

    The best weights and the backup are written only while the weights are finite (`StopOnNaN.finite`, which
    the final weights are checked with too).
    """
    csv_path = run_dir.path("history.csv")
    drop_partial_last_row(csv_path)
    # A restarted run must not overwrite the best weights with a worse epoch: start from the best logged so far.
    logged = [r[monitor] for r in read_history(csv_path) if monitor in r]
    best = None
    if logged and os.path.isfile(run_dir.path("best.weights.h5")):
        best = max(logged) if mode == "max" else min(logged)
    nan = StopOnNaN()
    finite = nan.finite
    checkpoint = BestWeights(run_dir.path("best.weights.h5"), monitor, mode, best, finite)
    callbacks = [
        nan,
        # The row before the backup: a kill between them leaves a row for an epoch that runs again, which
        # HistoryLog drops when the run resumes (a row missing for a backed-up epoch could not be made again).
        HistoryLog(csv_path),
        checkpoint,
        Curves(csv_path, run_dir.path("curves.png")),
        keras.callbacks.TensorBoard(run_dir.path("logs"), update_freq="epoch"),
        # double_checkpoint: the previous backup is kept as *.bkp and used if a kill damaged the latest one.
        FiniteBackup(
            run_dir.backup,
            finite,
            save_freq=backup_every or "epoch",
            delete_checkpoint=False,
            double_checkpoint=True,
        ),
    ]
    return callbacks, nan
