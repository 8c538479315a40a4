"""`cli.py train`, `cli.py profile` and `cli.py data synth`.

Everything the user can get wrong is checked here, in the launching process, before any rank
starts: a bad request ends in one `error:` line rather than a torchrun failure per rank.
Heavy imports (torch) happen inside the commands so that `cli.py --help` stays fast.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from trainer.errors import TrainerError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SYNTH_SEED = 0  # the trainer's own synthetic shards: one seed, so every run shares the cache

# Options shared by `train` and `profile` (typer reads them from the signatures below).
Preset = Annotated[str | None, typer.Option(
    help="tiny | small | speedrun (default: tiny on CPU, small on GPU)", show_default=False)]
Pathologies = Annotated[str | None, typer.Option(
    help="all: turn every pathology switch on; none: all off (the default)")]
BankAccess = Annotated[str | None, typer.Option(help="unbind (fast) | index (select_backward)")]
TieCopy = Annotated[str | None, typer.Option(help="triton (fast) | eager (SM-saturating copies)")]
WorkOrder = Annotated[str | None, typer.Option(
    help="small-first (fast) | big-first | last-first (opens comm gaps)")]
Prefetch = Annotated[bool | None, typer.Option(
    "--prefetch/--no-prefetch", help="read the next shard in the background (default on)",
    show_default=False)]
LoaderWaitStep = Annotated[int | None, typer.Option(
    help="step at which the loader switches to the next shard (a full read without prefetch)")]
NumSteps = Annotated[int | None, typer.Option(
    help="training steps (default: the preset's for train; END+1 for profile)",
    show_default=False)]
SeqLen = Annotated[int | None, typer.Option(help="tokens per sequence")]
BatchSize = Annotated[int | None, typer.Option(help="sequences per rank per step")]
Compile = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="torch.compile the model (default: on GPU, off on CPU)",
    show_default=False)]
Data = Annotated[str | None, typer.Option(
    help="glob of fineweb/llm.c .bin shards (default: synthetic shards made locally)",
    show_default=False)]
Seed = Annotated[int | None, typer.Option(help="model init seed")]
Gpus = Annotated[int | None, typer.Option(
    help="GPUs per node, one process each (torchrun); 0 = one CPU process "
    "(default: 1 if a GPU exists, else 0)", show_default=False)]
CpuProcs = Annotated[int | None, typer.Option(help="CPU processes (gloo, through torchrun)")]
Nnodes = Annotated[int, typer.Option(help="nodes in a multi-node run")]
NodeRank = Annotated[int, typer.Option(help="this node's rank (0 .. nnodes-1)")]
RdzvEndpoint = Annotated[str | None, typer.Option(help="HOST:PORT of node 0 for multi-node")]
Name = Annotated[str | None, typer.Option(
    help="run name: the directory under --out-dir (default: timestamped)", show_default=False)]
OutDir = Annotated[Path, typer.Option(help="where run directories go")]


@dataclass(frozen=True)
class JobOptions:
    """The shared options of `train` and `profile`, as given (None = not given)."""

    preset: str | None
    pathologies: str | None
    bank_access: str | None
    tie_copy: str | None
    work_order: str | None
    prefetch: bool | None
    loader_wait_step: int | None
    num_steps: int | None
    seq_len: int | None
    batch_size: int | None
    compile: bool | None
    data: str | None
    seed: int | None
    gpus: int | None
    cpu_procs: int | None
    nnodes: int
    node_rank: int
    rdzv_endpoint: str | None
    name: str | None
    out_dir: Path


def job_options(
    preset: Preset = None, pathologies: Pathologies = None, bank_access: BankAccess = None,
    tie_copy: TieCopy = None, work_order: WorkOrder = None, prefetch: Prefetch = None,
    loader_wait_step: LoaderWaitStep = None, num_steps: NumSteps = None, seq_len: SeqLen = None,
    batch_size: BatchSize = None, compile: Compile = None, data: Data = None, seed: Seed = None,
    gpus: Gpus = None, cpu_procs: CpuProcs = None, nnodes: Nnodes = 1, node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = None, name: Name = None, out_dir: OutDir = Path("traces"),
) -> JobOptions:
    """The options `train` and `profile` share; its signature is theirs (see `with_job_options`)."""
    return JobOptions(**locals())


def with_job_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(own options..., **job)` the shared options after its own: typer reads
    the signature set here, and `job` holds the shared ones (`job_options(**job)`)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params = own + list(inspect.signature(job_options, eval_str=True).parameters.values())
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


@with_job_options
def train_command(**job: Any) -> None:
    """Train without the profiler; writes <out-dir>/<run>/manifest.json and steps.jsonl."""
    run_job(job_options(**job), kind="train", steps=None, with_stack=True, record_shapes=True)


@with_job_options
def profile_command(
    steps: Annotated[str, typer.Option(
        help="steps to record on every rank, START-END inclusive; START >= 1")] = "6-10",
    stack: Annotated[bool, typer.Option(
        "--stack/--no-stack", help="record Python stacks (with_stack)")] = True,
    shapes: Annotated[bool, typer.Option(
        "--shapes/--no-shapes", help="record input shapes (record_shapes)")] = True,
    analyze: Annotated[bool, typer.Option(
        "--analyze/--no-analyze", help="run tracekit's analysis on the traces afterwards")] = True,
    script: Annotated[Path | None, typer.Option(
        help="profile this training script instead of the bundled trainer (arguments for it "
        "go after --)", show_default=False)] = None,
    nproc: Annotated[int, typer.Option(help="--script: processes (torchrun), one per rank")] = 1,
    step_fn: Annotated[str | None, typer.Option(
        help="--script: module:function (or module:Class.method) whose return ends a training "
        "step, for optimizers that are not torch.optim ones (default: torch.optim's step "
        "hook)", show_default=False)] = None,
    record: Annotated[str, typer.Option(
        help="--script: stacks (stacks + shapes) | timing (neither: low overhead) | split "
        "(timing window, then a window with stacks for attribution)")] = "stacks",
    script_args: Annotated[list[str] | None, typer.Argument(
        help="arguments for --script, after --", show_default=False)] = None,
    **job: Any,
) -> None:
    """Train up to the last profiled step and record torch.profiler traces of those steps.

    Writes <out-dir>/<run>/rank{R}.pt.trace.json.gz per rank, manifest.json and steps.jsonl.
    With --script, runs that script instead (unedited; the profiler advances at every
    optimizer step) and writes the same files plus source/, a copy of its code.
    """
    if script is not None:
        run_dir = profile_given_script(job, script, script_args or [], steps, nproc, step_fn,
                                       record, stack, shapes)
    else:
        if script_args or nproc != 1 or step_fn is not None or record != "stacks":
            raise TrainerError("--nproc, --step-fn, --record and arguments after -- go with "
                               "--script")
        run_dir = run_job(job_options(**job), kind="profile", steps=steps, with_stack=stack,
                          record_shapes=shapes)
    if run_dir is None:
        return
    keep_compiled_sources(run_dir)
    if analyze:
        after_profile(run_dir)
    else:
        print(f"traces: {run_dir}")


def synth_command(
    out: Annotated[Path, typer.Option(help="directory to write the shards into")],
    shards: Annotated[int, typer.Option(help="number of shards")] = 2,
    tokens: Annotated[int, typer.Option(help="tokens per shard")] = 1_000_000,
    vocab_size: Annotated[int, typer.Option(help="token ids are < vocab size (<= 65536)")] = 50304,
    seed: Annotated[int, typer.Option(help="generator seed (same seed, same shards)")] = 0,
) -> None:
    """Write synthetic shards in the fineweb/llm.c format (a learnable successor process)."""
    # The trainer's modules (torch) load only when a command runs: `cli.py --help` stays fast.
    from trainer.data import MAX_VOCAB, write_synthetic_shards

    if shards < 1 or tokens < 2:
        raise TrainerError("--shards must be >= 1 and --tokens >= 2")
    if not 2 <= vocab_size <= MAX_VOCAB:  # before any directory is created
        raise TrainerError(f"--vocab-size must be in 2..{MAX_VOCAB}, not {vocab_size}")
    paths = write_synthetic_shards(out, [tokens] * shards, vocab_size, seed)
    print(f"wrote {len(paths)} shards of {tokens:,} tokens: {out}/synth_*.bin")


def profile_given_script(job: dict[str, Any], script: Path, args: list[str], steps: str,
                         nproc: int, step_fn: str | None, record: str, stack: bool,
                         shapes: bool) -> Path:
    """`profile --script`: the trainer's own options do not apply to someone else's script."""
    from trainer.script_run import profile_script

    defaults = job_options()
    stray = [k for k, v in job.items()
             if k not in ("name", "out_dir") and v != getattr(defaults, k)]
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        raise TrainerError(f"{flags}: options of the bundled trainer, not of --script "
                           "(pass the script's own options after --)")

    def make_run_dir(stem: str) -> Path:
        run_dir = pick_run_dir(job.get("out_dir", defaults.out_dir), job.get("name"),
                               "profile", stem)
        create_run_dir(run_dir, shared_ok=False)
        return run_dir

    return profile_script(script, args, steps, nproc, step_fn, record, stack, shapes,
                          make_run_dir)


def keep_compiled_sources(run_dir: Path) -> None:
    """Keep what torch.compile recorded about its kernels' source lines as
    <run>/compiled_kernels.json, then remove the run's own structured logs."""
    import shutil

    from trainer.launch import TORCH_TRACE_DIR, torch_trace_dir

    try:  # tracekit is optional beside the trainer (GPU machines may train only)
        from tracekit.pipeline import save_compiled_kernels
    except ImportError:
        save_compiled_kernels = None
    if save_compiled_kernels is not None:
        save_compiled_kernels(torch_trace_dir(run_dir), run_dir)
    shutil.rmtree(run_dir / TORCH_TRACE_DIR, ignore_errors=True)


def after_profile(run_dir: Path) -> None:
    """Hand a finished profile run to tracekit's analysis when it is installed."""
    print(f"traces: {run_dir}")
    try:  # tracekit is optional beside the trainer (GPU machines may train only)
        from tracekit.pipeline import analyze_run_and_print
    except ImportError:
        return
    analyze_run_and_print(run_dir)


# --------------------------------------------------------------------------------------------
# The shared job


def run_job(
    options: JobOptions, kind: str, steps: str | None, with_stack: bool, record_shapes: bool,
) -> Path | None:
    """Validate, prepare data, create the run directory, launch. Returns the run directory on
    the node that holds rank 0's outputs (None on other nodes of a multi-node run)."""
    # The trainer's modules (torch) load only when a command runs: `cli.py --help` stays fast.
    from trainer.config import make_config
    from trainer.data import check_token_range, ensure_synthetic_shards, resolve_shards
    from trainer.launch import launch, plan_launch
    from trainer.model import param_shapes
    from trainer.optim import check_even_sharding
    from trainer.profiling import ProfileSpec, check_within_training, parse_steps
    from trainer.train import RunSpec, now_iso

    profile = None
    if steps is not None:
        start, end = parse_steps(steps)
        profile = ProfileSpec(start, end, with_stack=with_stack, record_shapes=record_shapes)
        if options.num_steps is not None:
            check_within_training(start, end, options.num_steps)
    plan = plan_launch(options.gpus, options.cpu_procs, options.nnodes, options.node_rank,
                       options.rdzv_endpoint)
    on_gpu = plan.device == "cuda"
    preset = options.preset or ("small" if on_gpu else "tiny")
    num_steps = options.num_steps
    if profile is not None and num_steps is None:
        num_steps = profile.end + 1  # train exactly far enough to record the last step
    # None keeps the preset's choice (compiled on GPU presets); eager on CPU unless asked.
    compile_model = options.compile if options.compile is not None else (None if on_gpu else False)
    config = make_config(
        preset, options.pathologies, bank_access=options.bank_access,
        tie_copy=options.tie_copy, work_order=options.work_order, prefetch=options.prefetch,
        loader_wait_step=options.loader_wait_step, num_steps=num_steps,
        seq_len=options.seq_len, batch_size=options.batch_size, compile=compile_model,
        seed=options.seed,
    )
    if config.seq_len < 1 or config.batch_size < 1:
        raise TrainerError("--seq-len and --batch-size must be at least 1")
    check_even_sharding(param_shapes(config, plan.world_size), plan.world_size)
    if options.nnodes > 1 and options.name is None:
        raise TrainerError("a multi-node run needs --name, the same on every node")
    run_dir = pick_run_dir(options.out_dir, options.name, kind, preset)
    if options.node_rank == 0 and run_dir.exists():  # say so before minutes of synthetic data
        raise TrainerError(already_exists(run_dir))

    if options.data is not None:
        shards = resolve_shards(options.data)
        check_token_range(shards[0], config.vocab_size)
    else:
        # A switch step past the end of training never happens: size shard 0 for the steps
        # that run, not for a --loader-wait-step of a million.
        switch_step = min(config.loader_wait_step, config.num_steps)
        shards = ensure_synthetic_shards(config.vocab_size, config.batch_size, config.seq_len,
                                         switch_step, seed=SYNTH_SEED)
    check_shards_fit(shards, config.batch_size * config.seq_len * plan.world_size,
                     config.vocab_size)

    create_run_dir(run_dir, shared_ok=options.node_rank > 0)
    spec = RunSpec(
        name=run_dir.name, run_dir=str(run_dir.resolve()), config=config.to_dict(),
        device=plan.device, shards=[str(s.path.resolve()) for s in shards],
        synthetic_data=options.data is None, command=list(sys.argv), start_time=now_iso(),
        profile=asdict(profile) if profile is not None else None, nnodes=plan.nnodes,
    )
    launch(plan, spec.to_json(), run_dir if profile is not None else None)
    return run_dir if options.node_rank == 0 else None


def check_shards_fit(shards: list[Any], global_batch_tokens: int, vocab_size: int) -> None:
    """Every shard must hold one global batch (+1 target token); say so before any rank starts."""
    for shard in shards:
        if shard.num_tokens < global_batch_tokens + 1:
            raise TrainerError(
                f"shard {shard.path} has {shard.num_tokens:,} tokens, fewer than one global "
                f"batch ({global_batch_tokens + 1:,}); use smaller --batch-size/--seq-len"
            )
    if vocab_size > 2**16:
        raise TrainerError(f"vocab size {vocab_size} does not fit the uint16 shard format")


def pick_run_dir(out_dir: Path, name: str | None, kind: str, preset: str) -> Path:
    """<out-dir>/<name>; a user's name must be new, a default name is timestamped."""
    if name is not None:
        if not NAME_PATTERN.match(name):
            raise TrainerError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
        return out_dir / name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = out_dir / f"{kind}-{preset}-{stamp}"
    suffix = 1
    while candidate.exists():  # two runs in one second: never reuse a directory
        suffix += 1
        candidate = out_dir / f"{kind}-{preset}-{stamp}-{suffix}"
    return candidate


def already_exists(run_dir: Path) -> str:
    return f"run directory {run_dir} already exists; choose another --name or --out-dir"


def create_run_dir(run_dir: Path, shared_ok: bool) -> None:
    """Create the run directory; an existing one is a previous run and is never written into.

    On nodes other than 0 of a multi-node run the directory may already exist (a shared file
    system): each rank's trace file is still created only once (see profiling.on_trace_ready).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=shared_ok)
    except FileExistsError:
        raise TrainerError(already_exists(run_dir)) from None
    except OSError as err:
        raise TrainerError(
            f"cannot create run directory {run_dir}: {err.strerror or err}") from None


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("profile")(profile_command)
    data_app = typer.Typer(help="Token shards (fineweb/llm.c format).", no_args_is_help=True)
    data_app.command("synth")(synth_command)
    app.add_typer(data_app, name="data")
