import json
import random

import pytest

from hsconas_cli.errors import HsconasError
from hsconas_cli.space import (
    FACTORS, SPACES, Arch, SearchSpace, Subspace, arch_from_json, arch_key, arch_to_json, get_space, mid_channels,
    validate_arch,
)


def test_paper_rounding_half_up():
    assert mid_channels(0.5, 10) == 3  # the paper's 5 x 0.5 -> 3
    assert mid_channels(0.1, 48) == 2  # 2.4 -> 2
    assert mid_channels(0.3, 256) == 38  # 38.4 -> 38
    assert mid_channels(0.5, 68) == 17
    assert mid_channels(0.1, 4) == 1  # never below one channel
    assert mid_channels(1.0, 672) == 336


def test_layouts_and_geometry():
    a, b = SPACES["imagenet-A"], SPACES["imagenet-B"]
    assert a.layout == (48, 128, 256, 512) and b.layout == (68, 168, 336, 672)
    assert a.num_layers == 20 and [l.stride for l in a.layers].count(2) == 4
    assert [l.index for l in a.layers if l.stride == 2] == [0, 4, 8, 16]
    assert a.stem_stride == 2 and a.layers[0].in_size == 112 and a.head_in_size == 7
    f = SPACES["fmnist-A"]
    assert f.stem_stride == 1 and f.layers[0].in_size == 28 and f.head_in_size == 2


def test_skip_only_in_stride_one_layers():
    sp = SPACES["imagenet-A"]
    for l in sp.layers:
        assert ("skip" in l.ops) == (l.stride == 1)
        assert len(l.ops) == (5 if l.stride == 1 else 4)


def test_counts_honest_and_paper():
    sp = SPACES["imagenet-A"]
    # every factor gives a distinct width in layout A: 4 ops x 10 + skip in stride-1 layers, 40 elsewhere
    assert sp.full().count() == 41**16 * 40**4
    assert sp.paper_count() == 5**20 * 10**20
    assert 9.5e33 < sp.paper_count() < 9.6e33
    # a narrow layout collapses factors that round to the same width
    tiny = SearchSpace("tiny", (4, 8, 8, 8), 32, 3, 10)
    assert tiny.full().layer_choices(0) == 4 * len({mid_channels(c, 4) for c in FACTORS})
    assert tiny.full().count() < tiny.full().gene_count()


def test_validate_arch_errors():
    sp = SPACES["fmnist-A"]
    good = sp.full().sample(random.Random(0))
    assert validate_arch(sp, good) == good
    with pytest.raises(HsconasError, match="layers"):
        validate_arch(sp, Arch(good.genes[:5]))
    bad = list(good.genes)
    bad[0] = ("skip", None)
    with pytest.raises(HsconasError, match="layer 1: skip is not allowed in a stride-2 layer"):
        validate_arch(sp, Arch(tuple(bad)))
    bad = list(good.genes)
    bad[3] = ("shuffle3", 0.35)
    with pytest.raises(HsconasError, match="layer 4: channel factor 0.35"):
        validate_arch(sp, Arch(tuple(bad)))
    bad[3] = ("conv9", 0.5)
    with pytest.raises(HsconasError, match="unknown op"):
        validate_arch(sp, Arch(tuple(bad)))
    bad[3] = ("xception", None)
    with pytest.raises(HsconasError, match="needs a channel factor"):
        validate_arch(sp, Arch(tuple(bad)))


def test_arch_json_roundtrip_and_space_check():
    sp = SPACES["fmnist-A"]
    arch = sp.full().sample(random.Random(5))
    doc = json.loads(json.dumps(arch_to_json(sp, arch)))
    assert doc["space"] == "fmnist-A" and len(doc["arch"]) == 20
    sp2, arch2 = arch_from_json(doc)
    assert sp2 == sp and arch2 == arch
    with pytest.raises(HsconasError, match="belongs to space fmnist-A, not imagenet-A"):
        arch_from_json(doc, SPACES["imagenet-A"])
    doc["space_fingerprint"] = "0" * 16
    with pytest.raises(HsconasError, match="fingerprint"):
        arch_from_json(doc)
    with pytest.raises(HsconasError, match="not an arch file"):
        arch_from_json({"layers": []})


def test_custom_space_travels_with_the_arch(tmp_path):
    custom = SearchSpace("mine", (24, 48, 96, 192), 40, 3, 7)
    arch = custom.full().sample(random.Random(1))
    sp, a = arch_from_json(json.loads(json.dumps(arch_to_json(custom, arch))))
    assert sp == custom and a == arch
    f = tmp_path / "space.json"
    f.write_text(json.dumps(custom.to_dict()))
    assert get_space(str(f)) == custom
    with pytest.raises(HsconasError, match="even"):
        SearchSpace("odd", (23, 48, 96, 192), 40, 3, 7)


def test_fingerprint_tracks_shapes_not_names():
    a = SPACES["imagenet-A"]
    renamed = SearchSpace.from_dict({**a.to_dict(), "name": "other"})
    assert renamed.fingerprint == a.fingerprint
    wider = SearchSpace.from_dict({**a.to_dict(), "input_size": 192})
    assert wider.fingerprint != a.fingerprint


def test_sampling_is_seeded_and_uniform_enough():
    sp = SPACES["imagenet-A"]
    s1 = [sp.full().sample(random.Random(7)) for _ in range(2)]
    assert s1[0] == s1[1]
    rng = random.Random(0)
    archs = [sp.full().sample(rng) for _ in range(2000)]
    ops = [op for a in archs for op in (g[0] for g in a.genes[1:4])]
    for op in ("shuffle3", "shuffle5", "shuffle7", "xception", "skip"):
        assert abs(ops.count(op) / len(ops) - 0.2) < 0.03
    cs = [c for a in archs for _, c in a.genes if c is not None]
    assert set(cs) == set(FACTORS)


def test_subspace_fixed_layers_and_factors_respected():
    sp = SPACES["fmnist-A"]
    sub = sp.full().fix_op(19, "xception").fix_op(18, "skip").restrict_factors(5, [0.2, 0.4])
    rng = random.Random(3)
    for _ in range(300):
        a = sub.sample(rng)
        assert a.genes[19][0] == "xception" and a.genes[18] == ("skip", None)
        assert a.genes[5][0] == "skip" or a.genes[5][1] in (0.2, 0.4)
        assert sub.contains(a)
    full = sp.full()
    assert sub.count() == full.count() // full.layer_choices(19) * 10 // full.layer_choices(18) // full.layer_choices(5) * (4 * 2 + 1)
    with pytest.raises(HsconasError):
        sp.full().fix_op(0, "skip")
    assert Subspace.from_dict(json.loads(json.dumps(sub.to_dict()))) == sub


def test_arch_key_merges_equal_networks():
    tiny = SearchSpace("tiny", (4, 8, 8, 8), 32, 3, 10)
    genes = tiny.full().sample(random.Random(0)).genes
    g = list(genes)
    g[0] = ("shuffle3", 0.1)
    a1 = Arch(tuple(g))
    g[0] = ("shuffle3", 0.2)  # 0.1 x 2 and 0.2 x 2 both round to one channel
    a2 = Arch(tuple(g))
    assert a1 != a2 and arch_key(tiny, a1) == arch_key(tiny, a2)
