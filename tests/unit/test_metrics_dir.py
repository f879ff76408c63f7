"""Where ``keyledger serve`` keeps the workers' memory-mapped metrics: a folder of the run's own,
owner only, never in the data directory; folders of runs killed earlier are removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from service import serving
from service.settings import Settings, SettingsError

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


@pytest.fixture
def no_multiproc_dir(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    yield
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def test_the_folder_is_the_run_s_own_and_owner_only(tmp_path, no_multiproc_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    abandoned = tmp_path / f"keyledger-metrics-{dead}-abc"
    abandoned.mkdir()
    (abandoned / "counter_1.db").write_bytes(b"\0" * 16)
    running = tmp_path / f"keyledger-metrics-{os.getpid()}-def"  # a live run's: left alone
    running.mkdir()
    settings = Settings(data_dir=tmp_path / "var", metrics_dir=tmp_path)
    settings.prepare_data_dir()
    (settings.data_dir / "metrics").mkdir()  # an earlier version's, with world-readable files
    (settings.data_dir / "metrics" / "histogram_7.db").write_bytes(b"\0")
    folder = serving.prepare_metrics_dir(settings)
    assert folder is not None and folder.parent == tmp_path and folder.name.startswith(f"keyledger-metrics-{os.getpid()}-")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not abandoned.exists() and running.exists()
    assert settings.data_dir not in folder.parents
    assert not (settings.data_dir / "metrics").exists()


def test_the_default_is_off_the_data_directory(tmp_path, no_multiproc_dir):
    settings = Settings(data_dir=tmp_path / "var")
    parent = serving.metrics_parent(settings)
    assert parent.is_dir() and settings.data_dir not in (parent, *parent.parents)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        assert str(parent) == "/dev/shm"  # shared memory: never a full disk's


def test_a_set_multiproc_dir_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
    assert serving.prepare_metrics_dir(Settings(data_dir=tmp_path / "var")) is None
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize("value", ["relative/path", "/tmp/a\nb"])
def test_the_setting_wants_an_absolute_path(value):
    with pytest.raises(SettingsError, match="KEYLEDGER_METRICS_DIR"):
        Settings.from_env({"KEYLEDGER_METRICS_DIR": value})


def test_a_metrics_folder_that_cannot_be_made_names_the_setting(tmp_path, no_multiproc_dir):
    settings = Settings(data_dir=tmp_path / "var", metrics_dir=tmp_path / "missing")
    with pytest.raises(SettingsError, match="KEYLEDGER_METRICS_DIR"):
        serving.prepare_metrics_dir(settings)
