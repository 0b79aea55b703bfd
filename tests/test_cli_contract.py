"""The exit-code contract of every command: 0 success, 1 a negative verdict, 2 bad input or
environment (one line, no traceback), 3 a bug (one line; --debug shows the traceback)."""
import pytest
from click.testing import CliRunner

from verisparse.cli import main


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from conftest import trained_digits_export
    return trained_digits_export(tmp_path_factory.mktemp("cli") / "run", "mlp_2layer", 0.02, 2)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output
    return lines[-1]


def test_output_paths_under_a_file_are_one_line_for_every_command(small_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    under = blocker / "sub"
    cases = [("train", "--dataset", "digits", "--arch", "mlp_2layer", "--epochs", "1", "--quiet", "--out", under),
             ("verify", small_run / "model.onnx", "--n", "5", "--method", "ibp", "--report", under / "cert.json"),
             ("verify", small_run / "model.onnx", "--n", "5", "--method", "ibp", "--junit", under / "v.xml"),
             ("verify", small_run / "model.onnx", "--n", "5", "--method", "ibp", "--export-vnnlib", under),
             ("firmware", small_run, "--out", under)]
    for args in cases:
        line = _one_line_exit_2(_run(*args))
        assert "a_file" in line or "directory" in line.lower(), (args, line)
    assert blocker.read_text() == "not a folder"  # nothing lost


def test_a_bug_is_one_line_exit_3_and_debug_shows_the_traceback(monkeypatch, small_run):
    import verisparse.exporter.export as export_mod

    def broken(*a, **k):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setattr(export_mod, "export_run", broken)
    r = _run("export", small_run)
    assert r.exit_code == 3
    assert r.output.strip().splitlines()[-1].startswith("internal error: ZeroDivisionError: simulated bug")
    r = _run("--debug", "export", small_run)
    assert isinstance(r.exception, ZeroDivisionError)  # raised, not turned into a line


def test_verdicts_are_exit_1_not_2(small_run):
    r = _run("verify", small_run / "model.onnx", "--n", "20", "--method", "ibp", "--eps", "1.0", "--min-vra", "0.5")
    assert r.exit_code == 1 and "FAIL" in r.output


def test_non_finite_numbers_are_refused_before_any_work(small_run):
    for opt in ("--time-limit", "--time-budget", "--max-work", "--check-time-limit"):
        for bad in ("nan", "inf", "-1"):
            r = _run("verify", small_run / "model.onnx", "--n", "5", opt, bad)
            assert r.exit_code == 2 and "finite positive" in r.output, (opt, bad, r.output)
