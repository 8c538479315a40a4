"""Write the walkthrough notebooks in notebooks/ (without outputs), reproducibly.

    python scripts/make_notebooks.py            # rewrite notebooks/*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook is stale

One notebook per pathology (what it is, how it shows in the trace, the finding, the timeline
zoomed on it, the fix and the trace after it, side by side), plus reading_your_own_trace.ipynb.
They read the planted two-rank H200 traces in tests/data/gpu/ (point the paths at your own runs
under traces/ to read those instead). Notebooks run with the repository root as working dir.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "notebooks"

SETUP = '''\
import json, os, sys
from pathlib import Path

# Run from the repository root (Jupyter starts notebooks in notebooks/).
if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)
sys.path.insert(0, str(Path.cwd()))

from tracekit.pipeline import analyze_run
from tracekit.timeline import compare_figure, timeline_figure


def show_findings(findings):
    """One line per finding: severity, kind, rank, step, cost, title."""
    if not findings:
        print("no findings")
    for i, f in enumerate(findings, 1):
        step = "-" if f.step is None else f.step
        print(f"#{i} {f.severity:6} {f.kind:15} rank {f.rank} step {step:>3} "
              f"cost {f.cost_us / 1000:7.2f} ms  {f.title[:110]}")


def finding_json(f, width=100):
    """The finding as `analyze --json` prints it, long kernel names shortened."""
    def cut(v):
        if isinstance(v, str) and len(v) > width:
            return v[:width] + "..."
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cut(x) for x in v]
        return v
    print(json.dumps(cut(f.to_dict()), indent=1))
'''


@dataclass
class Pathology:
    slug: str
    title: str
    positive: str
    control: str
    what: str
    shows: str
    fix: str
    control_label: str


PATHOLOGIES = [
    Pathology(
        slug="select_backward",
        title="select_backward: indexing a parameter bank zero-fills all of it in backward",
        positive="tests/data/gpu/select_backward_index",
        control="tests/data/gpu/select_backward_unbind",
        control_label="bank.unbind(0) (fixed)",
        what=(
            "A model that keeps several layers' weights in one tensor (a *bank*, shape "
            "`[L, ...]`) and takes each layer's weight with `bank[i]` records an `aten::select` "
            "per layer. Its backward, `aten::select_backward`, allocates a zero tensor the size "
            "of the **whole bank**, fills it and copies one slice's gradient in; autograd then "
            "adds these full-size tensors. Per layer and step that is L times the memory "
            "traffic the slice needs, and the fill kernels occupy every SM."),
        shows=(
            "On the GPU stream: a `FillFunctor` kernel (grid 4096x128 for a 4x1024x1024 fp32 "
            "bank: 31 blocks per SM) plus a copy, once per `bank[i]`, during backward. Hover a "
            "fill kernel: its op chain ends in `aten::select_backward` and its line is the "
            "*forward* line that indexed the bank (the linker follows the fwdbwd flow back). "
            "Under torch.compile the same work hides in Inductor kernels named like "
            "`triton_poi_fused_add_select_backward_2` (see `select_backward_compiled`)."),
        fix=(
            "Take the per-layer views once per step with `bank.unbind(0)` (or views made once): "
            "autograd then accumulates per-slice gradients with no zero-fill. The control trace "
            "below does exactly that; the fill kernels are gone."),
    ),
    Pathology(
        slug="sm_contention",
        title="sm_contention: a full-GPU copy starves NCCL of SMs",
        positive="tests/data/gpu/sm_contention_eager",
        control="tests/data/gpu/sm_contention_triton",
        control_label="bounded Triton copy (fixed)",
        what=(
            "NCCL kernels need SMs too. When a kernel on another stream launches enough blocks "
            "to fill every SM many times over (an eager strided `embed.copy_(lm_head.T)`: 1143 "
            "blocks per SM) the collective running beside it gets fewer SMs, runs longer than "
            "its own baseline, and a collective queued behind it starts late."),
        shows=(
            "The NCCL stream's all_reduce (dotted pink outline, the *victim*) overlaps the "
            "elementwise copy kernels on the compute stream (black outline, the *culprit*); "
            "the same all_reduce alone, in other steps, is shorter. Hover the copy: grid "
            "150912, 1143 blocks/SM, op `aten::copy_`, and its source line."),
        fix=(
            "Do the copy with a kernel whose grid is bounded (here a 16-program Triton "
            "transpose-copy), or schedule it away from the collectives. The control trace "
            "does the same copies with the Triton kernel; NCCL keeps its speed."),
    ),
    Pathology(
        slug="comm_gap",
        title="comm_gap: the communication stream sits idle between collectives",
        positive="tests/data/gpu/comm_gap_late",
        control="tests/data/gpu/comm_gap_none",
        control_label="collectives issued back to back (fixed)",
        what=(
            "Collectives of one step should follow each other on the comm stream. A gap between "
            "them is time the interconnect is idle. tracekit classifies each gap: *late launch* "
            "(the CPU issued the next collective late: it says what the launching thread did "
            "meanwhile, with its line), *waiting on compute* (a stream dependency: it names the "
            "compute kernel the collective waited for) or *SM starvation* (see sm_contention)."),
        shows=(
            "On the NCCL lane, idle stretches (yellow band) between all_reduce kernels. Before "
            "the second all_reduce the CPU main thread is busy in `cpu:busy` (2 ms "
            "busy-wait); before the third, the compute stream runs a bf16 8192^3 matmul chain "
            "that the collective depends on."),
        fix=(
            "Issue collectives as soon as their inputs are ready (bucket earlier, move the CPU "
            "work after the issue), and order compute so that what the collective needs runs "
            "first. The control trace issues the same collectives back to back."),
    ),
    Pathology(
        slug="slow_step",
        title="slow_step: one step takes far longer than the others",
        positive="tests/data/gpu/slow_step_wait",
        control="tests/data/gpu/slow_step_none",
        control_label="no data wait (fixed)",
        what=(
            "Steps of a training loop do the same work, so a step much longer than the median "
            "spent its extra time on something the others did not: waiting for data "
            "(modded-nanogpt's step-6 stall while the first shard loads), recompiling, a host "
            "synchronisation, or a GPU left idle by a late CPU. tracekit compares the slow step "
            "with the median step, label by label, and names what holds the excess."),
        shows=(
            "Step 8's CPU span is ~150 ms long while others take ~2 ms; the `data:wait_shard` "
            "record_function label fills it, and the GPU lanes are empty meanwhile."),
        fix=(
            "Prefetch the data (load the next shard in a background thread) so the step never "
            "waits. The control trace runs the same loop without the wait."),
    ),
]


def pathology_notebook(p: Pathology) -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(f"# {p.title}\n\n## What it is\n\n{p.what}"),
        new_code_cell(SETUP),
        new_code_cell(f'POSITIVE = "{p.positive}"   # the trace with the problem\n'
                      f'CONTROL = "{p.control}"    # the same program, fixed\n'
                      f'KIND = "{p.slug}"'),
        new_markdown_cell("## The finding tracekit gives\n\n`analyze_run` loads every rank, "
                          "links kernels to ops and source lines, and runs the detectors "
                          "(`python cli.py analyze " + p.positive + "` prints the same)."),
        new_code_cell("run, findings = analyze_run(POSITIVE, progress=False)\n"
                      "show_findings(findings)\n"
                      "top = next(f for f in findings if f.kind == KIND)\n"
                      "finding_json(top)"),
        new_markdown_cell(f"## How it shows in the trace\n\n{p.shows}\n\nThe timeline below is "
                          "zoomed on the finding: the yellow band is its time window, black "
                          "outlines the culprit, dotted pink the kernel it slows. Drag to "
                          "zoom, double-click to see everything, hover bars for details."),
        new_code_cell("fig = timeline_figure(run, findings, rank=top.rank, focus=top)\n"
                      "fig.show()"),
        new_markdown_cell(f"## The fix, and the trace after it\n\n{p.fix}"),
        new_code_cell("fixed_run, fixed_findings = analyze_run(CONTROL, progress=False)\n"
                      "for label, found in (('before', findings), ('after', fixed_findings)):\n"
                      "    mine = [f for f in found if f.kind == KIND]\n"
                      "    cost = sum(f.cost_us for f in mine) / 1000\n"
                      "    print(f'{label:6}: {len(mine)} {KIND} finding(s), {cost:.2f} ms "
                      "estimated lost')\n"
                      "show_findings(fixed_findings)"),
        new_code_cell("step = top.step if top.step is not None else int(run.traces[0].steps"
                      "['step'].iloc[0])\n"
                      "before = timeline_figure(run, findings, rank=top.rank, step=step)\n"
                      "after = timeline_figure(fixed_run, fixed_findings, rank=top.rank, "
                      "step=step)\n"
                      f'compare_figure(before, after, ("{p.slug} (before)", '
                      f'"{p.control_label}")).show()'),
        new_markdown_cell("To share it: `python cli.py timeline " + p.positive +
                          " -o timeline.html` writes the same view as one offline HTML file "
                          "with a clickable findings table."),
    ]
    return notebook(cells)


def own_trace_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Reading your own trace\n\nSet `TRACE` to a run directory (rank files + "
            "optional manifest.json) or to one `.json`/`.json.gz` torch.profiler trace, then "
            "run all cells. Works for any PyTorch program; the trainer's extras (manifest, "
            "steps.jsonl, record_function labels) only add detail."),
        new_code_cell('TRACE = "tests/data/gpu/comm_gap_late"   # <- your trace or run dir'),
        new_code_cell(SETUP),
        new_markdown_cell("## What is in it\n\nRanks, profiled steps, and where GPU time goes "
                          "by kernel category and stream."),
        new_code_cell(
            "run, findings = analyze_run(TRACE, progress=False)\n"
            "for t in run.traces:\n"
            "    steps = t.steps['step'].tolist()\n"
            "    print(f'rank {t.rank}: {len(t.kernels)} kernels, {len(t.ops)} CPU ops, '\n"
            "          f'steps {steps}, SMs {t.num_sms}')\n"
            "    for w in t.warnings:\n"
            "        print('  note:', w)\n"
            "k = run.traces[0].kernels\n"
            "(k.groupby(['stream', 'category'])['dur'].agg(['count', 'sum'])\n"
            "  .rename(columns={'sum': 'gpu_us'}).round(1))"),
        new_markdown_cell("## Findings, worst first"),
        new_code_cell("show_findings(findings)"),
        new_markdown_cell("## The whole run\n\nEvery rank stacked on the shared clock; step "
                          "boundaries as shaded bands. Pass `rank=0`, `step=N` or "
                          "`window=\"START:END\"` (ms) to cut it down."),
        new_code_cell("timeline_figure(run, findings).show()"),
        new_markdown_cell("## The worst finding, up close"),
        new_code_cell("if findings:\n"
                      "    worst = findings[0]\n"
                      "    finding_json(worst)\n"
                      "    timeline_figure(run, findings, rank=worst.rank, focus=worst).show()"),
        new_markdown_cell("## Save it as one HTML file"),
        new_code_cell("import tempfile\n"
                      "from tracekit.timeline import write_timeline_html\n"
                      "out = write_timeline_html(run, findings, Path(tempfile.gettempdir()) / "
                      "'timeline.html')\n"
                      "print(out, f'{out.stat().st_size / 1e6:.1f} MB')"),
    ]
    return notebook(cells)


def notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # Fixed cell ids so regenerating gives identical files.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def all_notebooks() -> dict[str, nbformat.NotebookNode]:
    books = {f"{p.slug}.ipynb": pathology_notebook(p) for p in PATHOLOGIES}
    books["reading_your_own_trace.ipynb"] = own_trace_notebook()
    return books


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="Only compare with the committed notebooks.")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, nb in all_notebooks().items():
        text = nbformat.writes(nb) + "\n"
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"stale: {', '.join(stale)} (run python scripts/make_notebooks.py)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
