"""How many threads stmorph may use, and one place that applies it to torch, numba and BLAS.

A process may use fewer cores than the machine has: its CPU affinity (``taskset``, SLURM's ``--cpus-per-task``)
and its cgroup CPU quota (Docker ``--cpus``, Kubernetes limits) both cap it. :func:`available_cpus` counts what is
really ours; :data:`settings` holds the user's choice (``stmorph.settings.n_threads = 4`` or ``stmorph --threads
4 ...``; environment variable ``STMORPH_THREADS``), and :func:`thread_limits` applies it to every thread pool in a
block.

OpenMP pools that spin while waiting collapse when the cores are shared (measured: MUSE 35x slower beside another
job). Unless the user set it, ``OMP_WAIT_POLICY=PASSIVE`` is put into the environment when stmorph is imported,
before torch or numba start their pools, so idle workers sleep instead of spinning.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["available_cpus", "settings", "Settings", "thread_limits", "resolve_threads", "resolve_n_jobs"]


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or ``None`` (no quota)."""
    try:
        v2 = root / "cpu.max"
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if not q.exists():
            q, p = root / "cpu.cfs_quota_us", root / "cpu.cfs_period_us"
        if q.exists() and p.exists():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """The CPUs this process may use: the smaller of its affinity and its cgroup quota (rounded up), at least 1.

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None and quota > 0:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


@dataclass
class Settings:
    """stmorph's process-wide settings.

    Attributes
    ----------
    n_threads
        Threads for torch, numba and BLAS in stmorph's compute (``None``: :func:`available_cpus`). Set it when the
        machine is shared. Also ``STMORPH_THREADS`` and the CLI's ``--threads``.
    n_workers
        Worker processes for per-cell work (CellProfiler crops, Leiden runs; ``None``: one per available CPU).
    small_model_threads
        Threads for models too small to gain from more (MUSE below 5,000 cells, the CPU VAE presets): one thread
        measured fastest for them beside another job (``benchmarks/RESULTS.md``, "Threads under load").
    """

    n_threads: int | None = None
    n_workers: int | None = None
    small_model_threads: int = 1

    def threads(self) -> int:
        """The thread count in force."""
        if self.n_threads is not None:
            return max(1, int(self.n_threads))
        env = os.environ.get("STMORPH_THREADS")
        if env:
            try:
                return max(1, int(env))
            except ValueError:
                pass
        return available_cpus()

    def workers(self) -> int:
        """The worker-process count in force."""
        return max(1, int(self.n_workers)) if self.n_workers is not None else self.threads()

    def apply(self) -> int:
        """Set torch, numba and BLAS/OpenMP pools of this process to :meth:`threads` (for scripts and the CLI;
        library calls use :func:`thread_limits` for a block). Returns the thread count."""
        from threadpoolctl import threadpool_limits

        n = self.threads()
        import numba
        import torch

        torch.set_num_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(limits=n)
        return n


#: The process-wide settings (``stmorph.settings``).
settings = Settings()


def resolve_threads(n: int | None) -> int:
    """``n`` when positive, else the setting in force (``None`` / ``-1`` / ``0`` mean "the default").

    Examples
    --------
    >>> resolve_threads(3)
    3
    """
    return int(n) if n is not None and int(n) > 0 else settings.threads()


def model_threads(n_jobs: int | None, *, small: bool) -> int:
    """Torch threads for training a model: ``n_jobs`` when given; else the user's thread setting when set; else
    :attr:`Settings.small_model_threads` for small models and :meth:`Settings.workers` for the others.

    Small models (MUSE below 5,000 cells, the CPU VAE presets) run fastest on one thread, quiet or beside another
    job (``benchmarks/RESULTS.md``, "Threads under load": MUSE demo 9.2 s quiet / 12.2 s beside a torch loop on
    one thread, 12.2 / 13.8 s on two; one ls1_cpu + ls5_cpu epoch 13.2 / 19.7 s on one, 12.1 / 30.7 s on two).

    Examples
    --------
    >>> model_threads(3, small=True)
    3
    """
    if n_jobs is not None:
        return resolve_n_jobs(n_jobs)
    if settings.n_threads is not None or os.environ.get("STMORPH_THREADS"):
        return settings.threads()
    return max(1, int(settings.small_model_threads)) if small else settings.workers()


def resolve_n_jobs(n_jobs: int | None) -> int:
    """The worker count an ``n_jobs`` argument means, the same for every stmorph function.

    ``n_jobs`` counts the worker processes or threads a function runs at once (its own pool, or torch's threads
    for the neural networks): a positive number is taken as is; ``None`` and ``-1`` mean
    :meth:`stmorph.settings.workers() <Settings.workers>` (the CPUs this process may use unless set otherwise);
    ``-2``, ``-3``, ... leave 1, 2, ... of those out (joblib's convention).

    Parameters
    ----------
    n_jobs
        The argument.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> resolve_n_jobs(3)
    3
    >>> resolve_n_jobs(None) == resolve_n_jobs(-1) == settings.workers()
    True
    """
    if n_jobs is None or int(n_jobs) == -1:
        return settings.workers()
    n = int(n_jobs)
    if n == 0:
        from .errors import StmorphInputError

        raise StmorphInputError("n_jobs=0", expected="a positive number of workers, or None / -1 for stmorph's setting")
    return n if n > 0 else max(1, settings.workers() + 1 + n)


@contextlib.contextmanager
def thread_limits(n: int | None = None) -> Iterator[int]:
    """Limit torch, numba and BLAS/OpenMP pools to ``n`` threads inside the block (``None``: the setting in force).

    Yields the thread count. Restores the previous torch and numba settings afterwards.

    Examples
    --------
    >>> with thread_limits(1) as n:
    ...     n
    1
    """
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    n = resolve_threads(n)
    old_t, old_n = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        torch.set_num_threads(old_t)
        numba.set_num_threads(old_n)


def _passive_openmp() -> None:
    """Ask OpenMP runtimes not to spin-wait (unless the user chose otherwise); called at ``import stmorph``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
