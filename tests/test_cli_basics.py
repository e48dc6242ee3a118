import json

from conftest import assert_one_line_error, run_cli, run_cli_all

from hsconas_cli import __version__


def test_version_and_help():
    p = run_cli("--version", process=True)  # the installed console script, for real
    assert p.returncode == 0 and p.stdout.strip() == f"hsconas {__version__}"
    p = run_cli("--help", process=True)
    assert p.returncode == 0
    for cmd in ("space", "sample", "arch"):
        assert cmd in p.stdout
    for cmd in (["space"], ["sample"], ["arch", "show"]):
        h = run_cli(*cmd, "--help")
        assert h.returncode == 0 and "Example" in h.stdout


def test_space_json_counts():
    p = run_cli("space", "--space", "imagenet-A", "--json")
    assert p.returncode == 0
    doc = json.loads(p.stdout)
    assert doc["counts"]["distinct"] == 41**16 * 40**4
    assert doc["counts"]["paper"] == 5**20 * 10**20
    assert len(doc["layers"]) == 20 and doc["layers"][0]["stride"] == 2
    text = run_cli("space").stdout
    assert "9.5 x 10^33" in text and "distinct architectures" in text


def test_sample_then_show(tmp_path):
    f = tmp_path / "a.json"
    p = run_cli("sample", "--seed", "11", "--out", f)
    assert p.returncode == 0 and f.exists()
    doc = json.loads(f.read_text())
    assert doc["space"] == "fmnist-A" and doc["hsconas_version"] == __version__ and len(doc["arch"]) == 20
    assert run_cli("sample", "--seed", "11", "--out", tmp_path / "b.json").returncode == 0
    assert json.loads((tmp_path / "b.json").read_text())["arch"] == doc["arch"]
    show = run_cli("arch", "show", f, "--json")
    rows = json.loads(show.stdout)
    assert show.returncode == 0 and len(rows["layers"]) == 20 and rows["flops"] > 0
    assert "MFLOPs" in run_cli("arch", "show", f).stdout


def test_bad_inputs_one_line_exit_2(tmp_path):
    out = tmp_path / "never.json"
    files = {name: tmp_path / f"{name}.json" for name in ("cut", "skip", "space")}
    files["cut"].write_text('{"arch": [["shuffle3", 0.5]')
    files["skip"].write_text(json.dumps({"space": "fmnist-A", "arch": [["skip", None]] * 20}))
    files["space"].write_text(json.dumps({"space": "mars-Z", "arch": []}))
    cases = [
        (("sample", "--space", "nope", "--out", out), "unknown space 'nope'"),
        (("sample", "--seed", "x", "--out", out), "--seed"),
        (("arch", "show", tmp_path / "missing.json"), "not found"),
        (("arch", "show", files["cut"]), "not valid JSON"),
        (("arch", "show", files["skip"]), "layer 1: skip is not allowed"),
        (("arch", "show", files["space"]), "unknown space"),
        (("frobnicate",), "No such command"),
        (("space", "--bogus"), "--bogus"),
    ]
    for (_, needle), p in zip(cases, run_cli_all(*(args for args, _ in cases))):
        assert_one_line_error(p, needle)
    assert not out.exists()
