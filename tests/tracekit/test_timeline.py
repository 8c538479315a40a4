"""The Plotly timeline: lanes, clock alignment, step/window cuts, findings overlay, HTML page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")

from tests.browser.bench import synthetic_run
from tracekit.errors import UserError
from tracekit.finding import Cause, Culprit, Finding
from tracekit.pipeline import analyze_run, load
from tracekit.timeline import timeline_figure, write_timeline_html
from tracekit.timeline.bars import (
    LOD_CHUNK_BARS,
    LOD_MERGE_DIVISOR,
    LOD_MIN_BARS,
    HoverTable,
    bar_traces,
    merge_close,
)
from tracekit.timeline.figure import make_figure
from tracekit.timeline.lanes import build_timeline, parse_window
from tracekit.timeline.marks import finding_marks

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "tests" / "data" / "gpu"


@pytest.fixture(scope="module")
def comm_gap_run():
    return load(GPU / "comm_gap_late", progress=False)


@pytest.fixture(scope="module")
def contention():
    return analyze_run(GPU / "sm_contention_eager", progress=False)


def test_lanes_label_threads_and_streams_per_rank(comm_gap_run) -> None:
    tl = build_timeline(comm_gap_run)
    labels = tl.lanes["label"].tolist()
    for rank in (0, 1):
        assert f"rank {rank} · CPU main thread" in labels
        assert f"rank {rank} · stream 7 (compute)" in labels
        assert f"rank {rank} · stream 18 (NCCL)" in labels
    # Ranks are stacked: every lane of rank 1 is below (greater y than) every lane of rank 0.
    r0 = tl.lanes[tl.lanes["rank"] == 0]["y"]
    r1 = tl.lanes[tl.lanes["rank"] == 1]["y"]
    assert r1.min() > r0.max()
    # Each NCCL kernel is drawn on its rank's NCCL lane.
    nccl_y = dict(zip(tl.lanes["label"], tl.lanes["y"], strict=True))
    drawn = tl.bars[(tl.bars["category"] == "nccl") & (tl.bars["rank"] == 0)]
    assert len(drawn) == int(comm_gap_run.rank(0).kernels["is_nccl"].sum())
    assert (drawn["y"] == nccl_y["rank 0 · stream 18 (NCCL)"]).all()


def test_autograd_thread_gets_its_own_labelled_lane() -> None:
    run = load(GPU / "select_backward_compiled", progress=False)
    labels = build_timeline(run, rank=0).lanes["label"].tolist()
    assert labels[0] == "rank 0 · CPU main thread"
    assert any(label.startswith("rank 0 · CPU autograd thread") for label in labels)


def test_clock_alignment_keeps_rank_skew_and_step_alignment_removes_it(comm_gap_run) -> None:
    clock = build_timeline(comm_gap_run, align="clock")
    steps = clock.steps[(clock.steps["side"] == "cpu")]
    first = steps.sort_values("x0").groupby("rank")["x0"].first()
    raw = {t.rank: float(t.steps["cpu_ts"].min()) for t in comm_gap_run.traces}
    # Same host clock: the ranks' real skew is kept (to float precision) and 0 is the earliest.
    assert first.min() == pytest.approx(0.0, abs=1e-3)
    assert (first[1] - first[0]) * 1000 == pytest.approx(raw[1] - raw[0], abs=0.5)
    by_step = build_timeline(comm_gap_run, align="step")
    first = by_step.steps[by_step.steps["side"] == "cpu"].groupby("rank")["x0"].min()
    assert np.allclose(first.to_numpy(), 0.0, atol=1e-3)


def test_step_and_window_cut_the_bars(comm_gap_run) -> None:
    tl = build_timeline(comm_gap_run, step=8)
    assert set(tl.steps["step"]) == {8}
    for rank in (0, 1):
        s = comm_gap_run.rank(rank).steps.set_index("step").loc[8]
        lo = min(s["cpu_ts"], s["gpu_ts"])
        hi = max(s["cpu_end"], s["gpu_end"])
        mine = tl.bars[tl.bars["rank"] == rank]
        assert len(mine) > 0
        assert (mine["end"] >= lo).all() and (mine["ts"] <= hi).all()
    full = build_timeline(comm_gap_run)
    win = build_timeline(comm_gap_run, window="5:7.5")
    assert 0 < len(win.bars) < len(full.bars)
    assert (win.bars["x1"] >= 5).all() and (win.bars["x0"] <= 7.5).all()


@pytest.mark.parametrize("text", ["5", "a:b", "7:5"])
def test_bad_window_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError):
        parse_window(text)


def test_open_ended_window() -> None:
    assert parse_window(":4") == (-np.inf, 4.0)


def test_unknown_step_and_rank_are_user_errors(comm_gap_run) -> None:
    with pytest.raises(UserError, match="step 99"):
        build_timeline(comm_gap_run, step=99)
    with pytest.raises(UserError, match="rank 5"):
        build_timeline(comm_gap_run, rank=5)


def test_kernel_hover_names_op_and_source_line() -> None:
    run = load(GPU / "select_backward_index", progress=False)
    tl = build_timeline(run, rank=0)
    kernels = tl.bars[tl.bars["kind"] == "kernel"]
    fill = kernels[kernels["hover"].str.contains("aten::select_backward", regex=False)]
    assert len(fill) > 0
    text = fill["hover"].iloc[0]
    assert "blocks/SM" in text and "grid " in text and "{dur}" in text
    assert "line " in text and ".py:" in text
    # The headline names the functor, which a cut of the full template name never reaches.
    fills = kernels[kernels["name"].str.contains("FillFunctor", regex=False)]
    assert len(fills) > 0
    assert fills["hover"].str.startswith("<b>vectorized_elementwise_kernel[FillFunctor]</b>").all()


def test_bars_are_nan_separated_segments_one_trace_per_category() -> None:
    run = synthetic_run(6000, ranks=2)
    tl = build_timeline(run)
    traces = bar_traces(tl.bars)
    assert len(traces) == tl.bars["category"].nunique()
    total = sum(len(t.x) for t in traces)
    assert total == 3 * len(tl.bars)
    gemm = next(t for t in traces if t.legendgroup == "gemm")
    x = np.asarray(gemm.x, dtype=float)
    assert np.isnan(x[2::3]).all() and (x[1::3] >= x[0::3]).all()


def test_hover_table_stores_each_text_once() -> None:
    run = synthetic_run(10000, ranks=1, n_steps=5)
    tl = build_timeline(run)
    table = HoverTable()
    traces = bar_traces(tl.bars, table)
    assert len(table.texts) == tl.bars["hover"].nunique()
    assert len(table.texts) < len(tl.bars) / 3  # the steps repeat the same launches
    codes = np.concatenate([np.asarray(t.customdata)[0::3, 0] for t in traces])
    assert codes.max() < len(table.texts)


def test_merge_close_groups_each_lane_by_gap_and_furthest_end() -> None:
    # Lane 0: a long bar covering a short one, then a bar 0.5 after the long one ends (merged
    # at gap 1), then one 5 later (new). Lane 1's bar starts a group of its own.
    x0 = np.array([0.0, 1.0, 10.5, 16.0, 0.2])
    x1 = np.array([10.0, 2.0, 11.0, 17.0, 0.3])
    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    order, starts = merge_close(x0, x1, y, gap=1.0)
    groups = [sorted(order[a:b].tolist()) for a, b in zip(starts, [*starts[1:], len(order)],
                                                          strict=True)]
    assert groups == [[0, 1, 2], [3], [4]]


def decode(payload: dict, key: str, dtype: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(payload[key]), dtype=dtype)


def chunk_bars(payload: dict, block: dict) -> dict[str, np.ndarray]:
    """Every bar of one rank of one trace, decoded from its chunks in order."""
    x = f"<f{payload['x_bytes']}"
    cols = {"x0": x, "x1": x, "y": "<f4", "dur": "<f4", "code": "<i4"}
    return {k: np.concatenate([decode(c, k, t) for c in block["chunks"]]) for k, t in cols.items()}


def overview_segments(fig) -> np.ndarray:
    """Rows [x0, x1, y, text number, us, bar count] of every bar trace of a figure."""
    rows = []
    for t in fig.data:
        if t.meta != "bar-hover" or len(t.x) == 0:
            continue
        x = np.asarray(t.x, dtype=float).reshape(-1, 3)
        y = np.asarray(t.y, dtype=float).reshape(-1, 3)[:, 0]
        data = np.asarray(t.customdata, dtype=float).reshape(-1, 3, 3)[:, 0, :]
        rows.append(np.column_stack([x[:, :2], y, data]))
    return np.concatenate(rows)


def test_large_page_draws_an_overview_that_covers_every_bar() -> None:
    run = synthetic_run(40_000, ranks=2)
    tl = build_timeline(run)
    assert len(tl.bars) > LOD_MIN_BARS
    table = HoverTable()
    fig, _ = make_figure(run, tl, [], hover=table)
    seg = overview_segments(fig)
    assert len(seg) < len(tl.bars) / 4  # the overview is far smaller than the run
    assert fig.layout.xaxis.range is not None  # double-click resets to the whole run
    assert seg[:, 5].sum() == len(tl.bars)  # merged segments count every bar once
    # Every bar lies inside an overview segment of its own lane, whatever its category.
    for lane, lane_bars in tl.bars.groupby("y"):
        mine = seg[seg[:, 2] == np.float32(lane)]  # y is drawn as float32
        mine = mine[np.argsort(mine[:, 0])]
        at = np.searchsorted(mine[:, 0], lane_bars["x0"].to_numpy() + 1e-3, side="right") - 1
        assert (at >= 0).all()
        assert (mine[at, 1] >= lane_bars["x1"].to_numpy() - 1e-3).all()
    merged = seg[seg[:, 5] > 1]
    assert len(merged) and all("merged" in table.texts[int(c)] for c in merged[:, 3])
    single = seg[seg[:, 5] == 1]
    assert not any("merged" in table.texts[int(c)] for c in single[:, 3])


def test_overview_segment_takes_the_colour_of_the_category_with_most_time() -> None:
    # One lane: a 10 us GEMM, then three 1 us elementwise kernels, all under the gap apart.
    from tracekit.timeline.bars import overview

    bars = pd.DataFrame({"x0": [0.0, 0.0105, 0.0120, 0.0135], "x1": [0.010, 0.0115, 0.0130,
                                                                     0.0145],
                         "y": 3.0, "rank": 1,
                         "category": ["gemm", "elementwise", "elementwise", "elementwise"]})
    codes = {"gemm": (10, 11), "elementwise": (20, 21)}
    seg = overview(bars, np.array([10.0, 1.0, 1.0, 1.0]), np.arange(4), codes, gap=0.001)
    assert len(seg) == 1
    row = seg.iloc[0]
    assert row["category"] == "gemm" and row["n"] == 4 and row["dur"] == 13.0
    assert row["code"] == 11  # the mixed-categories text of GEMM
    assert (row["x0"], row["x1"], row["rank"]) == (0.0, 0.0145, 1)


def test_detail_keeps_every_bar_per_rank_in_bounded_chunks() -> None:
    run = synthetic_run(120_000, ranks=3)
    tl = build_timeline(run)
    table = HoverTable()
    fig, _ = make_figure(run, tl, [], hover=table)
    bars = [t for t in fig.data if t.meta == "bar-hover"]
    assert sum(d["n"] for d in table.detail) == len(tl.bars)
    for trace, payload in zip(bars, table.detail, strict=True):
        assert payload["axes"] == ["x", "y"]
        cat = trace.legendgroup
        assert [b["rank"] for b in payload["blocks"]] == sorted(
            tl.bars.loc[tl.bars["category"] == cat, "rank"].unique())
        for block in payload["blocks"]:
            mine = tl.bars[(tl.bars["category"] == cat) & (tl.bars["rank"] == block["rank"])]
            mine = mine.sort_values("x0", kind="stable")
            got = chunk_bars(payload, block)
            assert len(got["x0"]) == block["n"] == len(mine)
            assert np.allclose(got["x0"], mine["x0"], atol=1e-4) and (np.diff(got["x0"]) >= 0).all()
            assert [table.texts[c] for c in got["code"]] == mine["hover"].tolist()
            assert np.allclose(got["dur"], mine["end"] - mine["ts"], rtol=1e-6)
            assert set(got["y"]) == set(mine["y"].astype(np.float32))
            assert block["y0"] == mine["y"].min() and block["y1"] == mine["y"].max()
            # Chunks: at most LOD_CHUNK_BARS bars, each with the span the page searches by.
            assert len(block["chunks"]) > 1 or len(mine) <= LOD_CHUNK_BARS
            starts = np.cumsum([0] + [c["n"] for c in block["chunks"]])
            for c, a in zip(block["chunks"], starts, strict=False):
                assert 0 < c["n"] <= LOD_CHUNK_BARS
                assert c["lo"] == got["x0"][a]
                assert c["hi"] == got["x1"][a:a + c["n"]].max()
            assert block["max_len"] >= (got["x1"] - got["x0"]).max()
        # The rank's overview slice holds this trace's overview segments of that rank's lanes.
        ov = {k: decode(payload["overview"], k, t) for k, t in (("x0", "<f8"), ("y", "<f4"))}
        for block in payload["blocks"]:
            a, b = block["overview"]
            ys = ov["y"][a:b]
            assert ((ys >= block["y0"]) & (ys <= block["y1"])).all()
        assert sum(b["overview"][1] - b["overview"][0] for b in payload["blocks"]) == \
            len(np.asarray(trace.x)) // 3


def test_overview_size_is_bounded_by_lanes_not_by_bars() -> None:
    """The figure Plotly parses on load: at most LOD_MERGE_DIVISOR + 1 segments per lane (the
    gaps kept are over 1/LOD_MERGE_DIVISOR of the span each), whatever the run's length."""
    run = synthetic_run(300_000, ranks=2)
    tl = build_timeline(run)
    fig, _ = make_figure(run, tl, [], hover=HoverTable())
    seg = overview_segments(fig)
    bound = LOD_MERGE_DIVISOR + 1
    assert tl.bars.groupby("y").size().min() > bound  # drawn bar by bar, a lane would exceed it
    assert pd.Series(seg[:, 2]).value_counts().max() <= bound
    # Its JSON: page furniture plus at most 100 bytes a segment (3 vertices of x, y and
    # 3 customdata numbers, base64 float32/64).
    assert len(fig.to_json()) <= 100_000 + 100 * len(tl.lanes) * bound


def test_small_page_has_no_level_of_detail(tmp_path: Path) -> None:
    run = synthetic_run(6000, ranks=2)
    table = HoverTable()
    fig, _ = make_figure(run, build_timeline(run), [], hover=table)
    assert table.detail == [] and fig.layout.xaxis.range is None
    out = write_timeline_html(run, [], tmp_path / "small.html")
    assert "tracekit-lod" not in out.read_text()


def test_findings_outline_culprit_and_victim(contention) -> None:
    run, findings = contention
    sm = [f for f in findings if f.kind == "sm_contention"]
    assert sm, "the planted sm_contention run should give an sm_contention finding"
    tl = build_timeline(run)
    marks = finding_marks(tl, sm)
    assert len(marks) == len(sm)
    for mark in marks:
        assert len(mark.culprits) > 0
        assert (mark.culprits["name"] == mark.finding.culprit.kernel).all()
        assert len(mark.victims) > 0 and mark.victims["is_nccl"].all()
    fig, marks = make_figure(run, tl, sm)
    titles = [a.text for a in fig.layout.annotations if a.text and "sm_contention" in a.text]
    assert titles and "costs" in titles[0]
    outlines = [s for s in fig.layout.shapes if s.type == "rect" and s.line.color == "#000000"]
    assert len(outlines) >= len(marks)


def test_merged_finding_outside_the_step_moves_to_its_occurrence(comm_gap_run) -> None:
    k = comm_gap_run.rank(0).kernels
    gemm = k[k["category"] == "gemm"].iloc[0]
    f = Finding(kind="comm_gap", severity="high", rank=0, step=6, start_us=float(gemm["ts"]),
                dur_us=float(gemm["dur"]), cost_us=10.0, count=5, title="t",
                culprit=Culprit(kernel=str(gemm["name"]), stream=int(gemm["stream"])),
                cause=Cause())
    tl = build_timeline(comm_gap_run, step=9)
    (mark,) = finding_marks(tl, [f])
    s9 = comm_gap_run.rank(0).steps.set_index("step").loc[9]
    assert (mark.culprits["ts"] >= s9["cpu_ts"]).all()


def test_figure_for_notebooks_has_text_hover(comm_gap_run) -> None:
    fig = timeline_figure(comm_gap_run, rank=0, step=7)
    texts = [t for t in fig.data if t.text is not None]
    assert texts and any("us" in str(x) for x in texts[0].text if x)


def test_html_page_is_self_contained_with_findings_table(contention, tmp_path: Path) -> None:
    run, findings = contention
    out = write_timeline_html(run, findings, tmp_path / "t.html")
    text = out.read_text()
    assert "<script src=" not in text  # plotly.js inlined: opens offline
    assert "rank 0 · stream 17 (NCCL)" in text
    assert text.count("class='finding'") == len(findings)
    assert "Plotly.relayout" in text and "tracekit-hover" in text


def test_html_output_refuses_trace_names_and_directories(comm_gap_run, tmp_path: Path) -> None:
    with pytest.raises(UserError):
        write_timeline_html(comm_gap_run, [], tmp_path / "rank0.pt.trace.json")
    with pytest.raises(UserError):
        write_timeline_html(comm_gap_run, [], tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "timeline", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_writes_html_and_rejects_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "cg.html"
    ok = run_cli(str(GPU / "comm_gap_late"), "--rank", "0", "--step", "8", "-o", str(out))
    assert ok.returncode == 0, ok.stderr
    assert out.stat().st_size > 1_000_000  # plotly.js is embedded
    for bad in (["--rank", "x"], ["--window", "3"], ["--step", "99"]):
        res = run_cli(str(GPU / "comm_gap_late"), *bad, "-o", str(tmp_path / "x.html"))
        assert res.returncode == 2
        assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr
