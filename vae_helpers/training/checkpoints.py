"""A run's checkpoint folder: the only code that reads or writes its files.

The folder holds ``fit.json`` (what the run is: ``run_identity``), ``history.json`` (one
row per completed epoch) and the ``tf.train.Checkpoint`` of the model, Adam's state and
the epoch count at every epoch's end (``ckpt-N``; the newest two are kept).

``Checkpoints(folder, identity, epochs, resume)`` stands for the folder of one run.
``check()`` decides, writing nothing, whether the run may go on there: a folder that
holds a checkpoint needs ``resume``, and a resume needs the same identity and at least
as many epochs. ``open(model, optimizer, epoch)`` takes the folder's lock (unless the
run directory's lock already covers it), checks (once), restores the newest readable
checkpoint or starts the folder afresh, and returns the history so far; ``save`` writes
an epoch's end.

Faults. ``history.json`` is written first (atomically), then the checkpoint, which
``CheckpointManager`` records as the latest only once its files are complete. A process
killed at any moment therefore resumes from its last completed epoch with the numbers of
an uninterrupted run; a write that fails raises ``RunWriteError``, which names the file
and the last good checkpoint, and leaves that checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from vae_helpers import io
from vae_helpers.backend import tf
from vae_helpers.outdirs import run_lock
from vae_helpers.training.history import History
from vae_helpers.training.settings import IDENTITY, SCHEDULE_DEFAULTS, TrainingSettings

FIXES = "full disk, file size limit, permissions"


class CheckpointError(RuntimeError):
    """No checkpoint in the directory can be read back."""


class RunWriteError(OSError):
    """A checkpoint or a run file could not be written: the disk is full, a file size
    limit was reached, the directory is not writable, ...

    Nothing already written is damaged: the message names what failed, where, and
    the last good checkpoint, from which the run can be resumed once the cause is
    fixed. ``errno`` is the underlying error number when it is known, ``path``
    the file or checkpoint that could not be written.
    """

    def __init__(self, message: str, errno: int | None = None, path=None):
        super().__init__(message)
        self.errno = errno
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return self.args[0]


def _reason(err: BaseException) -> str:
    """The cause of a failed write in a few words (``No space left on device``)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, tf.errors.OpError):
        # e.g. "{{function_node ...}} dir/ckpt-3_temp/part-...; File too large [Op:SaveV2]"
        text = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message)
        text = re.sub(r"\s*\[Op:\w+\]\s*$", "", text.strip().splitlines()[0] if text else "")
        return text.rsplit("; ", 1)[-1] or type(err).__name__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def write_failure(what: str, path, err: BaseException, checkpoint_dir) -> RunWriteError:
    """The ``RunWriteError`` for a failed write of ``what`` (at ``path``), stating which
    checkpoint in ``checkpoint_dir`` is the last good one and how to go on."""
    latest = None
    if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
        with contextlib.suppress(Exception):  # a directory we cannot read has no checkpoint
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest:
        kept = (f"the last good checkpoint ({latest}, epoch {latest.rsplit('-', 1)[1]}) is "
                f"intact: fix the cause ({FIXES}) and resume the run (--resume, or "
                "resume=True)")
    else:
        kept = (f"no epoch had been checkpointed yet: fix the cause ({FIXES}) and start "
                "the run again")
    return RunWriteError(f"could not write {what} ({path}): {_reason(err)}; {kept}",
                         errno=getattr(err, "errno", None), path=path)


def run_identity(model, x_train, settings: TrainingSettings) -> dict:
    """What a run's checkpoint must agree with to be resumed (its ``fit.json``).

    The training data enter as their count and a fingerprint (SHA-256 of the bytes);
    the settings as the fields of ``settings.IDENTITY``, the data variant (by default the
    likelihood's) and the resolved schedule.
    """
    x = np.ascontiguousarray(x_train)
    values = {name: getattr(settings, name) for name in IDENTITY}
    return dict(model=model.config, n_train=int(x.shape[0]),
                data_sha256=hashlib.sha256(x.tobytes()).hexdigest(),
                data_variant=settings.data_variant or model.likelihood.data_variant,
                batch_size=values["batch_size"], learning_rate=values["learning_rate"],
                seed=int(values["seed"]), n_samples=values["n_samples"], **settings.schedule)


def completed_epochs(checkpoint_dir) -> int:
    """Epochs recorded by the newest checkpoint in ``checkpoint_dir`` (0 if there is none)."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


class Checkpoints:
    """The checkpoint folder of one run (see the module's documentation).

    Args:
        folder: the folder (created by ``open`` if missing).
        identity: ``run_identity`` of the run.
        epochs: the epochs the run trains up to.
        resume: continue from the newest checkpoint in the folder.
        lock: take the folder's lock (``outdirs.run_lock``) while it is open; ``False``
            when the lock of the run directory around it is held already.
    """

    def __init__(self, folder, identity: dict, epochs: int, resume: bool = False,
                 lock: bool = True):
        self.folder = Path(folder)
        self.identity, self.epochs, self.resume, self.lock = identity, epochs, resume, lock
        self._checked: int | None = None
        self._manager = None

    def check(self) -> int:
        """The epochs already completed in the folder (0 for a new run); writes nothing.

        Raises:
            FileExistsError: the folder holds a checkpoint and ``resume`` is False.
            ValueError: the run there was trained with other settings (named in the
                message), or has trained more than ``epochs`` epochs already.
        """
        if self._checked is not None:
            return self._checked
        latest = tf.train.latest_checkpoint(str(self.folder)) if self.folder.is_dir() else None
        done = int(latest.rsplit("-", 1)[1]) if latest else 0
        if done and not self.resume:
            raise FileExistsError(
                f"{self.folder} already holds a checkpoint ({Path(latest).name}); pass "
                "resume=True to continue that run, or give an empty checkpoint_dir")
        if done:
            self._check_identity(done)
        self._checked = done
        return done

    def _check_identity(self, done: int) -> None:
        path = self.folder / "fit.json"
        if path.exists():
            # a fit.json written before the schedule settings existed: trained without them
            saved = {**SCHEDULE_DEFAULTS, **io.read_json(path)}
            if isinstance(saved.get("model"), dict):  # written before models had a beta
                saved["model"] = {"beta": 1.0, **saved["model"]}
            changed = sorted(k for k in self.identity if saved.get(k) != self.identity[k])
            if changed:
                hint = ""
                if (changed == ["lr_decay_epochs"] and saved.get("lr_decay_epochs") is not None
                        and self.identity["lr_decay_epochs"] is not None):
                    hint = (f" (its learning rate decays over {saved['lr_decay_epochs']:g} "
                            "epochs: to train it longer, give that lr_decay_epochs explicitly)")
                raise ValueError(
                    f"cannot resume {self.folder}: it was trained with different settings "
                    f"({', '.join(changed)}){hint}; resume with the same settings or start a "
                    "new run")
        if self.epochs < done:
            raise ValueError(f"cannot resume {self.folder} to {self.epochs} epochs: it has "
                             f"already trained {done}; ask for at least {done}")

    @contextlib.contextmanager
    def open(self, model, optimizer, epoch: tf.Variable):
        """Hold the folder for training ``model`` with ``optimizer``; yields the ``History``
        of the epochs done (``epoch`` is set to their count).

        Raises:
            RunLocked: another process holds the folder's lock.
            RunWriteError: the lock file or ``fit.json`` could not be written.
            CheckpointError: ``resume`` found checkpoints, but none can be read.
            FileExistsError, ValueError: as ``check``.
        """
        with contextlib.ExitStack() as stack:
            if self.lock:
                try:  # one process at a time writes checkpoints here
                    stack.enter_context(run_lock(self.folder))
                except OSError as err:
                    raise write_failure("the lock file", err.filename or self.folder, err,
                                        self.folder) from err
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
            ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
            self._manager = tf.train.CheckpointManager(ckpt, str(self.folder), max_to_keep=2)
            history = self._start_or_restore(ckpt, epoch)
            self._remove_leftovers()
            try:
                yield history
            finally:
                self._manager = None

    def _start_or_restore(self, ckpt, epoch: tf.Variable) -> History:
        if not self.check():
            self._write_json("fit.json", self.identity, "the training settings")
            return History()
        failures = []
        for path in reversed(self._manager.checkpoints):  # newest first; older if damaged
            try:
                ckpt.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as err:
                failures.append(f"{Path(path).name} ({type(err).__name__})")
                continue
            if failures:
                warnings.warn(f"{', '.join(failures)} could not be read; resuming from "
                              f"{Path(path).name} instead", stacklevel=2)
            break
        else:
            raise CheckpointError(
                f"cannot resume {self.folder}: no checkpoint there can be read "
                f"({', '.join(failures)}); start a new run")
        rows = []
        if (self.folder / "history.json").exists():
            rows = io.read_json(self.folder / "history.json")
        return History(rows=rows[: int(epoch.numpy())])

    @property
    def latest(self) -> str | None:
        """The newest checkpoint recorded while the folder is open."""
        return None if self._manager is None else self._manager.latest_checkpoint

    def save(self, history: History, epoch: int) -> None:
        """The end of epoch ``epoch``: the history first, then the checkpoint.

        After a crash between the two writes the history is one row ahead of the
        checkpoint, and resuming truncates it to the checkpoint. A failed save leaves
        the previous checkpoint the latest one (``RunWriteError``).
        """
        self._write_json("history.json", history.rows, "the training history")
        try:
            self._manager.save(checkpoint_number=epoch)
        except (OSError, tf.errors.OpError) as err:
            self._remove_unrecorded(epoch)
            raise write_failure(f"the checkpoint of epoch {epoch}", self.folder / f"ckpt-{epoch}",
                                err, self.folder) from err

    def _write_json(self, name: str, obj, what: str) -> None:
        try:
            io.write_json(self.folder / name, obj)
        except OSError as err:
            raise write_failure(what, self.folder / name, err, self.folder) from err

    def _remove_leftovers(self) -> None:
        """Temporary files of saves that were killed or failed (none is ever read back; the
        lock guarantees that no other process is saving meanwhile)."""
        for path in self.folder.glob("ckpt-*_temp"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob("checkpoint.tmp*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def _remove_unrecorded(self, number: int) -> None:
        """Remove the files of checkpoint ``number`` unless the state file records it.

        ``CheckpointManager.save`` writes the new checkpoint's files (data into a
        temporary directory, then renamed; the index through a temporary file), and only
        then records it as the latest in the ``checkpoint`` state file (written
        atomically) and deletes the oldest: a save that failed part-way has recorded and
        deleted nothing, and its unrecorded files go here.
        """
        with contextlib.suppress(Exception):
            state = tf.train.get_checkpoint_state(str(self.folder))
            recorded = set() if state is None else {
                Path(p).name for p in [state.model_checkpoint_path,
                                       *state.all_model_checkpoint_paths]}
            if f"ckpt-{number}" not in recorded:
                for path in self.folder.glob(f"ckpt-{number}.*"):
                    with contextlib.suppress(OSError):
                        path.unlink()
        self._remove_leftovers()
