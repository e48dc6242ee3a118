"""Export: turn a search result (or an arch) into what a user deploys, through the table of formats of
``exporters`` (``exporters.FORMATS``: one row per format, one ``ExportRequest`` per export).

Weights come from a ``retrain`` checkpoint of the arch, or are inherited from the supernet (the result's own,
or ``--supernet``) with exact BN recalibration on the calibration subset, as the evaluator scored the arch.
The metadata (arch, space, device profile and version, accuracy, input normalisation, product version)
travels inside the ONNX model, and in a JSON sidecar beside a TensorRT engine, an OpenVINO IR or a ``.pte``
program (never glued into the binary). Where the device profile's backend runs the format's file as written
(the row's ``runs_on``), the file itself is measured under the profile's protocol, beside its predicted latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exporters import ExportRequest, Format, get_format
from exporters.tensorrt import ENGINE_CHECK_BATCHES
from hsconas_cli import __version__
from hsconas_cli.checkpoint import load_checkpoint, load_supernet, load_weights
from hsconas_cli.data import DataBundle, check_data_fits, load_data
from hsconas_cli.errors import HsconasError
from hsconas_cli.evaluate import recalibrate_bn
from hsconas_cli.fileio import read_json
from hsconas_cli.meter import measure_arch
from hsconas_cli.space import Arch, SearchSpace, arch_from_json, arch_to_json
from hsconas_cli.supernet import HSCoNet, build_subnet

DEFAULT_CALIB_IMAGES = 2000  # BN recalibration where the result does not say how many images its search used


@dataclass
class Weights:
    """The network an export writes, where its weights came from, and the accuracy that belongs to them."""

    net: torch.nn.Module
    origin: str
    accuracy: float | None
    accuracy_kind: str | None


def export(
    fmt: str,
    source: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    supernet: str | Path | None = None,
    data_spec: str | None = None,
    batch_size: int | None = None,
    dynamic_batch: bool = False,
    name: str = "hsconet",
    profile=None,
    device: str | None = None,
    precision: str | None = None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
) -> dict:
    """Export the arch of ``source`` (a search result or an arch file) in format ``fmt``; returns a report.

    ``profile``, or the newest profile of ``device`` for the arch's space where there is one, gives the batch
    size, the metadata's profile and the latency measured after the export; without one, the export goes on
    without them. Options the format cannot take are refused before anything is read or written."""
    form = get_format(fmt)
    precision = precision or form.default_precision
    form.check(precision, dla_core, dynamic_batch)
    doc = read_json(source, "result or arch file")
    space, arch = arch_from_json(doc)
    profile = profile if profile is not None else _device_profile(device, space)
    data = load_data(data_spec or doc.get("data", {}).get("name", "fashion-mnist"))
    check_data_fits(space, data)
    weights = _weights(doc, source, space, arch, data, checkpoint, supernet)
    batch = batch_size or (doc.get("device") or {}).get("batch_size") or (profile.device.batch_size if profile else 1)
    req = ExportRequest(weights.net, Path(out_dir), name, batch, _metadata(doc, space, arch, data, profile, weights, batch,
                                                                            dynamic_batch),
                        _check_images(data, batch), dynamic_batch=dynamic_batch, precision=precision,
                        workspace_mb=workspace_mb, dla_core=dla_core)
    if precision == "int8":  # real images of the calibration split, never the validation images checked with
        req.calib_images = torch.cat([x for x, _ in data.loader("calib", 64, limit=max(512, 8 * batch))]).numpy()
    _as_calibrated(req, form, profile)
    measured_here = (profile is not None and form.runs_on == profile.device.backend and not req.dynamic_batch
                     and req.batch_size == profile.device.batch_size)  # the profile's backend runs the file as written
    if measured_here and form.name != "onnx":  # measured as written, by the exporter (ONNX: below, from its bytes)
        req.measure = lambda path: measure_arch(profile, arch, repeats=5, exported=Path(path))
    report = form.export(req)
    onnx_bytes = report.pop("onnx", None) if form.name == "onnx" else None  # the fp32 model, measured below
    report.pop("onnx_of_precision", None)
    report.update(metadata=req.metadata, weights=weights.origin)
    if onnx_bytes is not None and measured_here:
        report["latency"] = measure_arch(profile, arch, repeats=5, exported=onnx_bytes)
    return report


def _device_profile(device: str | None, space: SearchSpace):
    """The newest profile of ``device`` for ``space``, or None where there is none (the export goes on without)."""
    if device is None:
        return None
    from hsconas_cli.profiles import find_profile

    try:
        return find_profile(device, space, check_mode=False)
    except HsconasError:
        return None


def _weights(doc: dict, source, space: SearchSpace, arch: Arch, data: DataBundle, checkpoint, supernet) -> Weights:
    """The network with its weights: a retrained checkpoint of this arch, or inherited from a supernet (a supernet
    checkpoint given, ``--supernet``, or the result's own) with BN recalibrated as the search's evaluator did."""
    accuracy, kind = doc.get("acc"), "inherited weights, validation split" if "acc" in doc else None
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        if ckpt["kind"] == "hsconet":
            if ckpt["arch"] != arch.to_list():
                raise HsconasError(f"{checkpoint} holds another architecture than {source}")
            net = HSCoNet(space, arch)
            load_weights(net, ckpt["model"], checkpoint)
            # the search's inherited accuracy is not these weights': a checkpoint without its own score has none
            kind = "retrained, test set" if ckpt.get("test_top1") is not None else \
                "retrained, not scored (the checkpoint has no test top-1: its training did not finish)"
            return Weights(net.eval(), f"retrained checkpoint {checkpoint}", ckpt.get("test_top1"), kind)
        supernet = checkpoint
    sup_path = supernet or doc.get("supernet")
    if not sup_path:
        raise HsconasError("no weights: give --checkpoint (hsconas retrain) or --supernet")
    sup, _ = load_supernet(sup_path)
    if sup.space.fingerprint != space.fingerprint:
        raise HsconasError(f"{sup_path} is a supernet of {sup.space.name}, not {space.name}")
    net = build_subnet(sup, arch)
    n_calib = (doc.get("settings") or {}).get("calib_images")  # the search's evaluator's, so BN is the one it scored
    recalibrate_bn(net, data.loader("calib", 500, limit=n_calib or DEFAULT_CALIB_IMAGES))
    origin = (f"inherited from supernet {sup_path}, BN recalibrated on {n_calib or DEFAULT_CALIB_IMAGES} calibration images"
              + (", as the search's evaluator did" if n_calib else " (the search's count is not in the file)"))
    return Weights(net.eval(), origin, accuracy, kind)


def _metadata(doc: dict, space: SearchSpace, arch: Arch, data: DataBundle, profile, weights: Weights, batch: int,
              dynamic_batch: bool) -> dict[str, Any]:
    """What travels with the exported file: the arch, space, profile, predicted latency and T, the accuracy that
    belongs to these weights, and the input a deployment must feed (shape and normalisation)."""
    return {
        "hsconas_version": __version__,
        "arch": arch_to_json(space, arch),
        "space": space.name,
        "space_fingerprint": space.fingerprint,
        "profile": doc.get("profile") or (profile.name if profile else None),
        "profile_version": doc.get("profile_version") or (profile.version if profile else None),
        "predicted_ms": doc.get("predicted_ms"),
        "target_ms": (doc.get("target") or {}).get("target_ms"),
        "accuracy": weights.accuracy,
        "accuracy_kind": weights.accuracy_kind,
        "weights": weights.origin,
        "input": {"name": "input", "layout": "NCHW", "shape": ["batch" if dynamic_batch else batch, space.in_channels,
                                                            space.input_size, space.input_size],
                  "normalization": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"}},
        "output": {"name": "logits", "classes": space.num_classes},
        "data": data.name,
    }


def _check_images(data: DataBundle, batch: int):
    """Real validation images the exported file is checked against PyTorch on (enough for TensorRT's batches)."""
    return torch.cat([x for x, _ in data.loader("val", 64, limit=max(256, ENGINE_CHECK_BATCHES * batch))]).numpy()


def _as_calibrated(req: ExportRequest, form: Format, profile) -> None:
    """The options the device was calibrated with: TensorRT's optimization level (and the Jetson board, where a
    DLA core is asked for), OpenVINO's and ExecuTorch's threads and OpenVINO's hint, for the sidecar's timing."""
    if form.name == "trt" and req.dla_core is not None:  # DLA's support depends on the board (exporters.tensorrt)
        from hsconas_cli.devices import jetson_family

        req.board = jetson_family()
    if profile is None:
        return
    opts = profile.device.backend_options
    if form.name == "trt":
        req.optimization_level = opts.get("optimization_level")  # build as calibrated
    if form.name in ("openvino", "pte"):
        req.threads = opts.get("threads", req.threads)
        if form.name == "openvino":
            req.hint = opts.get("hint", req.hint)
