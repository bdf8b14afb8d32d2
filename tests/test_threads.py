"""The thread policy: CPUs counted from affinity and cgroup quota, one setting applied to every pool."""

from __future__ import annotations

import numba
import torch

from stmorph import _threads
from stmorph._threads import Settings, available_cpus, thread_limits


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _threads._cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert _threads._cgroup_quota(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert _threads._cgroup_quota(v1) is None


def test_available_cpus_respects_quota(monkeypatch):
    monkeypatch.setattr(_threads, "_cgroup_quota", lambda root=None: 1.2)
    assert available_cpus() == min(2, len(__import__("os").sched_getaffinity(0)))
    monkeypatch.setattr(_threads, "_cgroup_quota", lambda root=None: 0.5)
    assert available_cpus() == 1


def test_settings_env_and_thread_limits(monkeypatch):
    s = Settings()
    monkeypatch.setenv("STMORPH_THREADS", "1")
    assert s.threads() == 1
    s.n_threads = 3
    assert s.threads() == 3 and s.workers() == 3
    before = (torch.get_num_threads(), numba.get_num_threads())
    with thread_limits(1) as n:
        assert n == 1 and torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_model_threads_small_models_default_to_one(monkeypatch):
    from stmorph._threads import model_threads, settings

    monkeypatch.delenv("STMORPH_THREADS", raising=False)
    monkeypatch.setattr(settings, "n_threads", None)
    monkeypatch.setattr(settings, "n_workers", None)
    assert model_threads(None, small=True) == 1
    assert model_threads(None, small=False) == available_cpus()
    assert model_threads(2, small=True) == 2  # an explicit argument wins
    monkeypatch.setattr(settings, "n_threads", 2)  # so does the user's setting
    assert model_threads(None, small=True) == 2
    monkeypatch.setattr(settings, "n_threads", None)
    monkeypatch.setenv("STMORPH_THREADS", "2")
    assert model_threads(None, small=True) == 2
