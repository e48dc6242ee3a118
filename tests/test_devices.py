"""Device presets, Jetson boards and power modes.

The files in tests/data (nvpmodel -q outputs, /var/lib/nvpmodel/status, /etc/nvpmodel.conf excerpts and
/proc/device-tree/model strings with their trailing NUL) are transcriptions of documented and forum-posted
outputs of those tools and files, not captured on hardware here. Every test points the module's paths
(NV_TEGRA_RELEASE, NVPMODEL_STATUS, NVPMODEL_CONF, DEVICE_TREE_MODEL, BOARD_MODEL_MOUNT) and PATH at temporary files, so the
results do not depend on the machine (they hold on a real Jetson too). A fake ``nvpmodel`` shell script stands
in for the real one where its query or its switching is tested.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from hsconas_cli import devices
from hsconas_cli.devices import (
    BOARD_MODES, Device, PowerMode, board_family, check_power_mode, load_device, mode_names, parse_nvpmodel_conf,
    parse_nvpmodel_query, parse_nvpmodel_status, read_board, read_power_mode, set_power_mode,
    verify_measuring_device,
)
from hsconas_cli.errors import HsconasError

DATA = Path(__file__).parent / "data"
XAVIER_MODEL = "device-tree-model-agx-xavier.bin"
NX_MODEL = "device-tree-model-xavier-nx.bin"
ORIN_MODEL = "device-tree-model-agx-orin.bin"


class Board:
    """A board's files in a temporary folder, the module's paths pointed at them; ``None`` removes one."""

    def __init__(self, root: Path, monkeypatch):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        monkeypatch.setenv("PATH", str(self.bin))  # no real nvpmodel, unless a test puts a fake one here
        self.paths = {}
        for attr in ("NV_TEGRA_RELEASE", "NVPMODEL_STATUS", "NVPMODEL_CONF", "DEVICE_TREE_MODEL", "BOARD_MODEL_MOUNT", "DEVFREQ"):
            self.paths[attr] = root / str(getattr(devices, attr)).lstrip("/")  # root/etc/nvpmodel.conf, ...
            self.paths[attr].parent.mkdir(parents=True, exist_ok=True)
            monkeypatch.setattr(devices, attr, self.paths[attr])

    def put(self, attr: str, data_file: str | None = None, text: str | None = None):
        path = self.paths[attr]
        if data_file is None and text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes((DATA / data_file).read_bytes() if data_file else text.encode())
        return self

    def jetson(self, model=XAVIER_MODEL, status="nvpmodel-status.txt", conf="nvpmodel.conf", clocks="devfreq-xavier-locked"):
        self.put("NV_TEGRA_RELEASE", "nv_tegra_release.txt")
        self.put("DEVICE_TREE_MODEL", model)
        self.put("NVPMODEL_STATUS", status)
        self.put("NVPMODEL_CONF", conf)
        return self.devfreq(clocks)

    def devfreq(self, tree: str | None):
        """/sys/class/devfreq as a transcribed tree in tests/data (None: no devfreq nodes at all)."""
        shutil.rmtree(self.paths["DEVFREQ"], ignore_errors=True)
        if tree is not None:
            shutil.copytree(DATA / tree, self.paths["DEVFREQ"])
        return self

    def fake_nvpmodel(self, query_file: str, sleep_on_set: bool = False):
        """``nvpmodel -q`` prints ``query`` (a file here); ``-m N`` copies query-N into it, or sleeps."""
        (self.root / "query").write_bytes((DATA / query_file).read_bytes())
        tool = {t: shutil.which(t, path="/usr/bin:/bin") for t in ("sleep", "cat", "cp")}
        script = self.bin / "nvpmodel"
        script.write_text(
            "#!/bin/sh\n"
            f'cd "{self.root}"\n'
            f'if [ "$1" = "-q" ]; then {tool["cat"]} query; exit 0; fi\n'
            + (f'exec {tool["sleep"]} 30\n' if sleep_on_set
               else f'if [ -f "query-$2" ]; then {tool["cp"]} "query-$2" query; fi\n')
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return self


@pytest.fixture
def board(tmp_path, monkeypatch):
    """Not a Jetson until a test makes it one: every path points at an empty temporary folder."""
    return Board(tmp_path, monkeypatch)


# ---- parsing ---------------------------------------------------------------------------------------
def test_parse_nvpmodel_query_samples():
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-xavier.txt").read_text()) == PowerMode(6, "MODE_30W_2CORE")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-maxn.txt").read_text()) == PowerMode(0, "MAXN")
    assert parse_nvpmodel_query("nvpmodel: command not found") is None


def test_parse_nvpmodel_query_warnings_crlf_fan_line_missing_id():
    raw = (DATA / "nvpmodel-q-xavier-warn-crlf.txt").read_bytes()
    assert b"\r\n" in raw and raw.startswith(b"NVPM WARN")  # the file keeps its CRLF line endings
    assert parse_nvpmodel_query(raw.decode()) == PowerMode(6, "MODE_30W_2CORE")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-orin-fan-between.txt").read_text()) == PowerMode(2, "MODE_30W")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-nx-no-id.txt").read_text()) == PowerMode(-1, "MODE_20W_2CORE")
    # a later mode line's id is not this one's
    assert parse_nvpmodel_query("NV Power Mode: A\nNV Power Mode: B\n3\n") == PowerMode(-1, "A")


def test_parse_status_and_conf():
    assert parse_nvpmodel_status((DATA / "nvpmodel-status.txt").read_text()) == 6
    assert parse_nvpmodel_status("pmode:0000") == 0
    assert parse_nvpmodel_status("garbage") is None
    modes = parse_nvpmodel_conf((DATA / "nvpmodel.conf").read_text())
    assert modes == BOARD_MODES["Jetson AGX Xavier"] and modes[6] == "MODE_30W_2CORE"
    assert parse_nvpmodel_conf((DATA / "nvpmodel-xavier-nx.conf").read_text()) == BOARD_MODES["Jetson Xavier NX"]
    orin = parse_nvpmodel_conf((DATA / "nvpmodel-agx-orin.conf").read_text())  # an AGX Orin 64GB's catalogue
    assert orin == {**BOARD_MODES["Jetson AGX Orin"], 3: "MODE_50W"}  # id 3 differs by module: the conf names it


@pytest.mark.parametrize("data_file, family", [
    (XAVIER_MODEL, "Jetson AGX Xavier"),
    ("device-tree-model-agx-xavier-old-l4t.bin", "Jetson AGX Xavier"),
    (NX_MODEL, "Jetson Xavier NX"),
    (ORIN_MODEL, "Jetson AGX Orin"),
    ("device-tree-model-orin-nano.bin", "Jetson Orin Nano"),
])
def test_board_family_of_device_tree_models(board, data_file, family):
    assert (DATA / data_file).read_bytes().endswith(b"\x00")
    board.put("DEVICE_TREE_MODEL", data_file)
    model = read_board()
    assert "\x00" not in model and model == model.strip()
    assert board_family(model) == family


def test_board_family_edge_cases(board):
    assert read_board() is None  # unreadable
    assert board_family(None) is None and board_family("") is None
    assert board_family("NVIDIA Jetson Orin NX Engineering Reference Developer Kit") == "Jetson Orin NX"
    assert board_family("NVIDIA Jetson Nano Developer Kit") == "Jetson Nano"
    assert board_family("Raspberry Pi 4 Model B Rev 1.4") is None


# ---- reading the mode ------------------------------------------------------------------------------
def test_read_power_mode_without_root(board):
    board.jetson()
    assert read_power_mode() == PowerMode(6, "MODE_30W_2CORE")
    assert "nvpmodel.conf" in read_power_mode().source
    board.put("NVPMODEL_STATUS", text="pmode:0000 fmode:quiet\n")
    assert read_power_mode() == PowerMode(0, "MAXN")


def test_mode_name_from_conf_else_from_table(board):
    board.jetson(model=NX_MODEL, conf="nvpmodel-xavier-nx.conf")
    assert mode_names()[1] == str(devices.NVPMODEL_CONF)
    assert read_power_mode() == PowerMode(6, "MODE_20W_2CORE")
    board.put("NVPMODEL_CONF")  # /etc/nvpmodel.conf not mounted: the documented table names it
    names, src = mode_names()
    assert names == BOARD_MODES["Jetson Xavier NX"] and "Jetson Xavier NX" in src
    mode = read_power_mode()
    assert mode == PowerMode(6, "MODE_20W_2CORE") and "Jetson Xavier NX" in mode.source
    board.put("DEVICE_TREE_MODEL", text="NVIDIA Jetson Something New\x00")  # unknown board: no name
    assert read_power_mode() == PowerMode(6, None)
    board.put("NVPMODEL_STATUS")
    assert read_power_mode() is None


def test_read_power_mode_from_nvpmodel_query(board):
    board.jetson(status=None).fake_nvpmodel("nvpmodel-q-xavier-warn-crlf.txt")
    assert read_power_mode() == PowerMode(6, "MODE_30W_2CORE")
    assert read_power_mode().source == "nvpmodel -q"
    # no id printed and no status file: the id from the name, once in the catalogue
    board.fake_nvpmodel("nvpmodel-q-nx-no-id.txt").put("DEVICE_TREE_MODEL", NX_MODEL).put("NVPMODEL_CONF")
    assert read_power_mode() == PowerMode(6, "MODE_20W_2CORE")


# ---- the guard -------------------------------------------------------------------------------------
def test_presets():
    cpu, gpu, xavier = load_device("cpu"), load_device("gpu"), load_device("xavier")
    assert (cpu.batch_size, cpu.backend) == (1, "onnxruntime")
    assert (gpu.batch_size, gpu.backend, gpu.backend_options["graphs"]) == (32, "torch", True)
    assert (xavier.batch_size, xavier.backend, xavier.power_mode, xavier.jetson) == (16, "tensorrt", 6, True)
    assert (xavier.board, xavier.power_mode_name) == ("Jetson AGX Xavier", "MODE_30W_2CORE")
    assert BOARD_MODES[xavier.board][xavier.power_mode] == xavier.power_mode_name
    assert load_device("cpu", batch_size=4).batch_size == 4
    with pytest.raises(HsconasError, match="unknown device 'mars'"):
        load_device("mars")


def test_device_dicts_round_trip_and_stay_compatible():
    xavier = load_device("xavier")
    d = xavier.to_dict()
    assert list(d)[-2:] == ["board", "power_mode_name"] and Device.from_dict(d) == xavier
    old = {k: v for k, v in d.items() if k not in ("board", "power_mode_name")}  # a profile saved before
    assert Device.from_dict(old).board is None and Device.from_dict(old).to_dict() == old
    cpu = load_device("cpu")
    assert "board" not in cpu.to_dict() and Device.from_dict(cpu.to_dict()) == cpu
    assert xavier.replace(batch_size=4).power_mode_name == "MODE_30W_2CORE"


def test_guard_passes_on_the_board(board):
    board.jetson()
    xavier = load_device("xavier")
    assert verify_measuring_device(xavier) == PowerMode(6, "MODE_30W_2CORE")
    assert check_power_mode(xavier) == PowerMode(6, "MODE_30W_2CORE")
    assert check_power_mode(xavier, measuring=True) == PowerMode(6, "MODE_30W_2CORE")
    board.put("DEVICE_TREE_MODEL", "device-tree-model-agx-xavier-old-l4t.bin").put("NVPMODEL_CONF")
    assert verify_measuring_device(xavier) == PowerMode(6, "MODE_30W_2CORE")  # old L4T, names from the table


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_guard_refuses_not_a_jetson_while_measuring(board):
    xavier = load_device("xavier")
    with pytest.raises(HsconasError) as e:
        verify_measuring_device(xavier)
    msg = one_line(e)
    assert "is a Jetson preset (Jetson AGX Xavier), but this machine is not a Jetson" in msg and "--force" in msg
    assert verify_measuring_device(xavier, force=True) is None
    # reading a Xavier profile off the device (predict, search) is fine
    assert check_power_mode(xavier) is None
    # a device that is no Jetson passes either way
    assert verify_measuring_device(load_device("cpu")) is None


def test_guard_refuses_another_board(board):
    board.jetson(model=NX_MODEL, conf="nvpmodel-xavier-nx.conf")  # an NX, in its mode 6 (MODE_20W_2CORE)
    xavier = load_device("xavier")
    with pytest.raises(HsconasError) as e:
        verify_measuring_device(xavier)
    assert "is for a Jetson AGX Xavier, but this board is 'NVIDIA Jetson Xavier NX Developer Kit'" in one_line(e)
    assert verify_measuring_device(xavier, force=True) == PowerMode(6, "MODE_20W_2CORE")
    assert check_power_mode(xavier) == PowerMode(6, "MODE_20W_2CORE")  # another board reading the profile
    board.put("DEVICE_TREE_MODEL")
    with pytest.raises(HsconasError, match="model cannot be read.*mount it as .*/etc/hsconas/board-model"):
        verify_measuring_device(xavier)
    board.put("BOARD_MODEL_MOUNT", XAVIER_MODEL)  # a container's copy of the model: an AGX Xavier after all
    assert read_board() == "NVIDIA Jetson AGX Xavier Developer Kit"
    with pytest.raises(HsconasError, match="mode 6 on this board is MODE_20W_2CORE"):
        verify_measuring_device(xavier)  # ... but the mode catalogue is an NX's: still refused, by name


def test_guard_refuses_same_id_other_name(board):
    """Mode 6 on an NX is MODE_20W_2CORE: refused for the xavier preset by name, even were the board unchecked."""
    board.jetson(model=NX_MODEL, conf="nvpmodel-xavier-nx.conf")
    no_board = load_device("xavier").replace(board=None)
    with pytest.raises(HsconasError) as e:  # issue 24 item 6: a Jetson preset without a board is not measured
        verify_measuring_device(no_board)
    assert ("device xavier is a Jetson preset that names no board: add \"board\" to it (this board is a Jetson Xavier NX)"
            in one_line(e))
    assert verify_measuring_device(no_board, force=True) == PowerMode(6, "MODE_20W_2CORE")
    with pytest.raises(HsconasError, match="MODE_20W_2CORE"):
        check_power_mode(no_board)  # reading on what may be the device itself: a definite mismatch refuses too
    nx = Device("nx", 8, "tensorrt", jetson=True, power_mode=6, board="Jetson Xavier NX",
                power_mode_name="MODE_20W_2CORE")
    assert verify_measuring_device(nx) == PowerMode(6, "MODE_20W_2CORE")


def test_guard_refuses_another_mode_id(board):
    board.jetson().put("NVPMODEL_STATUS", text="pmode:0000 fmode:quiet\n")
    xavier = load_device("xavier")
    for measuring in (False, True):
        with pytest.raises(HsconasError, match="power mode 6, but the board is in mode 0") as e:
            check_power_mode(xavier, measuring=measuring)
        one_line(e)
    assert check_power_mode(xavier, force=True) == PowerMode(0, "MAXN")
    assert verify_measuring_device(xavier, force=True) == PowerMode(0, "MAXN")


def test_guard_refuses_unreadable_mode_or_name(board):
    board.jetson(status=None)  # /var/lib/nvpmodel not mounted, no nvpmodel
    xavier = load_device("xavier")
    with pytest.raises(HsconasError) as e:
        verify_measuring_device(xavier)
    msg = one_line(e)
    assert "mode cannot be read" in msg and "/var/lib/nvpmodel and " in msg and "/etc/nvpmodel.conf" in msg
    assert verify_measuring_device(xavier, force=True) is None
    assert check_power_mode(xavier) is None  # only reading a profile: nothing to compare
    # the id is readable but no name anywhere (an unknown board, no conf): cannot verify the name
    board.jetson(model=None, conf=None)
    with pytest.raises(HsconasError, match="model cannot be read"):
        verify_measuring_device(xavier)
    with pytest.raises(HsconasError, match="names no board"):
        verify_measuring_device(xavier.replace(board=None))
    moded = xavier.replace(board=None, jetson=False)  # a preset that sets a mode without saying it is a Jetson
    with pytest.raises(HsconasError, match="name cannot be read"):
        verify_measuring_device(moded)
    assert verify_measuring_device(moded, force=True) == PowerMode(6, None)


# ---- setting the mode ------------------------------------------------------------------------------
def test_set_power_mode_not_a_jetson(board):
    assert read_power_mode() is None
    with pytest.raises(HsconasError, match="not a Jetson"):
        set_power_mode(6)


def test_set_power_mode_checks_board_and_name_first(board):
    board.jetson(model=NX_MODEL, conf="nvpmodel-xavier-nx.conf", status=None)
    board.fake_nvpmodel("nvpmodel-q-maxn.txt")
    with pytest.raises(HsconasError, match="for a Jetson AGX Xavier: this board is 'NVIDIA Jetson Xavier NX"):
        set_power_mode(6, board="Jetson AGX Xavier")
    with pytest.raises(HsconasError, match="power mode 6 is MODE_20W_2CORE on this board .*not MODE_30W_2CORE"):
        set_power_mode(6, expected_name="MODE_30W_2CORE")
    assert (board.root / "query").read_text().startswith("NV Power Mode: MAXN")  # nothing was switched


def test_set_power_mode_switches_and_confirms(board):
    board.jetson(status=None).fake_nvpmodel("nvpmodel-q-maxn.txt")
    (board.root / "query-6").write_bytes((DATA / "nvpmodel-q-xavier-warn-crlf.txt").read_bytes())
    assert read_power_mode() == PowerMode(0, "MAXN")
    mode = set_power_mode(6, board="Jetson AGX Xavier", expected_name="MODE_30W_2CORE")
    assert mode == PowerMode(6, "MODE_30W_2CORE")
    with pytest.raises(HsconasError, match="nvpmodel -m 3 ran, but the board reports mode 6"):
        set_power_mode(3)  # the fake has no query-3: the mode does not change


def test_set_power_mode_timeout_is_one_line(board, monkeypatch):
    board.jetson(status=None).fake_nvpmodel("nvpmodel-q-maxn.txt", sleep_on_set=True)
    monkeypatch.setattr(devices, "NVPMODEL_TIMEOUT_S", 0.5)
    with pytest.raises(HsconasError) as e:
        set_power_mode(6)
    assert one_line(e).startswith("nvpmodel -m 6 did not finish within 0.5 s")


def test_nvpmodel_query_timeout_falls_back_to_status(board, monkeypatch):
    board.jetson()
    script = board.bin / "nvpmodel"
    sleep = shutil.which("sleep", path="/usr/bin:/bin")
    script.write_text(f"#!/bin/sh\nexec {sleep} 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(devices, "NVPMODEL_QUERY_TIMEOUT_S", 0.5)
    assert read_power_mode() == PowerMode(6, "MODE_30W_2CORE")
    board.put("NVPMODEL_STATUS")
    with pytest.raises(HsconasError, match=r"nvpmodel -q did not finish within 0.5 s") as e:
        verify_measuring_device(load_device("xavier"))
    one_line(e)


def test_nvpmodel_not_runnable_is_one_line(board):
    board.jetson(status=None)
    script = board.bin / "nvpmodel"
    script.write_text("not a script\n")
    script.chmod(0o755)  # exec fails with ENOEXEC
    with pytest.raises(HsconasError, match="could not run nvpmodel -m 6") as e:
        set_power_mode(6)
    one_line(e)


# ---- the GPU clock ---------------------------------------------------------------------------------------
def test_a_floating_gpu_clock_is_refused_for_tensorrt_measurements_and_recorded(board):
    """Issue 24 item 8: TensorRT calibration has no reference network, so the clock must not float between small
    blocks and whole networks. Transcribed sysfs trees of an AGX Xavier in mode 6: idle (the clock at its floor)
    and after `sudo jetson_clocks` (cur = min = max = 1377 MHz); the VIC's node beside the GPU's is not the GPU."""
    from hsconas_cli.devices import machine_facts, read_gpu_clocks

    xavier = load_device("xavier")
    board.jetson(clocks="devfreq-xavier-floating")
    assert read_gpu_clocks() == {"node": "17000000.gv11b", "cur_freq": 114750000, "min_freq": 114750000, "max_freq": 1377000000}
    with pytest.raises(HsconasError) as e:
        verify_measuring_device(xavier)
    assert ("the GPU clock floats (17000000.gv11b: cur_freq 115 MHz, max_freq 1377 MHz), so blocks and whole networks "
            "would be timed at other clocks: run 'sudo jetson_clocks' on the host after nvpmodel; --force measures anyway"
            == one_line(e))
    assert verify_measuring_device(xavier, force=True) == PowerMode(6, "MODE_30W_2CORE")
    assert check_power_mode(xavier) == PowerMode(6, "MODE_30W_2CORE")  # reading a profile never needs the clock
    assert machine_facts()["gpu_clocks"]["cur_freq"] == 114750000  # a profile records the clocks it was measured at
    board.devfreq("devfreq-xavier-locked")
    assert verify_measuring_device(xavier) == PowerMode(6, "MODE_30W_2CORE")
    assert machine_facts()["gpu_clocks"] == {"node": "17000000.gv11b", "cur_freq": 1377000000, "min_freq": 1377000000,
                                             "max_freq": 1377000000}
    board.devfreq(None)
    with pytest.raises(HsconasError, match="the GPU's clock cannot be read"):
        verify_measuring_device(xavier)


def test_xavier_nx_modes_as_a_real_board_lists_them_and_the_verbose_query(board):
    """Issue 24 item 7: transcriptions of real outputs. ``nvpmodel -p --verbose`` on a Xavier NX with JetPack 5.0.2
    (r35.1) lists ID 6 MODE_20W_2CORE, 7 MODE_20W_4CORE, 8 MODE_20W_6CORE (the table had 6, 7, 8 as 6CORE, 2CORE,
    4CORE); ``nvpmodel -q --verbose`` prints the mode line after "NVPM VERB: Current mode: " (an NX on JetPack 4,
    an Orin on L4T R36), which a match anchored at the line's start never read."""
    listing = parse_nvpmodel_conf((DATA / "nvpmodel-p-verbose-nx-r35.1.txt").read_text())
    assert listing == BOARD_MODES["Jetson Xavier NX"]
    assert (listing[6], listing[7], listing[8]) == ("MODE_20W_2CORE", "MODE_20W_4CORE", "MODE_20W_6CORE")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-verbose-nx.txt").read_text()) == PowerMode(2, "MODE_15W_6CORE")
    assert parse_nvpmodel_query((DATA / "nvpmodel-q-verbose-orin-r36.txt").read_text()) == PowerMode(4, "40W")
    # an NX in mode 8 on a board whose conf cannot be read: the table names it, as the board would
    board.jetson(model=NX_MODEL, conf=None).put("NVPMODEL_STATUS", text="pmode:0008 fmode:quiet\n")
    assert read_power_mode() == PowerMode(8, "MODE_20W_6CORE")
