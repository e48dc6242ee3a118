"""Device presets and Jetson power modes, parsed from real nvpmodel output formats (tests/data)."""

from pathlib import Path

import pytest

from hsconas_cli import devices
from hsconas_cli.devices import (
    PowerMode, check_power_mode, load_device, parse_nvpmodel_conf, parse_nvpmodel_query, parse_nvpmodel_status,
    read_power_mode, set_power_mode,
)
from hsconas_cli.errors import HsconasError

DATA = Path(__file__).parent / "data"


def test_parse_nvpmodel_query_samples():
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-xavier.txt").read_text()) == PowerMode(6, "MODE_30W_2CORE")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-maxn.txt").read_text()) == PowerMode(0, "MAXN")
    assert parse_nvpmodel_query("nvpmodel: command not found") is None


def test_parse_status_and_conf():
    assert parse_nvpmodel_status((DATA / "nvpmodel-status.txt").read_text()) == 6
    assert parse_nvpmodel_status("pmode:0000") == 0
    assert parse_nvpmodel_status("garbage") is None
    modes = parse_nvpmodel_conf((DATA / "nvpmodel.conf").read_text())
    assert modes[6] == "MODE_30W_2CORE" and modes[0] == "MAXN" and len(modes) == 8
    assert devices.XAVIER_MODES == modes


@pytest.fixture
def fake_jetson_files(tmp_path, monkeypatch):
    """Point the reader at a board's files (no nvpmodel binary here, so it reads the status file, as without root)."""
    for name, attr in (("nv_tegra_release.txt", "NV_TEGRA_RELEASE"), ("nvpmodel-status.txt", "NVPMODEL_STATUS"),
                       ("nvpmodel.conf", "NVPMODEL_CONF")):
        dst = tmp_path / name
        dst.write_text((DATA / name).read_text())
        monkeypatch.setattr(devices, attr, dst)
    return tmp_path


def test_read_power_mode_without_root(fake_jetson_files):
    assert read_power_mode() == PowerMode(6, "MODE_30W_2CORE")
    xavier = load_device("xavier")
    assert check_power_mode(xavier) == PowerMode(6, "MODE_30W_2CORE")
    (fake_jetson_files / "nvpmodel-status.txt").write_text("pmode:0000 fmode:quiet\n")
    with pytest.raises(HsconasError, match="power mode 6, but the board is in mode 0"):
        check_power_mode(xavier)
    assert check_power_mode(xavier, force=True).id == 0


def test_not_a_jetson_here():
    assert read_power_mode() is None
    with pytest.raises(HsconasError, match="not a Jetson"):
        set_power_mode(6)


def test_presets():
    cpu, gpu, xavier = load_device("cpu"), load_device("gpu"), load_device("xavier")
    assert (cpu.batch_size, cpu.backend) == (1, "onnxruntime")
    assert (gpu.batch_size, gpu.backend, gpu.backend_options["graphs"]) == (32, "torch", True)
    assert (xavier.batch_size, xavier.backend, xavier.power_mode, xavier.jetson) == (16, "tensorrt", 6, True)
    assert load_device("cpu", batch_size=4).batch_size == 4
    with pytest.raises(HsconasError, match="unknown device 'mars'"):
        load_device("mars")
