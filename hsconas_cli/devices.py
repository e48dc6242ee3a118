"""Target devices: presets, the facts of this machine, and Jetson power modes.

A device preset is a JSON file ``device_profiles/<name>.json`` (batch size, backend and its options, power
mode); its calibrated profiles live in ``device_profiles/<name>/``. Copy a preset to add a device.

Jetson power modes: the current mode is read from ``nvpmodel -q`` or, without root, from
``/var/lib/nvpmodel/status`` (``pmode:0006``) with names from ``/etc/nvpmodel.conf`` (else from BOARD_MODES for
the board in ``/proc/device-tree/model``); ``nvpmodel -m N`` sets one where permitted. A mode id means
different modes on different boards, so a Jetson preset names its board and mode name too, and
``verify_measuring_device`` refuses to measure what it cannot verify (unless --force).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import read_json
from hsconas_cli.schema import check

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
NVPMODEL_STATUS = Path("/var/lib/nvpmodel/status")
NVPMODEL_CONF = Path("/etc/nvpmodel.conf")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
# Docker masks /proc/device-tree (a link into /sys/firmware), so a container gets the host's model file mounted
# here instead (Dockerfile.jetson: -v /proc/device-tree/model:/etc/hsconas/board-model:ro).
BOARD_MODEL_MOUNT = Path("/etc/hsconas/board-model")
# The GPU's clock as devfreq exposes it (Xavier 17000000.gv11b, Orin 17000000.ga10b or 17000000.gpu, Nano and
# TX2 57000000.gpu / 17000000.gp10b). Clocks float by default; `sudo jetson_clocks` locks them at the power mode's
# maximum (min_freq = max_freq), so that small LUT blocks and whole networks are timed at one clock.
DEVFREQ = Path("/sys/class/devfreq")
GPU_DEVFREQ = re.compile(r"\.(gv11b|ga10b|gp10b|gm20b|gpu)$")
NVPMODEL_TIMEOUT_S = 60.0  # nvpmodel -m: a switch can take a while (fans, clocks, cores going offline)
NVPMODEL_QUERY_TIMEOUT_S = 20.0  # nvpmodel -q


def profiles_root() -> Path:
    """``$HSCONAS_PROFILES``, else the repository's ``device_profiles/`` (editable installs), else ./device_profiles."""
    env = os.environ.get("HSCONAS_PROFILES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1] / "device_profiles"
    return repo if repo.is_dir() else Path.cwd() / "device_profiles"


@dataclass(frozen=True)
class Device:
    name: str
    batch_size: int
    backend: str
    backend_options: dict[str, Any] = field(default_factory=dict)
    power_mode: int | None = None  # Jetson nvpmodel id
    jetson: bool = False
    description: str = ""
    board: str | None = None  # Jetson family the preset is for, e.g. "Jetson AGX Xavier" (see BOARD_MODES)
    power_mode_name: str | None = None  # nvpmodel name of power_mode on that board, e.g. "MODE_30W_2CORE"
    calibration: dict[str, int] | None = None  # default M and H ({"archs", "holdout"}) where networks are slow to prepare

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "batch_size": self.batch_size,
            "backend": self.backend,
            "backend_options": dict(self.backend_options),
            "jetson": self.jetson,
            "power_mode": self.power_mode,
        }
        # Only where set, so that the dicts of devices without them (cpu, gpu, and every profile and run saved
        # before these fields existed) stay exactly as they were and compare equal.
        if self.board is not None:
            d["board"] = self.board
        if self.power_mode_name is not None:
            d["power_mode_name"] = self.power_mode_name
        if self.calibration is not None:
            d["calibration"] = dict(self.calibration)
        return d

    def replace(self, **changes: Any) -> "Device":
        return Device(**{**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Device":
        try:
            return cls(
                name=str(d["name"]),
                batch_size=int(d["batch_size"]),
                backend=str(d["backend"]),
                backend_options=dict(d.get("backend_options") or {}),
                power_mode=None if d.get("power_mode") is None else int(d["power_mode"]),
                jetson=bool(d.get("jetson", False)),
                description=str(d.get("description", "")),
                board=None if d.get("board") is None else str(d["board"]),
                power_mode_name=None if d.get("power_mode_name") is None else str(d["power_mode_name"]),
                calibration=None if d.get("calibration") is None else {k: int(v) for k, v in d["calibration"].items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HsconasError(f"device definition is incomplete or malformed: {e!r}") from None


BUILTIN_PRESETS = Path(__file__).resolve().parents[1] / "device_profiles"


def preset_names(root: Path | None = None) -> list[str]:
    dirs = [root or profiles_root(), BUILTIN_PRESETS]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.json")})


def load_device(name: str, root: Path | None = None, batch_size: int | None = None, *, backend: str | None = None,
                threads: int | None = None) -> Device:
    """A preset by name (``device_profiles/<name>.json``) or a device JSON file, optionally at another batch size,
    with another backend (which starts from its own default options) or another thread count."""
    root = root or profiles_root()
    path = Path(name) if name.endswith(".json") else root / f"{name}.json"
    if not path.exists() and not name.endswith(".json"):
        path = BUILTIN_PRESETS / f"{name}.json"
    if not path.exists():
        known = ", ".join(preset_names(root)) or "none"
        raise HsconasError(f"unknown device {name!r}; presets: {known} (or copy one to {root}/NAME.json)")
    doc = read_json(path, "device preset")
    check("device preset", doc, str(path))
    dev = Device.from_dict(doc)
    if batch_size is not None:
        dev = dev.replace(batch_size=batch_size)
    if backend and backend != dev.backend:
        dev = dev.replace(backend=backend, backend_options={})
    if threads:
        dev = dev.replace(backend_options={**dev.backend_options, "threads": threads})
    if dev.batch_size < 1:
        raise HsconasError("batch size must be at least 1")
    return dev


# ---- Jetson boards and power modes -----------------------------------------------------------------
# The nvpmodel mode catalogue of each board family as NVIDIA documents it for JetPack 5 (L4T R35) (the
# "Supported Modes and Power Efficiency" tables of the Jetson Linux Developer Guide). The same id names
# another mode on another board (6 is MODE_30W_2CORE on an AGX Xavier, MODE_20W_2CORE on a Xavier NX), so a
# mode is only checked together with the board. /etc/nvpmodel.conf and ``nvpmodel -q`` are preferred where
# readable (they are the board's own catalogue); this table names a mode where neither is.
BOARD_MODES: dict[str, dict[int, str]] = {
    "Jetson AGX Xavier": {
        0: "MAXN", 1: "MODE_10W", 2: "MODE_15W", 3: "MODE_30W_ALL", 4: "MODE_30W_6CORE", 5: "MODE_30W_4CORE",
        6: "MODE_30W_2CORE", 7: "MODE_15W_DESKTOP",
    },
    "Jetson Xavier NX": {
        0: "MODE_15W_2CORE", 1: "MODE_15W_4CORE", 2: "MODE_15W_6CORE", 3: "MODE_10W_2CORE", 4: "MODE_10W_4CORE",
        5: "MODE_10W_DESKTOP", 6: "MODE_20W_2CORE", 7: "MODE_20W_4CORE", 8: "MODE_20W_6CORE",  # as a Xavier NX on
    },                                                         # JetPack 5.0.2 (r35.1) lists them (nvpmodel -p --verbose)
    # id 3 is MODE_50W on the AGX Orin 64GB and MODE_40W on the 32GB: not in the table; /etc/nvpmodel.conf names it
    "Jetson AGX Orin": {0: "MAXN", 1: "MODE_15W", 2: "MODE_30W"},
}


@dataclass(frozen=True)
class PowerMode:
    id: int
    name: str | None
    source: str = field(default="", compare=False)  # where id and name were read, for messages


def is_jetson() -> bool:
    return NV_TEGRA_RELEASE.exists()


def read_board() -> str | None:
    """The board's model string from the device tree (NUL-terminated there), else from BOARD_MODEL_MOUNT (a
    container's copy of it); None where neither is readable."""
    for path in (DEVICE_TREE_MODEL, BOARD_MODEL_MOUNT):
        try:
            text = path.read_bytes().decode("utf-8", "replace").replace("\x00", " ").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _board_unreadable() -> str:
    return (f"{DEVICE_TREE_MODEL} is unreadable (in a container, where Docker masks it, mount it as "
            f"{BOARD_MODEL_MOUNT}: -v {DEVICE_TREE_MODEL}:{BOARD_MODEL_MOUNT}:ro)")


def board_family(model: str | None) -> str | None:
    """The family key of a device-tree model string ("NVIDIA Jetson AGX Xavier Developer Kit" ->
    "Jetson AGX Xavier"; "Jetson-AGX", the AGX Xavier on older L4T, too), or None for an unknown board.
    Families without an entry in BOARD_MODES are still told apart (an Orin Nano is not an AGX Orin)."""
    if not model:
        return None
    s = " " + re.sub(r"[\s_\-\x00]+", " ", model.lower()).strip() + " "
    if " orin " in s:
        if " agx " in s:
            return "Jetson AGX Orin"
        if " nano " in s:
            return "Jetson Orin Nano"
        if " nx " in s:
            return "Jetson Orin NX"
        return None
    if " xavier " in s:
        if " nx " in s:
            return "Jetson Xavier NX"
        return "Jetson AGX Xavier Industrial" if " industrial " in s else "Jetson AGX Xavier"
    if re.search(r" jetson agx (developer kit )?$", s):
        return "Jetson AGX Xavier"
    for key, family in ((" tx2 ", "Jetson TX2"), (" tx1 ", "Jetson TX1"), (" nano ", "Jetson Nano")):
        if key in s and " jetson " in s:
            return family
    return None


def jetson_family() -> str | None:
    """This machine's Jetson family (``board_family`` of the device tree's model), None off a Jetson."""
    return board_family(read_board())


def _family_of(board: str | None) -> str | None:
    """A preset's ``board``: a family key, or a model string that maps to one."""
    if board is None:
        return None
    return board if board in BOARD_MODES else board_family(board) or board


def parse_nvpmodel_query(text: str) -> PowerMode | None:
    """``nvpmodel -q`` prints "NV Power Mode: MODE_30W_2CORE" and the id on a later line; "NVPM WARN: ..." lines
    may come first and a fan-mode line ("NV Fan Mode:quiet") before or after the name. Where the id line is
    missing the result has id -1 (the name alone); None where there is no mode line at all."""
    lines = [l.strip() for l in text.replace("\r", "\n").split("\n")]
    for i, line in enumerate(lines):
        m = re.search(r"NV Power Mode\s*:\s*(\S+)", line)  # verbose: "NVPM VERB: Current mode: NV Power Mode: ..."
        if m:
            for nxt in lines[i + 1 :]:
                if nxt.isdigit():
                    return PowerMode(int(nxt), m.group(1), "nvpmodel -q")
                if "NV Power Mode" in nxt:
                    break
            return PowerMode(-1, m.group(1), "nvpmodel -q")
    return None


def parse_nvpmodel_status(text: str) -> int | None:
    """``/var/lib/nvpmodel/status`` holds e.g. "pmode:0006 fmode:quiet"."""
    m = re.search(r"pmode:0*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_nvpmodel_conf(text: str) -> dict[int, str]:
    """Mode names from ``/etc/nvpmodel.conf`` lines "< POWER_MODEL ID=6 NAME=MODE_30W_2CORE >", or from the
    listing ``nvpmodel -p --verbose`` prints ("NVPM VERB: POWER_MODEL: ID=6 NAME=MODE_20W_2CORE")."""
    return {int(i): n for i, n in re.findall(r"POWER_MODEL:?\s+ID=(\d+)\s+NAME=([^\s>]+)", text)}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def mode_names() -> tuple[dict[int, str], str]:
    """This board's mode catalogue and where it came from: /etc/nvpmodel.conf where readable, else BOARD_MODES
    for the board named in the device tree, else nothing."""
    conf = _read_text(NVPMODEL_CONF)
    names = parse_nvpmodel_conf(conf) if conf else {}
    if names:
        return names, str(NVPMODEL_CONF)
    family = board_family(read_board())
    if family in BOARD_MODES:
        return dict(BOARD_MODES[family]), f"the documented modes of a {family}"
    return {}, ""


def _run_nvpmodel(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """nvpmodel with ``args``; a one-line HsconasError where it does not start or does not finish in time."""
    cmd = " ".join(["nvpmodel", *args])
    try:
        return subprocess.run(["nvpmodel", *args], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HsconasError(
            f"{cmd} did not finish within {timeout_s:g} s: nvpmodel may be waiting for a reboot prompt or the "
            f"board is stuck; run 'sudo {cmd}' by hand, then retry"
        ) from None
    except OSError as e:
        raise HsconasError(f"could not run {cmd}: {e.strerror or e}") from None


def _read_power_mode() -> tuple[PowerMode | None, str]:
    """The current mode, or None and why not."""
    if not is_jetson():
        return None, f"this machine is not a Jetson (no {NV_TEGRA_RELEASE})"
    why = []
    queried: PowerMode | None = None
    if shutil.which("nvpmodel"):
        try:
            out = _run_nvpmodel(["-q"], NVPMODEL_QUERY_TIMEOUT_S)
            queried = parse_nvpmodel_query(out.stdout)
            if queried is None:
                last = (out.stderr or out.stdout).strip().splitlines()[-1:]
                why.append(f"nvpmodel -q printed no mode ({last[0] if last else 'no output'})")
        except HsconasError as e:
            why.append(str(e).split(":")[0])
    else:
        why.append("nvpmodel is not on PATH")
    if queried is not None and queried.id >= 0:
        return queried, ""
    names, names_from = mode_names()
    status = _read_text(NVPMODEL_STATUS)
    mode_id = parse_nvpmodel_status(status) if status is not None else None
    if mode_id is not None:
        name = queried.name if queried is not None else names.get(mode_id)
        src = f"{NVPMODEL_STATUS}" + (" and nvpmodel -q" if queried else f" and {names_from}" if name else "")
        return PowerMode(mode_id, name, src), ""
    why.append(f"{NVPMODEL_STATUS} is unreadable" if status is None else f"{NVPMODEL_STATUS} holds no pmode")
    if queried is not None:  # a name without its id: the id from the catalogue, where the name is in it once
        ids = [i for i, n in names.items() if n == queried.name]
        if len(ids) == 1:
            return PowerMode(ids[0], queried.name, f"nvpmodel -q and {names_from}"), ""
        why.append(f"nvpmodel -q named mode {queried.name} without its id")
    return None, "; ".join(why)


def read_power_mode() -> PowerMode | None:
    """The current nvpmodel mode, or None off a Jetson or where it cannot be read. The id and name come from
    ``nvpmodel -q``; else the id from /var/lib/nvpmodel/status (readable without root) and the name from
    /etc/nvpmodel.conf, else from BOARD_MODES for the board in /proc/device-tree/model."""
    return _read_power_mode()[0]


def _mode_label(mode_id: int | None, name: str | None) -> str:
    return f"mode {mode_id}" + (f" ({name})" if name else "")


def set_power_mode(mode: int, *, board: str | None = None, expected_name: str | None = None) -> PowerMode:
    """Switch the Jetson to nvpmodel mode ``mode`` and confirm it. With ``board`` (a family such as
    "Jetson AGX Xavier"), refuse on another or an unreadable board; with ``expected_name``, refuse where
    ``mode`` is another mode on this board, and confirm the name after switching. One-line HsconasError on
    every failure (not a Jetson, not permitted, nvpmodel missing, failing or not finishing in
    NVPMODEL_TIMEOUT_S)."""
    if not is_jetson():
        raise HsconasError(
            f"--power-mode applies to Jetson boards (nvpmodel); this machine is not a Jetson (no {NV_TEGRA_RELEASE})"
        )
    want = _family_of(board)
    if want is not None:
        model = read_board()
        have = board_family(model)
        if model is None:
            raise HsconasError(
                f"cannot confirm this board is a {want} before switching to mode {mode}: {_board_unreadable()}"
            )
        if have != want:
            raise HsconasError(
                f"will not switch to power mode {mode} for a {want}: this board is {model!r}"
                + (f" ({have})" if have else "") + ", where that id means another mode"
            )
    if expected_name is not None:
        names, src = mode_names()
        if mode in names and names[mode] != expected_name:
            raise HsconasError(
                f"power mode {mode} is {names[mode]} on this board (from {src}), not {expected_name}; pick the id of "
                f"{expected_name} from 'nvpmodel -p --verbose' or /etc/nvpmodel.conf"
            )
    current = read_power_mode()
    if current is not None and current.id == mode and (expected_name is None or current.name == expected_name):
        return current
    if not shutil.which("nvpmodel"):
        raise HsconasError("nvpmodel is not on PATH; it comes with JetPack (L4T)")
    proc = _run_nvpmodel(["-m", str(mode)], NVPMODEL_TIMEOUT_S)
    if proc.returncode != 0 or "NVPM ERROR" in proc.stdout + proc.stderr:
        if os.geteuid() != 0:
            why = f"it needs root: run 'sudo nvpmodel -m {mode}' first, or hsconas as root"
        else:
            why = ((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["nvpmodel failed"])[0]
        raise HsconasError(f"could not set power mode {mode}: {why}")
    now, why = _read_power_mode()
    if now is None or now.id != mode:
        raise HsconasError(
            f"nvpmodel -m {mode} ran, but the board reports "
            + (_mode_label(now.id, now.name) if now else f"no readable mode ({why})")
        )
    if expected_name is not None and now.name != expected_name:
        raise HsconasError(
            f"nvpmodel -m {mode} ran, but mode {mode} is "
            + (f"{now.name} here, not {expected_name}" if now.name else
               f"unnamed here, so {expected_name} cannot be confirmed (mount {NVPMODEL_CONF})")
        )
    return now


def _mode_problem(device: Device, current: PowerMode | None, why: str) -> str | None:
    """Why ``current`` is not the mode ``device`` asks for, or None where it is."""
    want_id, want_name = device.power_mode, device.power_mode_name
    if want_id is None and want_name is None:
        return None
    want = _mode_label(want_id, want_name) if want_id is not None else f"mode {want_name}"
    if current is None:
        return (
            f"device {device.name} asks for power {want}, but the board's mode cannot be read ({why}): put nvpmodel "
            f"on PATH, or mount {NVPMODEL_STATUS.parent} and {NVPMODEL_CONF} into the container"
        )
    if want_id is not None and current.id != want_id:
        return (
            f"device {device.name} is set for power mode {want_id}, but the board is in mode {current.id} "
            f"({current.name or 'name unknown'}); switch with --power-mode {want_id} or 'sudo nvpmodel -m {want_id}'"
        )
    if want_name is not None:
        if current.name is None:
            return (
                f"device {device.name} asks for power {want}; the board is in mode {current.id} but its name cannot "
                f"be read to confirm it: mount {NVPMODEL_CONF} or put nvpmodel on PATH"
            )
        if current.name != want_name:
            return (
                f"device {device.name} asks for power {want}, but mode {current.id} on this board is {current.name}"
                + (f" (from {current.source})" if current.source else "")
                + ": the same id is another mode on another board; pick this board's mode by name"
            )
    return None


def _guard_problem(device: Device, current: PowerMode | None, why: str) -> str | None:
    """Everything that stops ``device`` from being measured on this machine, first problem only."""
    want = _family_of(device.board)
    if not is_jetson():
        return (
            f"device {device.name} is a Jetson preset" + (f" ({want})" if want else "")
            + f", but this machine is not a Jetson (no {NV_TEGRA_RELEASE}, which JetPack installs): run on the board, "
            f"or in its container with {NV_TEGRA_RELEASE} mounted"
        )
    if want is None and device.jetson:  # a mode id means another mode on another board: never checked alone
        model = read_board()
        here = board_family(model) or model
        return (f"device {device.name} is a Jetson preset that names no board: add \"board\" to it"
                + (f" (this board is a {here})" if here else "") + ", as its power mode is only checked together with the board")
    if want is not None:
        model = read_board()
        if model is None:
            return f"device {device.name} is for a {want}, but this board's model cannot be read: {_board_unreadable()}"
        have = board_family(model)
        if have != want:
            return (
                f"device {device.name} is for a {want}, but this board is {model!r}"
                + (f" ({have})" if have else " (an unknown board)")
                + ": its power modes and speed differ; copy the preset for this board"
            )
    return _mode_problem(device, current, why)


def check_power_mode(device: Device, force: bool = False, *, measuring: bool = False) -> PowerMode | None:
    """The board's current power mode, checked against ``device``'s (None off a Jetson or where unreadable).

    ``measuring=False`` (the default: a profile is only read, e.g. to predict or search, which is routinely done
    off the device): refuse only where this machine is that very board (same family, or no family to compare)
    in a readable, different mode; a workstation or another board passes. ``measuring=True``: see
    ``verify_measuring_device``. ``force`` never refuses; it returns whatever could be read."""
    if measuring:
        return verify_measuring_device(device, force)
    current = read_power_mode()
    if force or current is None or (device.power_mode is None and device.power_mode_name is None):
        return current
    want = _family_of(device.board)
    have = board_family(read_board())
    if want is not None and have is not None and have != want:
        return current  # another board reading the profile, not the device itself
    differs = (device.power_mode is not None and current.id != device.power_mode) or (
        device.power_mode_name is not None and current.name is not None and current.name != device.power_mode_name)
    if differs:
        raise HsconasError(str(_mode_problem(device, current, "")) + ", or pass --force")
    return current


def verify_measuring_device(device: Device, force: bool = False) -> PowerMode | None:
    """Refuse to measure ``device`` here unless everything its preset asks for is verified: for a Jetson
    preset (``jetson`` true, or a power mode set) this machine is a Jetson, its board (/proc/device-tree/model)
    is the preset's ``board`` family, and its current mode is readable with the preset's id and name
    (a name that cannot be determined cannot be verified and is refused). A device that is no Jetson and asks
    for no mode passes (the mode, None off a Jetson, is returned). ``force`` (--force) measures anyway and
    returns what could be read, possibly None."""
    current, why = _read_power_mode()
    if not device.jetson and device.power_mode is None and device.power_mode_name is None:
        return current
    problem = _guard_problem(device, current, why)
    if not problem and device.jetson and device.backend == "tensorrt":  # the board and mode are right: the clock
        problem = clock_problem(read_gpu_clocks())
    if problem and not force:
        raise HsconasError(problem + "; --force measures anyway")
    return current


# ---- machine facts ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_gpu_clocks() -> dict[str, Any] | None:
    """The Jetson GPU's devfreq node and its clocks in Hz (cur_freq, min_freq, max_freq), None where no GPU node
    is readable under DEVFREQ."""
    try:
        nodes = sorted(p for p in DEVFREQ.iterdir() if GPU_DEVFREQ.search(p.name))
    except OSError:
        return None
    for node in nodes:
        clocks = {k: _read_int(node / k) for k in ("cur_freq", "min_freq", "max_freq")}
        if clocks["cur_freq"] is not None and clocks["max_freq"] is not None:
            return {"node": node.name, **clocks}
    return None


def _read_int(path: Path) -> int | None:
    text = (_read_text(path) or "").strip()
    return int(text) if text.isdigit() else None


def clock_problem(clocks: dict[str, Any] | None) -> str | None:
    """Why the GPU's clocks are not locked for measuring (cur_freq below max_freq: floating), or None."""
    if clocks is None:
        return (f"the GPU's clock cannot be read (no GPU node under {DEVFREQ}): hsconas cannot tell whether it is locked; "
                "run 'sudo jetson_clocks' on the host and mount /sys")
    if clocks["cur_freq"] != clocks["max_freq"]:
        return (f"the GPU clock floats ({clocks['node']}: cur_freq {clocks['cur_freq'] / 1e6:.0f} MHz, max_freq "
                f"{clocks['max_freq'] / 1e6:.0f} MHz), so blocks and whole networks would be timed at other clocks: run "
                "'sudo jetson_clocks' on the host after nvpmodel")
    return None


def machine_facts() -> dict[str, Any]:
    """What a profile records of the machine it was measured on."""
    import torch

    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import tensorrt

        facts["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    if NV_TEGRA_RELEASE.exists():
        first = (_read_text(NV_TEGRA_RELEASE) or "").splitlines()[:1]
        facts["l4t"] = first[0].lstrip("# ").strip() if first else ""
        facts["jetpack"] = _jetpack_version()
        facts["board"] = read_board()
        facts["gpu_clocks"] = read_gpu_clocks()
    facts["identity"] = identity_hints()
    return facts


def identity_hints() -> dict[str, str]:
    """Cheap identifiers that do tell machines apart where the host name does not (every cloud VM of a kind is
    called ``vm``): hashes of /etc/machine-id and of the network interfaces' MAC addresses, and this boot's id.
    A hint only: images cloned without a new machine-id share it, and a machine's speed can change without
    any of them changing. ``hsconas profiles check`` is the proof."""
    import hashlib

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    out: dict[str, str] = {}
    for key, path in (("machine_id", "/etc/machine-id"), ("boot_id", "/proc/sys/kernel/random/boot_id")):
        try:
            out[key] = digest(Path(path).read_text().strip())
        except OSError:
            pass
    macs = []
    for dev in sorted(Path("/sys/class/net").glob("*")) if Path("/sys/class/net").is_dir() else []:
        try:
            mac = (dev / "address").read_text().strip()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            macs.append(mac)
    if macs:
        out["macs"] = digest(",".join(macs))
    return out


def _jetpack_version() -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
