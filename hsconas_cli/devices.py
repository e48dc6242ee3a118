"""Target devices: presets, the facts of this machine, and Jetson power modes.

A device preset is a JSON file ``device_profiles/<name>.json`` (batch size, backend and its options, power
mode); its calibrated profiles live in ``device_profiles/<name>/``. Copy a preset to add a device.

Jetson power modes: the current mode is read from ``nvpmodel -q`` or, without root, from
``/var/lib/nvpmodel/status`` (``pmode:0006``) with names from ``/etc/nvpmodel.conf``; ``nvpmodel -m N`` sets
one where permitted.
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

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
NVPMODEL_STATUS = Path("/var/lib/nvpmodel/status")
NVPMODEL_CONF = Path("/etc/nvpmodel.conf")
XAVIER_MODES = {
    0: "MAXN", 1: "MODE_10W", 2: "MODE_15W", 3: "MODE_30W_ALL", 4: "MODE_30W_6CORE", 5: "MODE_30W_4CORE",
    6: "MODE_30W_2CORE", 7: "MODE_15W_DESKTOP",
}


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "batch_size": self.batch_size,
            "backend": self.backend,
            "backend_options": dict(self.backend_options),
            "jetson": self.jetson,
            "power_mode": self.power_mode,
        }

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
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HsconasError(f"device definition is incomplete or malformed: {e!r}") from None


BUILTIN_PRESETS = Path(__file__).resolve().parents[1] / "device_profiles"


def preset_names(root: Path | None = None) -> list[str]:
    dirs = [root or profiles_root(), BUILTIN_PRESETS]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.json")})


def load_device(name: str, root: Path | None = None, batch_size: int | None = None) -> Device:
    """A preset by name (``device_profiles/<name>.json``) or a device JSON file, optionally at another batch size."""
    root = root or profiles_root()
    path = Path(name) if name.endswith(".json") else root / f"{name}.json"
    if not path.exists() and not name.endswith(".json"):
        path = BUILTIN_PRESETS / f"{name}.json"
    if not path.exists():
        known = ", ".join(preset_names(root)) or "none"
        raise HsconasError(f"unknown device {name!r}; presets: {known} (or copy one to {root}/NAME.json)")
    dev = Device.from_dict(read_json(path, "device preset"))
    if batch_size is not None:
        dev = dev.replace(batch_size=batch_size)
    if dev.batch_size < 1:
        raise HsconasError("batch size must be at least 1")
    return dev


# ---- Jetson power modes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerMode:
    id: int
    name: str | None


def is_jetson() -> bool:
    return NV_TEGRA_RELEASE.exists()


def parse_nvpmodel_query(text: str) -> PowerMode | None:
    """``nvpmodel -q`` prints "NV Power Mode: MODE_30W_2CORE" and the id on the next line (after a fan line
    on some releases)."""
    lines = [l.strip() for l in text.splitlines()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode\s*:\s*(\S+)", line)
        if m:
            for nxt in lines[i + 1 :]:
                if nxt.isdigit():
                    return PowerMode(int(nxt), m.group(1))
            return PowerMode(-1, m.group(1))
    return None


def parse_nvpmodel_status(text: str) -> int | None:
    """``/var/lib/nvpmodel/status`` holds e.g. "pmode:0006 fmode:quiet"."""
    m = re.search(r"pmode:0*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_nvpmodel_conf(text: str) -> dict[int, str]:
    """Mode names from ``/etc/nvpmodel.conf`` lines "< POWER_MODEL ID=6 NAME=MODE_30W_2CORE >"."""
    return {int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", text)}


def read_power_mode() -> PowerMode | None:
    """The current nvpmodel mode, or None off a Jetson or where it cannot be read."""
    if not is_jetson():
        return None
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=20)
            mode = parse_nvpmodel_query(out.stdout)
            if mode and mode.id >= 0:
                return mode
        except (OSError, subprocess.SubprocessError):
            pass
    if NVPMODEL_STATUS.exists():
        mode_id = parse_nvpmodel_status(NVPMODEL_STATUS.read_text())
        if mode_id is not None:
            names = parse_nvpmodel_conf(NVPMODEL_CONF.read_text()) if NVPMODEL_CONF.exists() else {}
            return PowerMode(mode_id, names.get(mode_id))
    return None


def set_power_mode(mode: int) -> PowerMode:
    """Switch the Jetson to nvpmodel mode ``mode``; a clear error where this is not a Jetson or not permitted."""
    if not is_jetson():
        raise HsconasError("--power-mode applies to Jetson boards (nvpmodel); this machine is not a Jetson")
    current = read_power_mode()
    if current is not None and current.id == mode:
        return current
    if not shutil.which("nvpmodel"):
        raise HsconasError("nvpmodel is not on PATH; it comes with JetPack (L4T)")
    proc = subprocess.run(["nvpmodel", "-m", str(mode)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or "NVPM ERROR" in proc.stdout + proc.stderr:
        why = "it needs root: run 'sudo nvpmodel -m %d' first, or hsconas as root" % mode if os.geteuid() != 0 else (
            (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["nvpmodel failed"])[0]
        raise HsconasError(f"could not set power mode {mode}: {why}")
    now = read_power_mode()
    if now is None or now.id != mode:
        raise HsconasError(f"nvpmodel -m {mode} ran, but the board reports mode {now.id if now else 'unknown'}")
    return now


def check_power_mode(device: Device, force: bool = False) -> PowerMode | None:
    """Refuse to measure a Jetson device in another power mode than its profile or preset asks for."""
    current = read_power_mode()
    if device.power_mode is None or current is None or current.id == device.power_mode or force:
        return current
    raise HsconasError(
        f"device {device.name} is set for power mode {device.power_mode}, but the board is in mode {current.id} "
        f"({current.name}); switch with --power-mode {device.power_mode} or 'sudo nvpmodel -m {device.power_mode}', "
        "or pass --force"
    )


# ---- machine facts ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        first = NV_TEGRA_RELEASE.read_text().splitlines()[:1]
        facts["l4t"] = first[0].lstrip("# ").strip() if first else ""
        facts["jetpack"] = _jetpack_version()
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
