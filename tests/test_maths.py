"""The product's small pieces of maths, each against a case worked out by hand (the working is in the comments)
or against a quantity computed directly with plain torch: nothing here measures or trains."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hsconas_cli.drift import _threshold_pct, drift_outcome
from hsconas_cli.evaluate import kendall_tau, recalibrate_bn
from hsconas_cli.measure import Repeat, verdict_of
from hsconas_cli.profiles import fit_models
from hsconas_cli.search import loop_candidates, meets_target


# ---- recalibrate_bn: the exact statistics of the calibration batches ----------------------------------------
def test_recalibrated_bn_statistics_are_the_exact_batch_averages():
    """After recalibration, each BN's running mean is the mean of its input over every calibration image (equal
    batches), and its running variance the average of the batches' unbiased variances: what BN's cumulative
    average (momentum None) gives. An EMA (the default momentum 0.1), or statistics kept from before, would not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
    with torch.no_grad():
        for bn in (net[1], net[4]):  # stale statistics that must not survive
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
            bn.num_batches_tracked.fill_(100)
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1) + i, torch.zeros(8)) for i in range(4)]
    recalibrate_bn(net, batches)

    assert not net.training and net[1].momentum == net[4].momentum == 0.1  # eval mode, momentum given back
    with torch.no_grad():
        for bn_index in (1, 4):
            ins = []
            for x, _ in batches:  # the BN's input, as in training mode: a BN before it normalises by batch statistics
                h = x
                for m in net[:bn_index]:
                    h = F.batch_norm(h, None, None, m.weight, m.bias, True, 0.0, m.eps) if isinstance(m, nn.BatchNorm2d) else m(h)
                ins.append(h)
            means = torch.stack([h.mean(dim=(0, 2, 3)) for h in ins])
            varis = torch.stack([h.transpose(0, 1).reshape(h.shape[1], -1).var(dim=1, unbiased=True) for h in ins])
            bn = net[bn_index]
            assert torch.allclose(bn.running_mean, torch.cat(ins).mean(dim=(0, 2, 3)), atol=1e-5)
            assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
            assert torch.allclose(bn.running_var, varis.mean(0), rtol=1e-5, atol=1e-5)
            assert int(bn.num_batches_tracked) == len(batches)


# ---- the verdict on repeated measurements ---------------------------------------------------------------------
def _rows(ms, settled=True, busy=False):
    return [Repeat(m, settled, busy, 1.0 if busy else 0.0) for m in ms]


def test_verdict_uncertainty_by_hand():
    # kept: 1.0 1.1 0.9 1.2 0.8; median 1.0; sd (n - 1) = sqrt((0 + .01 + .01 + .04 + .04) / 4) = 0.158114;
    # two standard errors of a median: 2 x 1.2533 x 0.158114 / sqrt(5) = 0.177245
    v = verdict_of(_rows([1.0, 1.1, 0.9, 1.2, 0.8]), repeats=5)
    assert v.status == "quiet" and v.kept == 5 and v.ms == pytest.approx(1.0)
    assert v.uncertainty_pct == pytest.approx(17.7245, abs=1e-3)
    assert v.spread_pct == pytest.approx(40.0)
    # a noise floor of 50% between two passes: one repeat's sd at least 0.5 / sqrt(2) = 0.353553;
    # 2 x 1.2533 x 0.353553 / sqrt(5) = 0.396329
    assert verdict_of(_rows([1.0, 1.1, 0.9, 1.2, 0.8]), repeats=5, floor_pct=50).uncertainty_pct == pytest.approx(39.6329, abs=1e-3)
    # one repeat: no spread of its own, the floor alone: 2 x 1.2533 x 0.02 / sqrt(2) / 1 = 0.035449
    assert verdict_of(_rows([2.0]), repeats=1, floor_pct=2).uncertainty_pct == pytest.approx(3.5449, abs=1e-3)


def test_verdict_keeps_quiet_settled_repeats():
    # 2 busy repeats (5.0, 6.0) dropped; 3 quiet settled kept: median 1.1
    v = verdict_of(_rows([5.0, 6.0], busy=True) + _rows([1.0, 1.1, 1.3]), repeats=3)
    assert (v.status, v.kept, v.busy, v.ms) == ("re-measured", 3, 2, pytest.approx(1.1))
    # only 2 settled of the 3 needed: the 3 quiet ones, settled or not, are kept
    v = verdict_of(_rows([1.0, 1.2]) + _rows([1.4], settled=False), repeats=3)
    assert (v.status, v.kept, v.ms) == ("unsettled", 3, pytest.approx(1.2))
    # a busy repeat, and too few settled among the quiet ones: the quiet ones kept, the busy one not (median 1.2)
    v = verdict_of(_rows([5.0], busy=True) + _rows([1.0]) + _rows([1.4], settled=False), repeats=3)
    assert (v.status, v.kept, v.busy, v.ms) == ("re-measured", 2, 1, pytest.approx(1.2))
    # nothing quiet: every repeat kept, and the verdict says it is none
    v = verdict_of(_rows([2.0, 3.0, 4.0], busy=True), repeats=3)
    assert (v.status, v.kept, v.ms) == ("busy", 3, pytest.approx(3.0)) and "not a verdict" in v.note()


def test_meets_target_by_hand():
    assert meets_target(1.04, 4.0, 1.0)  # 1.04 x 0.96 = 0.9984 <= 1
    assert not meets_target(1.05, 4.0, 1.0)  # 1.05 x 0.96 = 1.008 > 1
    assert meets_target(0.99, 0.0, 1.0) and not meets_target(1.01, 0.0, 1.0)


# ---- the closed loop's candidates ------------------------------------------------------------------------------
def test_loop_candidates_by_hand():
    """T = 10 ms, 6 candidates: the best 3 by F, then the most accurate arch of each band 3% wide below T:
    [9.7, 10), [9.4, 9.7), [9.1, 9.4), ..."""
    def row(name, F, acc, lat):
        return {"key": name, "F": F, "acc": acc, "lat_ms": lat}

    rows = [row("a", 0.90, 0.90, 10.0), row("b", 0.89, 0.89, 9.99), row("c", 0.88, 0.88, 10.05),
            row("d", 0.87, 0.86, 9.80),  # band 1, less accurate than e
            row("e", 0.86, 0.87, 9.75),  # band 1's most accurate
            row("f", 0.70, 0.70, 9.50),  # band 2
            row("g", 0.60, 0.95, 9.00),  # band 4 (9.0 < 9.1): most accurate of all, but only in its own band
            row("h", 0.50, 0.50, 11.0)]
    got = [r["key"] for r in loop_candidates(rows, 10.0, 6)]
    assert got == ["a", "b", "c", "e", "f", "g"]
    # an odd number: the larger half by F (3 of 5), then the bands
    assert [r["key"] for r in loop_candidates(rows, 10.0, 5)] == ["a", "b", "c", "e", "f"]
    # too few below T: the rest filled by F, in order
    assert [r["key"] for r in loop_candidates(rows[:3] + rows[-1:], 10.0, 4)] == ["a", "b", "c", "h"]


# ---- the drift check's threshold and outcome -------------------------------------------------------------------
def test_drift_threshold_by_hand():
    # floor 4%: one measurement's sd 0.04 / sqrt(2) = 0.028284; stored value the mean of two (var x 0.5), now the
    # median of 3 (var x 1.571 / 3); sd of the drift 0.028284 x sqrt(0.5 + 0.523667) = 0.028617; 3 sd = 8.585%
    assert _threshold_pct(SimpleNamespace(validation={"noise_floor_pct": 4.0}), 6, 3) == pytest.approx(8.585, abs=1e-3)
    # a quiet profile's threshold never falls under 2%
    assert _threshold_pct(SimpleNamespace(validation={"noise_floor_pct": 0.1}), 6, 3) == 2.0


@pytest.mark.parametrize("drift, shape, busy, ref, want", [
    (1.0, 0.0, 0, True, "holds"),  # within the 5% threshold
    (-5.0, 9.0, 0, True, "holds"),  # at the threshold: holds, whatever the shape
    (30.0, 2.0, 0, True, "uniform"),  # moved, with the reference
    (30.0, -6.0, 0, True, "changed"),  # moved, unlike the reference
    (30.0, 20.0, 0, False, "uniform"),  # no reference to tell: one factor
    (30.0, 20.0, 4, True, "inconclusive"),  # 4 of 6 busy
    (30.0, 20.0, 3, True, "changed"),  # 3 of 6 busy: half is not more than half
])
def test_drift_outcome(drift, shape, busy, ref, want):
    assert drift_outcome(drift, shape, 5.0, busy=busy, archs=6, has_reference=ref) == want


# ---- the latency models ------------------------------------------------------------------------------------------
def test_fit_models_recover_known_models():
    sums = [1.0, 2.0, 3.0, 4.0]
    additive = fit_models(sums, [s + 0.3 for s in sums])["additive"]
    assert additive == {"scale": 1.0, "power": 1.0, "bias_ms": pytest.approx(0.3)}
    power = fit_models(sums, [2.0 * s**0.8 for s in sums])["power"]
    assert power["scale"] == pytest.approx(2.0) and power["power"] == pytest.approx(0.8) and power["bias_ms"] == 0.0
    # B is the mean residual: measured - sum = 0.1, 0.5, 0.0, 0.2 -> 0.2
    assert fit_models(sums, [1.1, 2.5, 3.0, 4.2])["additive"]["bias_ms"] == pytest.approx(0.2)
    assert "power" not in fit_models([1.0, 2.0], [1.0, 2.0])  # two points: no power fit


# ---- Kendall's tau-b ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, want", [
    ([1, 2, 3, 4], [1, 3, 2, 4], 4 / 6),  # 5 concordant, 1 discordant (2-3) of 6 pairs
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 2, 3], [1, 3, 2, 2], 0.4),  # C 3, D 1, one pair tied in a, one in b: 2 / sqrt(5 x 5)
    ([1, 1, 2, 3], [1, 1, 3, 2], 0.6),  # one pair tied in both (n1 = n2 = 1): (4 - 1) / sqrt(5 x 5)
    ([1, 1, 1], [1, 2, 3], 0.0),  # a constant: no order to agree with
])
def test_kendall_tau_b_by_hand(a, b, want):
    assert kendall_tau(a, b) == pytest.approx(want)
    assert kendall_tau(b, a) == pytest.approx(want)
