"""Every file a user may edit is checked against its declared schema (hsconas_cli/schema.py) before it is read:
an unknown key, a missing one or a wrong type is one line naming the file and the key."""

import json

import pytest

from conftest import FAST_PROTOCOL, TINY28, assert_one_line_error, run_cli
from hsconas_cli.calibrate import calibrate
from hsconas_cli.devices import Device, load_device
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import write_json
from hsconas_cli.profiles import checksum, load_profile


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(colour="red"), "colour: unknown key"),
    (lambda d: d.pop("batch_size"), "batch_size: missing key"),
    (lambda d: d["backend_options"].update(thread=2), "backend_options.thread: unknown key"),
    (lambda d: d.update(batch_size="many"), "batch_size: Input should be a valid integer"),
    (lambda d: d.update(backend="tflite"), "backend: Input should be 'onnxruntime', 'torch', 'tensorrt', 'openvino' or 'executorch'"),
    (lambda d: d["backend_options"].update(protocol={"reference": False, "gates": 1.1}), "backend_options.protocol.gates: unknown key"),
])
def test_device_preset_refused_in_one_line_naming_file_and_key(change, needle, tmp_path):
    doc = load_device("cpu").to_dict()
    change(doc)
    (tmp_path / "mine.json").write_text(json.dumps(doc))
    p = run_cli("calibrate", "--device", "mine", "--space", "fmnist-A", env={"HSCONAS_PROFILES": str(tmp_path)})
    assert_one_line_error(p, "device preset", "mine.json", needle)
    assert not (tmp_path / "mine").exists()  # refused before anything was written


def test_reference_false_in_a_presets_protocol_is_honoured(tmp_path):
    """measure.py documents ``reference: false``; it used to end in a TypeError traceback in calibrate.py."""
    dev = Device("plain", 1, "onnxruntime", {"threads": 1, "protocol": {**FAST_PROTOCOL, "reference": False}})
    write_json(tmp_path / "plain.json", dev.to_dict())
    prof = load_profile(calibrate(load_device("plain", tmp_path), TINY28, archs=2, holdout=2, root=tmp_path))
    assert prof.protocol.reference is False and prof.doc["protocol"]["statistic"] == "median of chunk times"


def test_profile_with_unknown_or_missing_keys_is_refused(tiny_profile, tmp_path):
    for change, needle in ((lambda d: d.update(notes="mine"), "notes: unknown key"),
                           (lambda d: d["lut"].pop("head"), "lut.head: missing key"),
                           (lambda d: d["lut"]["entries"][0].update(ms="fast"), "lut.entries.0.ms: Input should be a valid number")):
        doc = json.loads(json.dumps(tiny_profile.doc))
        change(doc)
        doc["checksum"] = checksum(doc)  # a consistent checksum: the schema, not the checksum, refuses it
        (tmp_path / "v9.json").write_text(json.dumps(doc))
        with pytest.raises(HsconasError, match=f"device profile {tmp_path / 'v9.json'}: {needle}"):
            load_profile(tmp_path / "v9.json")
    doc = json.loads(json.dumps(tiny_profile.doc))
    doc["bias"]["ms"] += 0.5  # edited by hand, checksum left alone
    (tmp_path / "v8.json").write_text(json.dumps(doc))
    with pytest.raises(HsconasError, match="corrupt: its checksum does not match its content \\(edited by hand"):
        load_profile(tmp_path / "v8.json")


def test_space_file_refused_naming_the_key(tmp_path):
    doc = TINY28.to_dict()
    doc["layuot"] = doc.pop("layout")
    (tmp_path / "space.json").write_text(json.dumps(doc))
    p = run_cli("space", "--space", tmp_path / "space.json")
    assert_one_line_error(p, "space definition", "space.json", "layuot: unknown key")
