"""Export: turn a search result (or an arch) into what a user deploys, through the exporters of ``exporters``.

Weights come from a ``retrain`` checkpoint of the arch, or are inherited from the supernet (the result's own,
or ``--supernet``) with exact BN recalibration on the calibration subset, as the evaluator scored the arch.
The metadata (arch, space, device profile and version, accuracy, input normalisation, product version)
travels inside the ONNX model, and in a JSON sidecar beside a TensorRT engine, an OpenVINO IR or a ``.pte``
program (never glued into the binary). Where the device profile's backend runs the format's file as written
(``RUNS_FORMAT``), the file itself is measured under the profile's protocol, beside its predicted latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from exporters import FORMATS, exporter
from exporters.onnx import PRECISIONS
from exporters.tensorrt import ENGINE_CHECK_BATCHES, check_build_options
from hsconas_cli import __version__
from hsconas_cli.data import check_data_fits, load_data
from hsconas_cli.errors import HsconasError
from hsconas_cli.evaluate import recalibrate_bn
from hsconas_cli.fileio import read_json
from hsconas_cli.space import arch_from_json, arch_to_json
from hsconas_cli.supernet import HSCoNet, build_subnet
from hsconas_cli.train import load_checkpoint, load_supernet, load_weights


# The backend that runs each format's file as written: an export in that format is measured with the profile.
RUNS_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino", "pte": "executorch"}
# The format a device's backend deploys (hsconas run exports it); TensorRT and torch devices get the ONNX.
DEPLOYED_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "pte"}


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
    **options: Any,
) -> dict:
    """Export the arch of ``source`` (a search result or an arch file) in format ``fmt``; returns a report.

    ``profile``, or the newest profile of ``device`` for the arch's space where there is one, gives the batch
    size, the metadata's profile and the latency measured after an ONNX export; without one, the export goes on
    without them."""
    if fmt not in FORMATS:
        raise HsconasError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    precision = options["precision"] = options.get("precision") or ("fp16" if fmt == "trt" else "fp32")
    if fmt in ("openvino", "pte") and precision not in (("fp32", "fp16") if fmt == "openvino" else ("fp32",)):
        raise HsconasError(f"--format {fmt} exports at " + ("fp32 or fp16 (weights)" if fmt == "openvino" else "fp32")
                           + f", not {precision}")
    if precision not in PRECISIONS:
        raise HsconasError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if fmt == "trt":
        check_build_options(precision, options.get("dla_core"))
    elif options.get("dla_core") is not None:
        raise HsconasError("--dla-core applies to TensorRT engines (--format trt)")
    _check_runtime(fmt)  # a missing optional runtime is refused before any work
    doc = read_json(source, "result or arch file")
    space, arch = arch_from_json(doc)
    if profile is None and device is not None:
        from hsconas_cli.profiles import find_profile

        try:
            profile = find_profile(device, space, check_mode=False)
        except HsconasError:
            profile = None  # no profile of this device for the space: export without the latency check
    data = load_data(data_spec or doc.get("data", {}).get("name", "fashion-mnist"))
    check_data_fits(space, data)
    accuracy, accuracy_kind = doc.get("acc"), "inherited weights, validation split" if "acc" in doc else None
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        if ckpt["kind"] == "hsconet":
            if ckpt["arch"] != arch.to_list():
                raise HsconasError(f"{checkpoint} holds another architecture than {source}")
            net = HSCoNet(space, arch)
            load_weights(net, ckpt["model"], checkpoint)
            weights = f"retrained checkpoint {checkpoint}"
            # the search's inherited accuracy is not these weights': a checkpoint without its own score has none
            accuracy, accuracy_kind = ckpt.get("test_top1"), "retrained, test set"
            if accuracy is None:
                accuracy_kind = "retrained, not scored (the checkpoint has no test top-1: its training did not finish)"
        else:
            supernet = checkpoint
    if not checkpoint or (checkpoint and ckpt["kind"] == "supernet"):
        sup_path = supernet or doc.get("supernet")
        if not sup_path:
            raise HsconasError("no weights: give --checkpoint (hsconas retrain) or --supernet")
        sup, _ = load_supernet(sup_path)
        if sup.space.fingerprint != space.fingerprint:
            raise HsconasError(f"{sup_path} is a supernet of {sup.space.name}, not {space.name}")
        net = build_subnet(sup, arch)
        n_calib = (doc.get("settings") or {}).get("calib_images")  # the search's evaluator's, so BN is the one it scored
        recalibrate_bn(net, data.loader("calib", 500, limit=n_calib or 2000))
        weights = (f"inherited from supernet {sup_path}, BN recalibrated on {n_calib or 2000} calibration images"
                   + (", as the search's evaluator did" if n_calib else " (the search's count is not in the file)"))
    net = net.eval()
    batch = batch_size or (doc.get("device") or {}).get("batch_size") or (profile.device.batch_size if profile else 1)
    images = torch.cat([x for x, _ in data.loader("val", 64, limit=max(256, ENGINE_CHECK_BATCHES * batch))]).numpy()
    metadata = {
        "hsconas_version": __version__,
        "arch": arch_to_json(space, arch),
        "space": space.name,
        "space_fingerprint": space.fingerprint,
        "profile": doc.get("profile") or (profile.name if profile else None),
        "profile_version": doc.get("profile_version") or (profile.version if profile else None),
        "predicted_ms": doc.get("predicted_ms"),
        "target_ms": (doc.get("target") or {}).get("target_ms"),
        "accuracy": accuracy,
        "accuracy_kind": accuracy_kind,
        "weights": weights,
        "input": {"name": "input", "layout": "NCHW", "shape": ["batch" if dynamic_batch else batch, space.in_channels,
                                                            space.input_size, space.input_size],
                  "normalization": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"}},
        "output": {"name": "logits", "classes": space.num_classes},
        "data": data.name,
    }
    calib = None
    if precision == "int8":  # real images of the calibration split, never the validation images checked with
        calib = torch.cat([x for x, _ in data.loader("calib", 64, limit=max(512, 8 * batch))]).numpy()
    if fmt == "trt" and profile is not None and options.get("optimization_level") is None:  # build as calibrated
        options["optimization_level"] = profile.device.backend_options.get("optimization_level")
    if fmt == "trt" and options.get("dla_core") is not None:  # DLA's support depends on the board (exporters.tensorrt)
        from hsconas_cli.devices import board_family, read_board

        options["board"] = board_family(read_board())
    measured_here = (profile is not None and RUNS_FORMAT.get(fmt) == profile.device.backend and not dynamic_batch
                     and batch == profile.device.batch_size)
    if profile is not None and fmt in ("openvino", "pte"):  # the sidecar's timing runs as the device is calibrated
        for key in ("threads", "hint"):
            if key in profile.device.backend_options and (fmt == "openvino" or key == "threads"):
                options.setdefault(key, profile.device.backend_options[key])
    if measured_here and fmt != "onnx":
        from hsconas_cli.calibrate import measure_arch

        options["measure"] = lambda path: measure_arch(profile, arch, repeats=5, exported=Path(path))
    report = exporter(fmt)(net, out_dir, name=name, batch_size=batch, dynamic_batch=dynamic_batch, metadata=metadata,
                          check_images=images, calib_images=calib, **options)
    onnx_bytes = report.pop("onnx", None) if fmt == "onnx" else None  # the fp32 model, measured below
    report.pop("onnx_of_precision", None)
    report.update(metadata=metadata, weights=weights)
    if onnx_bytes is not None and measured_here:
        from hsconas_cli.calibrate import measure_arch

        report["latency"] = measure_arch(profile, arch, repeats=5, exported=onnx_bytes)
    return report


def _check_runtime(fmt: str) -> None:
    """Refuse, in one line naming the extra, a format whose optional runtime is not installed."""
    if fmt == "openvino":
        from exporters.openvino import openvino_module

        openvino_module()
    elif fmt == "pte":
        from exporters.executorch import executorch_version

        executorch_version()
