"""bench/abcrown_compare.py without alpha-beta-CROWN: parsing its recorded output, the verdict
mapping and the disagreement rule (a proof against a counterexample exits 1)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import abcrown_compare as ac  # noqa: E402

# Captured from abcrown.py (Dec 2025 release, csv mode, CPU) on runs/default instances; the
# noise lines between the markers are shortened.
LOG = """\
Internal results will be saved to /tmp/abc-try/abcrown_out.pkl.

 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%% idx: 0, vnnlib ID: 0 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%
Using onnx model.onnx
Using vnnlib vnnlib/sample_0.vnnlib
784 inputs and 10 outputs in vnnlib
Attack finished in 18.7589 seconds.
initial CROWN bounds (first 10 items): [13.022924423217773, 4.194086074829102]
Verified with initial CROWN!
verified with init bound!
Result: safe-incomplete (timed out) in 19.2158 seconds

 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%% idx: 1, vnnlib ID: 1 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%
Using vnnlib vnnlib/sample_17.vnnlib
Attack finished in 0.2963 seconds.
Result: unsafe-pgd in 0.4123 seconds

 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%% idx: 2, vnnlib ID: 2 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%
Using vnnlib vnnlib/sample_163.vnnlib
Result: safe in 7.5 seconds

 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%% idx: 3, vnnlib ID: 3 %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%
Using vnnlib vnnlib/sample_194.vnnlib
Result: unknown in 30.8 seconds
############# Summary #############
Final verified acc: 50.0% (total 4 examples)
safe-incomplete (timed out) (total 1), index: [0]
"""
ROWS = [("model.onnx", f"vnnlib/sample_{i}.vnnlib", "30") for i in (0, 17, 163, 194)]


def test_parse_maps_instances_to_our_sample_indices():
    got = ac.parse_abcrown_log(LOG, ROWS, timeout=30)
    assert got == {0: ("safe", "safe-incomplete (timed out)", 19.2158), 17: ("unsafe", "unsafe-pgd", 0.4123),
                   163: ("safe", "safe", 7.5), 194: ("timeout", "unknown", 30.8)}


def test_parse_refuses_an_instance_the_csv_lacks():
    with pytest.raises(ValueError, match="csv has 2 rows"):
        ac.parse_abcrown_log(LOG, ROWS[:2], timeout=30)
    with pytest.raises(ValueError, match="not a verisparse export"):
        ac.sample_of("vnnlib/prop_3.vnnlib")


@pytest.mark.parametrize("status,seconds,want", [
    ("safe", 1.0, "safe"), ("safe-incomplete", 1.0, "safe"), ("safe-mip", 1.0, "safe"),
    ("safe (timed out)", 31.0, "safe"), ("unsafe-pgd", 0.1, "unsafe"), ("unsafe-bab", 9.0, "unsafe"),
    ("unsafe-mip (timed out)", 40.0, "unsafe"), ("unknown", 5.0, "unknown"), ("unknown", 30.0, "timeout"),
    ("timed out", 2.0, "timeout")])
def test_verdicts(status, seconds, want):
    assert ac.abcrown_verdict(status, seconds, timeout=30) == want


def test_compare_separates_conflicts_from_one_sided():
    ours = {1: "verified", 2: "falsified", 3: "unknown", 4: "verified", 5: "falsified", 6: "unknown"}
    theirs = {1: "unsafe", 2: "safe", 3: "safe", 4: "timeout", 5: "unsafe", 6: "unknown"}
    conflicts, one_sided = ac.compare(ours, theirs)
    assert conflicts == [(1, "verified", "unsafe"), (2, "falsified", "safe")]
    assert one_sided == [(3, "unknown", "safe"), (4, "verified", "timeout")]


def _report(ours_auto, theirs, capsys):
    samples = sorted(ours_auto)
    crown = {i: ("unknown", "crown", 0.1) for i in samples}
    auto = {i: (s, "bab", 1.0) for i, s in ours_auto.items()}
    code = ac.report(samples, crown, auto, {i: (v, v, 2.0) for i, v in theirs.items()})
    return code, capsys.readouterr().out


def test_report_exits_1_loudly_on_a_proof_against_a_counterexample(capsys):
    code, out = _report({5: "verified", 6: "verified"}, {5: "unsafe", 6: "safe"}, capsys)
    assert code == 1 and "SOUNDNESS DISAGREEMENT on 1 sample" in out and "sample 5: verisparse verified" in out
    code, out = _report({7: "falsified"}, {7: "safe"}, capsys)
    assert code == 1 and "sample 7: verisparse falsified, alpha-beta-CROWN safe" in out


def test_report_counts_and_passes_when_verdicts_agree(capsys):
    code, out = _report({1: "verified", 2: "falsified", 3: "unknown"}, {1: "safe", 2: "unsafe", 3: "safe"}, capsys)
    assert code == 0 and "disagreements (verified vs unsafe, falsified vs safe): none" in out
    assert "| verisparse --method auto | 1 | 1 | 1 | 0 | 3.0 | 1.00 | 1.00 |" in out
    assert "| alpha-beta-CROWN | 2 | 1 | 0 | 0 | 6.0 | 2.00 | 2.00 |" in out
    assert "settled by one tool only: 1" in out and "sample 3: verisparse unknown, alpha-beta-CROWN safe" in out


def test_select_takes_every_crown_unknown_then_spreads_the_rest():
    statuses = {i: "verified" for i in range(100)}
    statuses.update({7: "unknown", 50: "unknown", 3: "falsified", 60: "falsified", 90: "falsified"})
    chosen = ac.select(statuses, 10)
    assert {7, 50} <= set(chosen) and {3, 60, 90} <= set(chosen) and len(chosen) == 10
    assert sum(statuses[i] == "verified" for i in chosen) == 5


def test_all_takes_the_whole_pool_and_samples_win_over_both():
    statuses = {i: "verified" for i in range(200)}
    statuses.update({7: "unknown", 3: "falsified"})
    assert ac.choose(statuses, 10, every=True) == list(range(200))
    assert ac.choose(statuses, 10) == ac.select(statuses, 10)
    assert ac.choose(statuses, 10, samples="42,3", every=True) == [3, 42]


def test_missing_checkout_says_how_to_get_one(tmp_path, capsys):
    assert ac.main(["--abcrown", str(tmp_path / "nowhere")]) == 2  # not 1, the soundness verdict
    err = capsys.readouterr().err
    assert "not an alpha-beta-CROWN checkout" in err and "git clone --recursive" in err


def test_counterexample_recheck_reads_the_vnnlib_box_and_runs_onnx(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from verisparse.verify.vnnlib import property_text
    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])  # logits = the input
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "id",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = property_text(np.array([0.1, 0.0]), np.array([1.0, 0.9]), 0, 2)
    assert ac.read_property(text)[2] == [(1, 0)]
    assert ac.check_counterexample(session, text, np.array([0.2, 0.8])) is None
    assert "no unsafe row holds" in ac.check_counterexample(session, text, np.array([0.9, 0.1]))
    assert "outside" in ac.check_counterexample(session, text, np.array([0.05, 0.9]))
