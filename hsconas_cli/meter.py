"""The one meter that times a network on this machine: a device profile's backend, its measurement protocol and its
reference network (``LatencyMeter``). Everything that measures a network after calibration goes through it: the
``measure`` command, the drift check, the closed loop, the export's latency check and the benchmarks.

A calibration measures with the same pieces (``network``, ``reference_arch``, ``protocol_timer``), keeping its own
loop because it also resumes and measures blocks, not only networks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from exporters.executorch import Recipe
from hsconas_cli.backends import make_backend
from hsconas_cli.devices import jetson_family, verify_measuring_device
from hsconas_cli.errors import HsconasError
from hsconas_cli.measure import Protocol, ProtocolTimer, take_verdict
from hsconas_cli.space import Arch, SearchSpace
from hsconas_cli.supernet import HSCoNet

REFERENCE_GENE = ("shuffle3", 0.5)
REFERENCE_SEED = 12345  # the reference network's weights


def reference_arch(space: SearchSpace) -> Arch:
    """The fixed network every measurement is compared with: shuffle3 at c = 0.5 in every layer."""
    return Arch(tuple(REFERENCE_GENE for _ in space.layers))


def network(space: SearchSpace, arch: Arch, seed: int = 0) -> HSCoNet:
    """The standalone network of ``arch`` with seeded weights (the process's own random state left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HSCoNet(space, arch).eval()


def network_from_recipe(space: dict, arch: list) -> HSCoNet:
    """``network``'s structure rebuilt from plain data, for a lowering worker (``exporters.executorch.Recipe``): the
    worker loads the weights it was sent into it."""
    from hsconas_cli.space import get_space

    return HSCoNet(get_space(space), Arch.from_list(arch)).eval()


def network_item(space: SearchSpace, arch: Arch, shape: tuple[int, ...], seed: int = 0) -> tuple:
    """(module, input shape, recipe) of ``network(space, arch, seed)``: what a backend that lowers ahead takes."""
    recipe = Recipe("hsconas_cli.meter:network_from_recipe", {"space": space.to_dict(), "arch": arch.to_list()})
    return network(space, arch, seed), shape, recipe


def protocol_timer(backend, protocol: Protocol, space: SearchSpace, batch: int, state: dict | None = None) -> ProtocolTimer:
    """A warmed-up timer for ``protocol`` on ``backend``, with the reference network prepared where the protocol uses
    one; ``state`` carries the reference chunks of an interrupted calibration."""
    state = state or {}
    ref = None
    if protocol.reference:
        shape = (batch, space.in_channels, space.input_size, space.input_size)
        ref = backend.prepare(network(space, reference_arch(space), REFERENCE_SEED), shape)
    timer = ProtocolTimer(protocol, ref, list(state.get("reference_times", [])), list(state.get("fast_reference_times", [])))
    timer.warm_up()
    return timer


class LatencyMeter:
    """Measures models on this machine with a profile's backend and protocol, against the profile's reference
    network; one meter for many models, so the fast-state baseline carries over from one to the next."""

    def __init__(self, profile, *, force: bool = False):
        self.profile, space, device = profile, profile.space, profile.device
        verify_measuring_device(device, force)  # a Jetson profile is measured on its board, in its power mode
        self.backend = make_backend(device.backend, device.backend_options)
        if self.backend.name == "tensorrt":
            self.backend.board = jetson_family()
            if profile.path is not None:  # the calibration's kernel timings
                self.backend.timing_cache = Path(profile.path).parent / ".tensorrt" / "timing.cache"
        self.shape = (device.batch_size, space.in_channels, space.input_size, space.input_size)
        if self.backend.lowers_ahead:  # programs of this meter's life, lowered once each
            import tempfile

            self._programs = tempfile.TemporaryDirectory(prefix="hsconas-programs-")
            self.backend.program_dir = Path(self._programs.name)
        self.timer = protocol_timer(self.backend, profile.protocol, space, device.batch_size)

    def lower_ahead(self, archs: list[Arch]) -> None:
        """Prepare the programs of ``archs`` before any of them is timed, where the backend lowers (ExecuTorch),
        so that the seconds of lowering count in no measurement's time budget."""
        if self.backend.lowers_ahead:
            self.backend.lower_ahead([network_item(self.profile.space, a, self.shape) for a in archs])

    def runner(self, model: torch.nn.Module | bytes | Arch | Path):
        """A runner of a module, an arch (its seeded network), ONNX bytes, or an exported file (``.onnx``, OpenVINO
        ``.xml``, ExecuTorch ``.pte``) that the profile's backend runs."""
        if isinstance(model, Path):
            return self.backend.prepare_file(model, self.shape)
        if isinstance(model, Arch):
            model = network(self.profile.space, model)
        if isinstance(model, bytes):
            if not self.backend.consumes_onnx:
                raise HsconasError(f"backend {self.backend.name} measures modules, not ONNX")
            return self.backend.prepare_onnx(model, self.shape)
        return self.backend.prepare(model.eval(), self.shape)

    def reference_now_ms(self) -> float | None:
        """The reference network's fast-state time as measured so far here (None without a reference)."""
        return self.timer.reference_ms() if self.profile.protocol.reference else None

    def measure(self, model: torch.nn.Module | bytes | Arch | Path, *, repeats: int = 3, budget_s: float = 20.0) -> dict:
        prof, protocol = self.profile, self.profile.protocol
        runner = self.runner(model)

        def once() -> tuple[float, bool]:
            m = self.timer.measure(runner)
            return (m.value * prof.doc["reference"]["ms"] if protocol.reference else m.value), m.settled

        v = take_verdict(once, repeats=repeats, budget_s=budget_s, floor_pct=prof.validation.get("noise_floor_pct") or 0.0)
        raw = sorted(runner.time(1) for _ in range(max(5, protocol.pairs_min)))
        runner.close()
        ref_now = self.reference_now_ms()
        return {
            "measured_ms": v.ms,
            "verdict": v.to_dict(),
            "measurements_ms": v.repeats_ms,
            "settled": v.settled,
            "raw_median_ms": raw[len(raw) // 2],
            "reference_now_ms": ref_now,
            "reference_profile_ms": prof.doc["reference"]["ms"],
            "reference_drift_pct": None if ref_now is None else 100 * (ref_now / prof.doc["reference"]["ms"] - 1),
            "profile": prof.name,
        }

    def measure_arch(self, arch: Arch, *, repeats: int = 3, budget_s: float = 20.0,
                     exported: bytes | Path | None = None) -> dict:
        """``arch`` measured here beside its prediction: its exported model where given (ONNX bytes, or a file the
        backend runs), else its seeded network."""
        res = self.measure(exported if exported is not None else arch, repeats=repeats, budget_s=budget_s)
        predicted = self.profile.predict(arch)
        return {**res, "predicted_ms": predicted, "error_pct": 100 * (predicted - res["measured_ms"]) / res["measured_ms"]}


def measure_model(profile, model: torch.nn.Module | bytes, *, repeats: int = 3, budget_s: float = 20.0) -> dict:
    """Measure any model of the profile's input shape (a module, or ONNX bytes for backends that consume ONNX)
    on this machine with the profile's backend and protocol: a Verdict (measure.py) and the reference's drift."""
    return LatencyMeter(profile).measure(model, repeats=repeats, budget_s=budget_s)


def measure_arch(profile, arch: Arch, *, repeats: int = 3, budget_s: float = 20.0,
                 exported: bytes | Path | None = None, force: bool = False) -> dict:
    """Measure one architecture of the profile's space here (its exported model if given), beside the prediction."""
    return LatencyMeter(profile, force=force).measure_arch(arch, repeats=repeats, budget_s=budget_s, exported=exported)
