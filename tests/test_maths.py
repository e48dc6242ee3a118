"""The product's small pieces of maths, each against a case worked out by hand (the working is in the comments)
or against a quantity computed directly with plain torch: nothing here measures or trains."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hsconas_cli.drift import CheckResult, _threshold_pct, drift_figures, drift_outcome
from hsconas_cli.evaluate import kendall_tau, recalibrate_bn
from hsconas_cli.measure import Repeat, verdict_of
from hsconas_cli.profiles import fit_models
from hsconas_cli.shrink import decide, describe_decision
from hsconas_cli.closed_loop import choose_candidate, clearly_faster, loop_candidates, meets_target, misses_target


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
    # a noise floor of 20%: the floor bounds the final figure, 17.72% < 20%
    assert verdict_of(_rows([1.0, 1.1, 0.9, 1.2, 0.8]), repeats=5, floor_pct=20).uncertainty_pct == pytest.approx(20.0)
    # a floor of 10% under the repeats' own 17.72%: the repeats' figure stands
    assert verdict_of(_rows([1.0, 1.1, 0.9, 1.2, 0.8]), repeats=5, floor_pct=10).uncertainty_pct == pytest.approx(17.7245, abs=1e-3)
    # issue 23's case: 6 repeats that agree, floor 3.6%: +-3.6%, not 2 x 1.2533 x 0.036 / sqrt(2) / sqrt(6) = 2.6%
    assert verdict_of(_rows([2.0] * 6), repeats=6, floor_pct=3.6).uncertainty_pct == pytest.approx(3.6)
    # one repeat: no spread of its own, the floor alone
    assert verdict_of(_rows([2.0]), repeats=1, floor_pct=2).uncertainty_pct == pytest.approx(2.0)


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


def test_target_bounds_by_hand():
    assert meets_target(0.96, 4.0, 1.0)  # upper end 0.96 x 1.04 = 0.9984 <= 1
    assert not meets_target(0.97, 4.0, 1.0)  # 0.97 x 1.04 = 1.0088 > 1
    assert meets_target(1.0, 0.0, 1.0) and not meets_target(1.01, 0.0, 1.0)
    assert misses_target(1.05, 4.0, 1.0)  # lower end 1.05 x 0.96 = 1.008 > 1
    assert not misses_target(1.04, 4.0, 1.0)  # 1.04 x 0.96 = 0.9984 <= 1
    # 1.00 ms +-3% (0.03 ms) against 0.95 ms +-2% (0.019 ms): combined hypot(0.03, 0.019) = 0.0355 ms < 0.05 ms
    assert clearly_faster(_m(0.95, 2.0), _m(1.0, 3.0))
    # 0.97 ms +-2%: hypot(0.03, 0.0194) = 0.0357 ms > 0.03 ms
    assert not clearly_faster(_m(0.97, 2.0), _m(1.0, 3.0))
    # 0.95 ms +-6%: hypot(0.03, 0.057) = 0.0644 ms > 0.05 ms: a wider uncertainty never helps
    assert not clearly_faster(_m(0.95, 6.0), _m(1.0, 3.0))


def _m(ms, u, acc=0.8, trusted=True):
    return {"measured_ms": ms, "uncertainty_pct": u, "acc": acc, "F": acc, "trusted": trusted}


def test_closed_loop_keeps_the_winner_against_noise():
    """Issue 23's case, T = 1 ms: the winner at +2.8% +-2.6% misses T beyond its uncertainty (1.028 x 0.974 =
    1.0013); a candidate at +2.7% +-4.8% used to 'meet' T by its lower end and take the winner's place, 0.1%
    faster. It meets T neither by its upper end nor by its value, and is not faster beyond the noise: the
    winner stays, and the reason gives its measurement."""
    i, why = choose_candidate([_m(1.028, 2.6, 0.80), _m(1.027, 4.8, 0.75)], 1.0)
    assert i == 0 and "1.0280 ms +-2.6% (+2.8% vs T)" in why and "kept" in why
    # the winner within its uncertainty (1.02 x 0.97 = 0.9894 <= 1): kept, whatever is faster and more accurate
    assert choose_candidate([_m(1.02, 3.0), _m(0.80, 1.0, 0.9)], 1.0)[0] == 0
    # measured under load: kept, unconfirmed
    assert "under load" in choose_candidate([_m(1.2, 3.0, trusted=False), _m(0.8, 1.0, 0.9)], 1.0)[1]


def test_closed_loop_replaces_a_clear_miss_with_the_most_accurate_clear_meet():
    """T = 1 ms, the winner at 1.10 ms +-3% (lower end 1.067: a miss). Candidates: 0.95 +-2% (upper 0.969),
    0.93 +-2% (0.9486), 0.99 +-2% (1.0098: meets only by value), one under load, one slower."""
    cands = [_m(1.10, 3.0, 0.80), _m(0.95, 2.0, 0.78), _m(0.93, 2.0, 0.79), _m(0.99, 2.0, 0.83),
             _m(0.90, 2.0, 0.85, trusted=False), _m(1.12, 1.0, 0.86)]
    i, why = choose_candidate(cands, 1.0)
    assert i == 2 and "candidate 3" in why and "upper bound" in why  # the most accurate clear meet, not 0.83
    # with no candidate meeting T by its upper bound, one that meets it by its measured value
    i, why = choose_candidate([_m(1.10, 3.0, 0.80), _m(0.99, 2.0, 0.83), _m(1.01, 1.0, 0.9)], 1.0)
    assert i == 1 and "measured value" in why
    # 1.00 ms +-12% meets T by its value, but is not faster beyond the combined noise (0.10 ms against
    # hypot(0.033, 0.12) = 0.1245 ms): kept; at 0.91 ms +-9% it meets T by its upper end (0.9919) and is 0.19 ms
    # faster against hypot(0.033, 0.0819) = 0.0883 ms: replaced
    assert choose_candidate([_m(1.10, 3.0), _m(1.0, 12.0, 0.9)], 1.0)[0] == 0
    assert choose_candidate([_m(1.10, 3.0), _m(0.91, 9.0, 0.9)], 1.0)[0] == 1


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


def test_drift_figures_leave_busy_measurements_out_and_the_factor_is_the_archs_median():
    """Issue 24 item 4: two of six archs measured under load (3x and 2.5x slow) no longer pull the medians; the
    rescale factor is the archs' median drift (+9.5% here), not the reference network's own ratio (+25%)."""
    def row(now, rel, status="ok"):
        return {"stored_ms": 1.0, "now_ms": now, "relative_ms": rel, "status": status}

    rows = [row(1.08, 0.86), row(1.10, 0.88), row(1.12, 0.90), row(1.09, 0.87),
            row(3.0, 2.4, "busy"), row(2.5, 2.0, "busy")]
    drift, shape, busy = drift_figures(rows, has_reference=True)
    assert busy == 2
    assert drift == pytest.approx(0.095) and shape == pytest.approx(-0.125)  # medians of the 4 quiet rows
    assert drift_figures(rows, has_reference=False)[1] == 0.0
    every = drift_figures([row(2.0, 2.0, "busy")], has_reference=True)
    assert math.isnan(every[0]) and every[2] == 1
    check = CheckResult("p", "uniform", drift_pct=100 * drift, threshold_pct=5.0, reference_pct=25.0, shape_pct=100 * shape)
    assert check.factor == pytest.approx(1.095)


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


# ---- shrinking's decision ----------------------------------------------------------------------------------------
def _scores(**fs):
    return {op: {"Q": sum(v) / len(v), "fs": v} for op, v in fs.items()}


def test_shrink_decides_only_beyond_two_paired_standard_errors():
    # xception - shuffle3 per sample: 0.02, 0.04, 0.03, 0.03; margin 0.03; sd 0.008165; SE 0.004082; 2 SE 0.00816
    d = decide(_scores(xception=[0.52, 0.44, 0.63, 0.33], shuffle3=[0.50, 0.40, 0.60, 0.30], skip=[0.1, 0.1, 0.1, 0.1]))
    assert (d["best"], d["second"], d["decided"]) == ("xception", "shuffle3", True)
    assert d["margin"] == pytest.approx(0.03) and d["se"] == pytest.approx(0.0040825, abs=1e-6)
    # the same means, but the differences 0.13, -0.07, 0.10, -0.04: sd 0.09967, SE 0.04983; margin 0.03 < 2 SE: free.
    # Unpaired, each op's Q has SE ~0.06 here: only the pairing lets the first case decide.
    d = decide(_scores(xception=[0.63, 0.33, 0.70, 0.26], shuffle3=[0.50, 0.40, 0.60, 0.30]))
    assert d["margin"] == pytest.approx(0.03) and d["se"] == pytest.approx(0.049833, abs=1e-6) and not d["decided"]
    assert describe_decision(d).startswith("free: best xception not told apart")
    # exactly at 2 SE is not beyond it: differences 1 and 3, margin 2, sd sqrt(2), SE 1
    assert not decide(_scores(a=[1.0, 3.0], b=[0.0, 0.0]))["decided"]
    assert decide(_scores(a=[1.9, 2.1], b=[0.0, 0.0]))["decided"]  # margin 2, SE 0.1
    # one sample: no standard error, nothing decided; one op: nothing to decide
    assert not decide(_scores(a=[0.9], b=[0.1]))["decided"]
    assert decide(_scores(a=[0.9]))["decided"] and describe_decision(decide(_scores(a=[0.9]))) == "a (the only op allowed)"
