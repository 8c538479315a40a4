"""`cli.py analyze`: the --json contract, --fail-on exit codes, renderers, and bad input."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.pipeline import analyze_run, analyze_run_and_print
from tracekit.report import render_json, render_markdown

REPO = Path(__file__).resolve().parents[2]
import cli as cli_module  # noqa: E402
from tests.planted import EXTERNAL  # noqa: E402
from tests.synth import SynthTrace, write_run  # noqa: E402

FINDING_KEYS = {"kind", "severity", "rank", "step", "start_us", "dur_us", "cost_us", "count",
                "title", "culprit", "cause", "evidence", "suggestion"}
CULPRIT_KEYS = {"kernel", "stream", "grid", "blocks_per_sm"}
CAUSE_KEYS = {"op", "op_stack", "source", "ordering"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "analyze", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def cli_here(args: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """cli.main() in this process (fast): exit code, stdout, stderr."""
    if not cli_module.app.registered_commands:
        cli_module._register_commands()
    monkeypatch.setattr(sys, "argv", ["cli.py", "analyze", *args])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def slow_run(tmp_path: Path, slow: bool = True) -> Path:
    """Five 2 ms steps; step 3 waits 50 ms on data when `slow`."""
    t = SynthTrace()
    cpu = 0.0
    for step in range(1, 6):
        extra = 50_000.0 if slow and step == 3 else 0.0
        t.step(step, cpu, 2000 + extra, cpu + 300 + extra, 1700)
        if extra:
            t.annotation("data:wait_shard", cpu + 100, extra)
        op = t.cpu_op("aten::mm", cpu + 200 + extra, 100)
        t.launch_kernel("sm90_xmma_gemm_f32f32", cpu + 210 + extra, cpu + 300 + extra, 1600,
                        external_id=op, grid=(132, 1, 1))
        cpu += 2000 + extra
    return write_run(tmp_path / ("slow" if slow else "even"), [t])


def test_json_contract_and_fail_on(tmp_path: Path) -> None:
    run_dir = slow_run(tmp_path)
    result = cli(str(run_dir), "--json", "--fail-on", "high")
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)  # stdout is only the JSON list
    assert isinstance(findings, list) and findings
    for f in findings:
        assert set(f) == FINDING_KEYS
        assert set(f["culprit"]) == CULPRIT_KEYS and set(f["cause"]) == CAUSE_KEYS
        assert f["severity"] in ("high", "medium", "low")
        assert isinstance(f["start_us"], float) and isinstance(f["cost_us"], float)
        if f["cause"]["source"] is not None:
            assert {"file", "line", "function"} <= set(f["cause"]["source"])
    slow = [f for f in findings if f["kind"] == "slow_step"]
    assert [f["step"] for f in slow] == [3]
    assert cli(str(run_dir), "--json", "--kinds", "slow_step", "--min-cost-us",
               "1e9").stdout.strip() == "[]"


def test_fail_on_quiet_run_and_terminal_report(tmp_path: Path, capsys, monkeypatch) -> None:
    run_dir = slow_run(tmp_path, slow=False)
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step,select_backward",
                               "--fail-on", "low", "--markdown", str(tmp_path / "report.md")],
                              capsys, monkeypatch)
    assert code == 0, err
    assert "No findings" in out
    assert (tmp_path / "report.md").read_text().startswith("# tracekit findings")


def test_terminal_report_and_markdown_name_the_cause(tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    run_dir = slow_run(tmp_path)
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step", "--kinds",
                               "select_backward", "--markdown", str(tmp_path / "r.md")],
                              capsys, monkeypatch)
    assert code == 0, err
    assert "slow_step" in out and "data:wait_shard" in out
    markdown = (tmp_path / "r.md").read_text()
    assert "## slow_step" in markdown and "| high | 0 | 3 |" in markdown


def test_markdown_into_new_directory_or_unwritable_target(tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    """--markdown creates missing parent directories (as --html does); a target under a
    regular file is one error line, not a traceback after the analysis."""
    run_dir = slow_run(tmp_path, slow=False)
    nested = tmp_path / "reports" / "today" / "r.md"
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step", "--markdown", str(nested)],
                              capsys, monkeypatch)
    assert code == 0, err
    assert nested.read_text().startswith("# tracekit findings")
    blocker = tmp_path / "plain_file"
    blocker.write_text("not a directory")
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step", "--markdown",
                               str(blocker / "r.md")], capsys, monkeypatch)
    assert code == 2
    assert err.startswith("error: --markdown") and "Traceback" not in err + out
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("args, message", [
    (["--kinds", "nope"], "unknown detector"),
    (["--rank", "7"], "rank 7"),
    (["--fail-on", "severe"], "--fail-on"),
])
def test_bad_options(tmp_path: Path, args: list[str], message: str, capsys, monkeypatch) -> None:
    code, out, err = cli_here([str(slow_run(tmp_path)), *args], capsys, monkeypatch)
    assert code != 0
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err + out


def test_breakdown_prints_hta_tables_or_one_error(capsys, monkeypatch) -> None:
    run_dir = REPO / "tests" / "data" / "gpu" / "slow_step_wait"
    if not run_dir.is_dir():
        pytest.skip("planted traces not recorded")
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step", "--breakdown"], capsys,
                              monkeypatch)
    try:
        import hta  # noqa: F401
    except ImportError:  # the GPU machines have no HTA: one error line, no traceback
        assert code == 2 and err.startswith("error:") and "--breakdown" in err
        return
    assert code == 0, err
    assert "HTA temporal" in out and "slow_step" in out


def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = gzip.compress(json.dumps(SynthTrace().to_dict()).encode())
    files = {
        "empty.json": b"",
        "truncated.json.gz": good[: len(good) // 2],
        "invalid.json": b'{"traceEvents": [',
        "not_a_trace.json": b'{"hello": [1, 2, 3]}',
    }
    paths = {"missing": tmp_path / "does-not-exist"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = tmp_path / name
    (tmp_path / "no_traces").mkdir()
    (tmp_path / "no_traces" / "notes.txt").write_text("nothing here")
    paths["no_traces"] = tmp_path / "no_traces"
    return paths


def test_bad_input_is_one_error_line(tmp_path: Path, capsys, monkeypatch) -> None:
    for name, path in bad_inputs(tmp_path).items():
        code, out, err = cli_here([str(path), "--json"], capsys, monkeypatch)
        assert code != 0, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert out == "", name
    # and once through a real process, where a traceback would show on stderr
    result = cli(str(tmp_path / "empty.json"))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in EXTERNAL.glob("*.json.gz")))
def test_external_traces_analyse(name: str) -> None:
    run, findings = analyze_run(EXTERNAL / name, progress=False)
    assert run.traces
    assert isinstance(json.loads(render_json(findings)), list)
    assert render_markdown(run, findings).startswith("# tracekit findings")


def test_analyze_run_and_print_writes_findings(tmp_path: Path, capsys) -> None:
    run_dir = slow_run(tmp_path)
    analyze_run_and_print(run_dir)
    saved = json.loads((run_dir / "findings.json").read_text())
    assert any(f["kind"] == "slow_step" and f["step"] == 3 for f in saved)
    assert "slow_step" in capsys.readouterr().out
    (run_dir / "findings.json").write_text('{"not": "ours"}')
    analyze_run_and_print(run_dir)  # a findings.json that is not a list is left alone
    assert json.loads((run_dir / "findings.json").read_text()) == {"not": "ours"}


def test_a_mostly_idle_step_is_reported_with_where_its_idle_went(tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    """Even with no finding selected, the report's step accounting lists the step that is 96%
    idle and says the input pipeline (data:wait_shard) holds it; --accounting writes it."""
    run_dir = slow_run(tmp_path)
    target = tmp_path / "out" / "accounting.json"
    code, out, err = cli_here([str(run_dir), "--kinds", "select_backward",
                               "--accounting", str(target)], capsys, monkeypatch)
    assert code == 0, err
    assert "Step accounting" in out and "No findings" in out
    [line] = [x for x in out.splitlines() if x.strip().startswith("rank 0 step 3:")]
    assert "input pipeline" in line
    saved = json.loads(target.read_text())
    assert saved["schema_version"] == 1
    step3 = [s for s in saved["steps"] if s["step"] == 3][0]
    assert step3["idle_by_cause_us"]["input"] == pytest.approx(50_000.0, rel=0.01)
    assert step3["wall_us"] == pytest.approx(step3["compute_us"] + step3["exposed_comm_us"]
                                             + step3["idle_us"])


def test_budgeted_costs_show_per_step_and_as_a_share_of_the_step(tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    run_dir = slow_run(tmp_path)
    code, out, err = cli_here([str(run_dir), "--kinds", "slow_step"], capsys, monkeypatch)
    assert code == 0, err
    text = " ".join(out.split())  # narrow terminals wrap the finding's line
    assert re.search(r"cost \S+ ms \(\S+ ms/step, [\d.]+% of step\) x1 step 3 took", text)


def test_the_idle_summary_names_lines_as_findings_do(capsys, monkeypatch) -> None:
    # The MI300X trace's idle pieces come from frames with and without lines (concatenated:
    # their line column was float, printed "train_ddp.py:82.0"); 82 is a def line there.
    trace = Path(__file__).resolve().parents[1] / "data" / "external" / \
        "resnet_mi300x_rank0of8.json.gz"
    code, out, err = cli_here([str(trace), "--kinds", "gpu_idle"], capsys, monkeypatch)
    assert code == 0, err
    summary = [line for line in out.splitlines() if line.startswith("    Python/CPU work:")]
    assert summary and all("train_ddp.py:82~:" in line for line in summary)
    assert ".0:" not in out


def test_exposed_communication_outside_every_step_is_not_called_per_step(capsys,
                                                                          monkeypatch) -> None:
    # The MI300X trace's last five all-reduces run after its last profiled step.
    trace = Path(__file__).resolve().parents[1] / "data" / "external" / \
        "resnet_mi300x_rank0of8.json.gz"
    code, out, err = cli_here([str(trace), "--kinds", "exposed_comm"], capsys, monkeypatch)
    assert code == 0, err
    text = " ".join(out.split())
    assert "step - cost 20.2 ms" in text
    assert "nothing computing beside it: 20.25 ms outside the profiled steps x5" in text
    assert "20.25 ms per step" not in text
