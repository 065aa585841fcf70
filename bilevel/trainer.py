"""The one training loop (DESIGN §3): device, seeds, steps and epochs, evaluation cadence,
train-only wall clock, checkpoints, resume, divergence, and what is logged.

Run directory contract: ``config.yaml`` (written by the caller), ``metrics.csv`` (one row per
evaluation), ``run.json`` (status completed | diverged | failed | interrupted, seed, git
revision, torch version, device, train seconds, config fingerprint), ``checkpoint.pt`` (latest
state, with the config and its fingerprint: a checkpoint is only continued by the same config,
see bilevel.app.rundir), and ``<probe>.csv`` per probe (one row per measurement).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bilevel import tree
from bilevel.algorithms.base import Algorithm, State, load_state_dict, params_finite, state_dict
from bilevel.logging import CSVLogger, MetricsLogger
from bilevel.memory import peak_mb, reset_peak
from bilevel.oracles import OracleCounter
from bilevel.problem import Problem

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class Probe(Protocol):
    """A measurement of the iterates that is not part of the algorithm (``probe=...``; e.g.
    :class:`bilevel.diagnostics.smoothness.SmoothnessProbe`). The trainer calls ``measure`` at
    step 0 and every ``every`` steps with x_t and the algorithm's lower point, outside the clock,
    with the global RNG streams restored afterwards; a probe builds its own oracle layer and
    batches (it never sees the run's :class:`Problem`), so no call of it reaches the run's oracle
    counts or its generator. Rows go to ``<name>.csv``; ``state_dict`` is checkpointed."""

    name: str
    every: int

    def measure(self, task: Any, x: Any, y: Any, step: int) -> dict[str, Any]: ...
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class RunResult:
    status: str
    rows: list[dict[str, Any]]
    train_seconds: float
    run_dir: Path
    info: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs ``algorithm`` on ``task`` for ``max_steps`` iterations.

    Evaluation every ``eval_every`` steps (and at step 0 and the end) is excluded from the clock,
    and so is a warm-up (one throwaway init + step on copies); the clock includes the
    algorithm's initialization (its warm start costs oracle calls).
    A checkpoint is written every ``checkpoint_every`` steps and when a stop is requested
    (SIGINT/SIGTERM or :meth:`request_stop`); ``resume=True`` continues from it.
    ``callbacks`` are called as ``cb(trainer, state)`` after every step; ``probes``
    (:class:`Probe`) measure at step 0 and every ``probe.every`` steps, outside the clock.
    The algorithm sees the run's length as ``problem.horizon`` = ``max_steps`` (horizon-dependent
    step sizes, TTSA).
    """

    def __init__(
        self,
        task: Any,
        algorithm: Algorithm,
        run_dir: str | Path,
        max_steps: int,
        eval_every: int | None = None,
        checkpoint_every: int | None = None,
        seed: int = 0,
        device: str = "auto",
        loggers: list[MetricsLogger] | None = None,
        config: dict[str, Any] | None = None,
        resume: bool = False,
        progress: bool = True,
        callbacks: list[Callable[[Trainer, State], None]] | None = None,
        warmup: bool = True,
        diverge_above: float | None = None,
        log_every: int | None = None,
        probes: list[Probe] | None = None,
    ):
        self.task, self.algorithm = task, algorithm
        self.run_dir = Path(run_dir)
        self.max_steps = int(max_steps)
        self.eval_every = int(eval_every or task.steps_per_epoch)
        self.checkpoint_every = checkpoint_every
        self.seed, self.device = seed, resolve_device(device)
        self.loggers = [CSVLogger(), *(loggers or [])]
        self.config = config or {}
        self.fingerprint = _fingerprint(self.config) if self.config else None
        self.resume, self.progress = resume, progress
        self.callbacks = callbacks or []
        self.warmup = warmup
        self.diverge_above = diverge_above
        self._steps = StepNorms(log_every)
        self.probes = list(probes or [])
        self._probe_logs = {p.name: CSVLogger(f"{p.name}.csv") for p in self.probes}
        self._probe_rows: dict[str, list[dict[str, Any]]] = {p.name: [] for p in self.probes}
        self._stop_requested = False

    # -- public --------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop at the end of the current step, writing a checkpoint (resumable)."""
        self._stop_requested = True

    def fit(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._seconds = {"warmup": 0.0, "eval": 0.0}  # this fit, outside the training clock
        seed_everything(self.seed)
        self.task.to(self.device)
        counter = OracleCounter()
        generator = torch.Generator().manual_seed(self.seed)
        problem = Problem(self.task, generator, counter, horizon=self.max_steps)
        init_gen = torch.Generator().manual_seed(self.seed + 10_000)
        x, y = self.task.init_params(init_gen)

        ckpt = self._load_checkpoint() if self.resume else None
        reset_peak(self.device)
        self._write_info("running", 0.0, 0)
        wall = 0.0
        rows: list[dict[str, Any]] = []
        state = None
        started: list[Any] = []
        status = "completed"
        previous = _install_signal_handlers(self.request_stop)
        bar = None
        try:  # from here on every failure is recorded: run.json says failed, with its line
            _import_lazily_loaded_modules()
            t0 = self._clock()
            state = self.algorithm.init(problem, x, y)
            wall += self._clock() - t0
            if self.warmup:
                t0 = self._clock()
                self._warmup(state)
                self._seconds["warmup"] += self._clock() - t0
            if ckpt is not None:
                state = load_state_dict(state, ckpt["state"])
                problem.generator.set_state(ckpt["generator"])
                counter.load_state_dict(ckpt["counter"])
                wall, rows = ckpt["wall_s"], ckpt["rows"]
                self._steps.rows = ckpt.get("step_rows", [])
                for p in self.probes:
                    saved = ckpt.get("probes", {}).get(p.name, {"rows": [], "state": None})
                    self._probe_rows[p.name] = saved["rows"]
                    p.load_state_dict(saved["state"])
                _restore_global_rng(ckpt["rng"])
            for lg in self.loggers:
                lg.start(self.run_dir, self.config, rows)
                started.append(lg)
            self._steps.start(self.run_dir)
            for name, log in self._probe_logs.items():
                log.start(self.run_dir, {}, self._probe_rows[name])
            bar = _progress_bar(self.max_steps, state.t, self.progress)
            if not rows:
                t0 = self._clock()
                status = self._evaluate(state, counter, wall, rows) or status
                self._probe(state)
                self._seconds["eval"] += self._clock() - t0
            while state.t < self.max_steps and status == "completed":
                t0 = self._clock()
                state = self.algorithm.step(problem, state)
                boundary = state.t % self.eval_every == 0 or self._probe_due(state.t)
                wall += self._clock(sync=boundary) - t0
                bar.update(1)
                for cb in self.callbacks:
                    cb(self, state)
                self._steps.record(state)
                t0 = self._clock(sync=False)
                if state.t % self.eval_every == 0 or state.t == self.max_steps:
                    self._steps.flush()
                    status = self._evaluate(state, counter, wall, rows) or status
                    bar.set_postfix(_short(rows[-1]), refresh=False)
                if status == "completed":
                    self._probe(state)
                self._seconds["eval"] += self._clock(sync=False) - t0
                if self.checkpoint_every and state.t % self.checkpoint_every == 0:
                    self._save_checkpoint(state, problem, counter, wall, rows)
                if self._stop_requested and status == "completed":
                    self._save_checkpoint(state, problem, counter, wall, rows)
                    status = "interrupted"
        except Exception as err:
            status = "failed"
            first = (str(err).strip().splitlines() or [""])[0]
            steps = state.t if state is not None else 0
            self._write_info(status, wall, steps, counter, error=f"{type(err).__name__}: {first}")
            for lg in started:
                lg.finish(status)
            raise
        finally:
            if bar is not None:
                bar.close()
            _restore_signal_handlers(previous)
        self._write_info(status, wall, state.t, counter)
        for lg in self.loggers:
            lg.finish(status)
        if status == "completed" and self.checkpoint_every:
            self._save_checkpoint(state, problem, counter, wall, rows)
        return RunResult(status, rows, wall, self.run_dir, {"state": state})

    # -- internals -------------------------------------------------------------------------
    def _warmup(self, state: State) -> None:
        """One throwaway step on a copy of the initialized state, outside the clock: first-call
        costs (kernel selection, lazy initialisation, allocator growth) are not charged to the
        algorithm. The initialization itself (e.g. BO-REP's refinement) is not repeated.
        Training state, RNG streams and oracle counts are untouched."""
        saved = _global_rng()
        scratch_gen = torch.Generator().manual_seed(self.seed + 20_000)
        scratch = Problem(self.task, scratch_gen, horizon=self.max_steps)
        self.algorithm.step(scratch, copy.deepcopy(state))
        self._clock()
        _restore_global_rng(saved)

    def _clock(self, sync: bool = True) -> float:
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _evaluate(
        self, state: State, counter: OracleCounter, wall: float, rows: list[dict[str, Any]]
    ) -> str | None:
        """Append one metrics row; return 'diverged' if the iterate is no longer finite."""
        steps_per_epoch = self.task.steps_per_epoch
        row: dict[str, Any] = {
            "step": state.t,
            "epoch": state.t / steps_per_epoch,
            "wall_s": wall,
            **counter.columns(),
        }
        hg = state.hypergrad
        for key, value in (
            ("hypergrad_norm", hg and hg.value),
            ("grad_x_f_norm", hg and hg.grad_x_f),
            ("second_order_norm", hg and hg.second_order),
        ):
            row[key] = float(tree.norm(value)) if value is not None else math.nan
        finite = params_finite(state)
        y_point = self.algorithm.lower_point(state)
        if finite:
            row.update(self.task.evaluate(state.x, y_point))
        if finite and hasattr(self.task, "y_star"):  # y* alone logs lower_error (deep AUC)
            closed = self.task.has_closed_form
            with torch.no_grad():
                if closed:
                    row["true_hypergrad_norm"] = float(tree.norm(self.task.hypergrad_true(state.x)))
                row["lower_error"] = float(tree.norm(tree.sub(y_point, self.task.y_star(state.x))))
                if closed:
                    row["phi"] = float(self.task.phi(state.x))
        rows.append(row)
        for lg in self.loggers:
            lg.log(row)
        upper = row.get("upper_loss", 0.0)
        bad_estimate = hg is not None and not math.isfinite(row["hypergrad_norm"])
        if not finite or not math.isfinite(upper) or bad_estimate or self._blew_up(row):
            return "diverged"
        return None

    def _probe_due(self, step: int) -> bool:
        return any(step % p.every == 0 for p in self.probes)

    def _probe(self, state: State) -> None:
        """Each due probe's row (module docstring of :class:`Probe`): after the clock stopped
        (the step's device work is synchronized on probe steps), the global RNG restored."""
        due = [p for p in self.probes if state.t % p.every == 0]
        if not due or not params_finite(state):
            return
        saved = _global_rng()
        y_point = self.algorithm.lower_point(state)
        for p in due:
            row = {"step": state.t, "epoch": state.t / self.task.steps_per_epoch}
            row.update(p.measure(self.task, state.x, y_point, state.t))
            self._probe_rows[p.name].append(row)
            self._probe_logs[p.name].log(row)
        _restore_global_rng(saved)

    def _blew_up(self, row: dict[str, Any]) -> bool:
        """The blow-up guard (``trainer.diverge_above``): a finite but runaway loss or
        hypergradient (e.g. 3e27) marks the run diverged, as a non-finite one does."""
        limit = self.diverge_above
        if limit is None:
            return False
        watched = (row.get(k) for k in ("upper_loss", "lower_loss", "hypergrad_norm"))
        return any(isinstance(v, (int, float)) and abs(v) > limit for v in watched)

    def _save_checkpoint(self, state, problem, counter, wall, rows) -> None:
        self._steps.flush()
        payload = {
            "step_rows": self._steps.rows,
            "probes": {
                p.name: {"rows": self._probe_rows[p.name], "state": p.state_dict()}
                for p in self.probes
            },
            "state": state_dict(state),
            "generator": problem.generator.get_state(),
            "counter": counter.state_dict(),
            "wall_s": wall,
            "rows": rows,
            "rng": _global_rng(),
            "fingerprint": self.fingerprint,
            "config": self.config or None,
        }
        atomic_write(self.run_dir / CHECKPOINT, lambda tmp: torch.save(payload, tmp))

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # a truncated file from a killed process
            raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
        stored = ckpt.get("fingerprint")
        if self.fingerprint and stored and stored != self.fingerprint:
            from bilevel.app.rundir import RunDirError, mismatch_message

            raise RunDirError(mismatch_message(self.run_dir, ckpt.get("config"), self.config))
        return ckpt

    def _write_info(
        self,
        status: str,
        wall: float,
        steps: int,
        counter: OracleCounter | None = None,
        error: str | None = None,
    ) -> None:
        info = {
            "status": status,
            "seed": self.seed,
            "git_revision": git_revision(),
            "torch_version": torch.__version__,
            "device": str(self.device),
            "train_seconds": wall,
            "eval_seconds": self._seconds["eval"],  # evaluations, probes, step logs
            "warmup_seconds": self._seconds["warmup"],
            "steps": steps,
            "max_steps": self.max_steps,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "fingerprint": self.fingerprint,
        }
        info["peak_memory_mb"], info["peak_memory_kind"] = peak_mb(self.device)
        if counter is not None:
            info["oracle_calls"] = counter.state_dict()
        if error:
            info["error"] = error
        text = json.dumps(info, indent=2) + "\n"
        atomic_write(self.run_dir / "run.json", lambda tmp: tmp.write_text(text))


def _import_lazily_loaded_modules() -> None:
    """Import what torch loads on first use inside the timed region: the first ``torch.optim``
    optimizer of a process imports ``torch._dynamo`` (its methods are wrapped in a lazy
    ``_disable_dynamo``), 1.4 s on this CPU, which would be charged to the first run of each
    process (and its time axis) and to no other."""
    import torch._dynamo  # noqa: F401


class StepNorms:
    """``steps.csv`` (``trainer.log_every``): every k steps, the norms of the step's hypergradient
    estimate, of ∇ₓf and of its second-order part (e.g. AdamBO's ratio ‖∇²ₓᵧg·v‖ / ‖h‖, App. J),
    without an evaluation. The norms stay on the device and are written at the next evaluation
    or checkpoint with one host transfer, so logging every step adds no sync per step."""

    COLUMNS = ("hypergrad_norm", "grad_x_f_norm", "second_order_norm")

    def __init__(self, every: int | None):
        self.every = every
        self.rows: list[dict[str, float]] = []
        self._pending: list[tuple[int, Tensor]] = []
        self._csv = CSVLogger("steps.csv")
        self._on = False

    def start(self, run_dir: Path) -> None:
        if self.every:
            self._csv.start(run_dir, {}, self.rows)
            self._on = True

    def record(self, state: State) -> None:
        hg = state.hypergrad
        if not self._on or hg is None or state.t % self.every:
            return
        norm = tree.norm(hg.value).detach().float()  # stays on the device until flush()
        nan = torch.full_like(norm, math.nan)
        parts = (hg.grad_x_f, hg.second_order)
        others = [tree.norm(v).detach().float() if v is not None else nan for v in parts]
        self._pending.append((state.t, torch.stack([norm, *others])))

    def flush(self) -> None:
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).tolist()  # one transfer
        for (t, _), row in zip(self._pending, values, strict=True):
            entry = {"step": t, **dict(zip(self.COLUMNS, row, strict=True))}
            entry["second_order_ratio"] = row[2] / row[0] if row[0] else math.nan
            self.rows.append(entry)
            self._csv.log(entry)
        self._pending = []


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` to ``path``.tmp, then rename over ``path``: the previous file stays whole if the
    write fails (a full disk, an unwritable directory), and no .tmp file is left behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fingerprint(config: dict[str, Any]) -> str:
    from bilevel.app.rundir import fingerprint

    return fingerprint(config)


def _short(row: dict[str, Any]) -> dict[str, str]:
    keys = ("true_hypergrad_norm", "hypergrad_norm", "upper_loss")
    return {k: f"{row[k]:.3g}" for k in keys if k in row and not math.isnan(row[k])}


def _global_rng() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _restore_global_rng(saved: dict[str, Any]) -> None:
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"].cpu())


def _install_signal_handlers(stop: Callable[[], None]) -> dict[int, Any]:
    """First SIGINT/SIGTERM: stop after the current step with a checkpoint; second: abort."""
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        stop()
        signal.signal(signum, previous.get(signum, signal.SIG_DFL))

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. a joblib worker thread)
        pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, *a: Any, **k: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)
