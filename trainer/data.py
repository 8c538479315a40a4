"""Token shards in the fineweb / llm.c format, synthetic shards, and a per-rank shard loader.

Shard format (the one modded-nanogpt reads): a header of 256 little-endian int32 values
(header[0] = 20240520 magic, header[1] = 1 version, header[2] = number of tokens), followed by
that many uint16 tokens. Nothing here touches the network: without `--data`, the trainer writes
synthetic shards into a local cache directory and trains on those.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from trainer.errors import TrainerError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 2**16  # tokens are stored as uint16

# Synthetic "language": each phrase starts on a random token and every next token is one of
# SUCCESSORS fixed successors of the previous one. A model can learn it (loss drops from ln(V)
# towards ln(SUCCESSORS)), yet generation is vectorised over phrases.
PHRASE_LEN = 32
SUCCESSORS = 4
GEN_CHUNK_TOKENS = 1 << 22  # bounds generator memory whatever the shard size

# Second synthetic shard for GPU-sized vocabularies: as large as a real fineweb shard (100M
# tokens, 200 MB), so that reading it synchronously costs many GPU step times.
BIG_SHARD_TOKENS = 100_000_000
SMALL_BIG_SHARD_TOKENS = 1_000_000


@dataclass(frozen=True)
class ShardInfo:
    """A shard whose header and size have been checked."""

    path: Path
    num_tokens: int


# --------------------------------------------------------------------------------------------
# Reading and writing shards


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write `tokens` as a shard, atomically (a reader never sees a half-written file).

    The data is fsynced so that a later cache drop (see `read_shard`) really evicts it.
    """
    if tokens.size and int(tokens.max()) >= MAX_VOCAB:
        raise TrainerError(f"token ids must fit in uint16 (< {MAX_VOCAB}) to write {path}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: leave no half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: Path) -> ShardInfo:
    """Check a shard's header and length without reading its tokens (cheap: used up front)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as err:
        raise TrainerError(f"cannot read shard {path}: {err.strerror or err}") from None
    if len(raw) < HEADER_BYTES:
        raise TrainerError(f"shard {path} is truncated: {size} bytes, shorter than its header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise TrainerError(
            f"shard {path} has magic {int(header[0])}, not {MAGIC}: not a fineweb/llm.c shard"
        )
    if int(header[1]) != VERSION:
        raise TrainerError(f"shard {path} has version {int(header[1])}; only {VERSION} is known")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size != expected:
        raise TrainerError(
            f"shard {path} is truncated or padded: header says {num_tokens} tokens "
            f"({expected} bytes) but the file has {size} bytes"
        )
    return ShardInfo(path=path, num_tokens=num_tokens)


def read_shard(path: Path, drop_page_cache: bool = True) -> np.ndarray:
    """Read a whole shard's tokens from disk into memory.

    `drop_page_cache` first asks the kernel to forget any cached pages of the file: a real run
    reads each shard from disk once, while our synthetic shards were just written and would
    otherwise be served from memory, hiding the cost of a synchronous read.
    """
    info = read_header(path)
    tokens = np.empty(info.num_tokens, dtype="<u2")
    with open(path, "rb") as f:
        if drop_page_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        f.seek(HEADER_BYTES)
        # readinto releases the GIL, so a prefetching thread overlaps with training.
        read = f.readinto(memoryview(tokens).cast("B"))
    if read != 2 * info.num_tokens:
        raise TrainerError(f"shard {path} changed while being read ({read} bytes read)")
    return tokens


def check_token_range(shard: ShardInfo, vocab_size: int, sample_tokens: int = 1 << 20) -> None:
    """Refuse shards whose tokens do not fit the model's vocabulary (checks the first tokens:
    cheap, and enough to catch GPT-2 shards given to a small-vocabulary preset)."""
    tokens = np.fromfile(shard.path, dtype="<u2", count=min(sample_tokens, shard.num_tokens),
                         offset=HEADER_BYTES)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise TrainerError(
            f"shard {shard.path} has token id {int(tokens.max())}, beyond the model's vocabulary "
            f"of {vocab_size}; use a preset with a larger vocabulary"
        )


def resolve_shards(pattern: str) -> list[ShardInfo]:
    """Expand a `--data` glob into checked shards, sorted by name."""
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise TrainerError(f"no shard files match --data {pattern!r}")
    return [read_header(p) for p in paths]


# --------------------------------------------------------------------------------------------
# Synthetic shards


def synthetic_tokens(
    num_tokens: int, vocab_size: int, seed: int, shard_index: int,
    on_chunk: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Tokens from a fixed random successor process (the same "language" for every shard).

    The successor tables depend on `seed` only; the phrases depend on (seed, shard, chunk), so
    every shard differs and the output does not depend on how it is chunked in memory.
    """
    if not 2 <= vocab_size <= MAX_VOCAB:
        raise TrainerError(f"vocab size must be in 2..{MAX_VOCAB}, not {vocab_size}")
    successors = np.random.default_rng([seed, 0]).integers(
        0, vocab_size, size=(SUCCESSORS, vocab_size), dtype=np.int64
    )
    out = np.empty(num_tokens, dtype="<u2")
    for chunk_index, start in enumerate(range(0, num_tokens, GEN_CHUNK_TOKENS)):
        count = min(GEN_CHUNK_TOKENS, num_tokens - start)
        rng = np.random.default_rng([seed, 1, shard_index, chunk_index])
        phrases = -(-count // PHRASE_LEN)
        block = np.empty((phrases, PHRASE_LEN), dtype=np.int64)
        block[:, 0] = rng.integers(0, vocab_size, size=phrases)
        for j in range(1, PHRASE_LEN):
            choice = rng.integers(0, SUCCESSORS, size=phrases)
            block[:, j] = successors[choice, block[:, j - 1]]
        out[start:start + count] = block.reshape(-1)[:count]
        if on_chunk is not None:
            on_chunk(count)
    return out


def write_synthetic_shards(
    out_dir: Path, token_counts: list[int], vocab_size: int, seed: int, prefix: str = "synth",
) -> list[Path]:
    """Write one synthetic shard per entry of `token_counts`, with a rich progress bar.

    Refuses to overwrite existing shards: they may be a user's data.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way (--out /dev/null), no permission, ...
        raise TrainerError(f"cannot create shard directory {out_dir}: {err.strerror or err}") \
            from None
    paths = [out_dir / f"{prefix}_{i:06d}.bin" for i in range(len(token_counts))]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise TrainerError(f"{existing[0]} already exists; not overwriting shards")
    columns = (TextColumn("[bold]synthetic shards"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("tokens", total=sum(token_counts))
        for index, (path, count) in enumerate(zip(paths, token_counts, strict=True)):
            tokens = synthetic_tokens(
                count, vocab_size, seed, index, on_chunk=lambda n: progress.advance(task, n)
            )
            try:
                write_shard(path, tokens)
            except OSError as err:  # read-only directory, disk full
                raise TrainerError(f"cannot write shard {path}: {err.strerror or err}") from None
    return paths


def default_cache_dir() -> Path:
    """Where the trainer keeps its synthetic shards: $TRACEKIT_DATA_CACHE, else the XDG cache."""
    if "TRACEKIT_DATA_CACHE" in os.environ:
        return Path(os.environ["TRACEKIT_DATA_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "tracekit-nanogpt" / "synthetic"


def synthetic_plan(
    vocab_size: int, batch_size: int, seq_len: int, loader_wait_step: int
) -> list[int]:
    """Token counts of the synthetic shards the trainer makes for itself.

    Shard 0 holds at least `loader_wait_step + 1` steps of data for up to 8 ranks, so the shard
    switch happens where the config says, not earlier. Shard 1 is the one read at that step:
    fineweb-sized for GPU vocabularies (a real stall), 1M tokens for tiny CPU models.
    """
    per_step = 8 * batch_size * seq_len
    first = max(1 << 20, per_step * (loader_wait_step + 1) + 1)
    big = BIG_SHARD_TOKENS if vocab_size > 4096 else SMALL_BIG_SHARD_TOKENS
    return [first, big]


def ensure_synthetic_shards(
    vocab_size: int, batch_size: int, seq_len: int, loader_wait_step: int,
    seed: int = 0, cache_dir: Path | None = None,
) -> list[ShardInfo]:
    """Return the cached synthetic shards for this shape, writing them the first time."""
    counts = synthetic_plan(vocab_size, batch_size, seq_len, loader_wait_step)
    key = hashlib.sha1(f"{vocab_size}-{seed}-{counts}-{PHRASE_LEN}-{SUCCESSORS}".encode())
    directory = (cache_dir or default_cache_dir()) / f"v{vocab_size}-{key.hexdigest()[:10]}"
    paths = [directory / f"synth_{i:06d}.bin" for i in range(len(counts))]
    if not all(p.exists() for p in paths):
        stale = [p for p in paths if p.exists()]
        for path in stale:  # a half-finished cache of our own making; rebuilt whole
            path.unlink()
        print(f"writing synthetic shards ({sum(counts):,} tokens, first use) to {directory}")
        write_synthetic_shards(directory, counts, vocab_size, seed)
    return [read_header(p) for p in paths]


# --------------------------------------------------------------------------------------------
# The loader


class ShardLoader:
    """Yields (inputs, targets) batches for one rank, reading whole shards like modded-nanogpt.

    Every rank reads the same shards and takes its own slice of each global batch. A background
    thread reads the next shard in advance when `prefetch` is on; otherwise `switch_shard` reads
    the whole next shard synchronously, and the training loop waits for it.
    """

    def __init__(
        self, shards: list[ShardInfo], rank: int, world_size: int, batch_size: int,
        seq_len: int, device: torch.device, prefetch: bool, vocab_size: int = MAX_VOCAB,
    ) -> None:
        self.paths = [s.path for s in shards]
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.seq_len = batch_size, seq_len
        self.device, self.prefetch = device, prefetch
        self.vocab_size = vocab_size
        self.local_tokens = batch_size * seq_len
        self.global_tokens = world_size * self.local_tokens
        too_small = [s for s in shards if s.num_tokens < self.global_tokens + 1]
        if too_small:
            raise TrainerError(
                f"shard {too_small[0].path} has {too_small[0].num_tokens} tokens, fewer than one "
                f"global batch ({self.global_tokens + 1})"
            )
        # The prefetching thread pins memory: on this rank's device, as DataLoader's pinning
        # thread does, or CUDA would make a context on device 0 for it.
        on_device = (lambda: torch.cuda.set_device(device)) if device.type == "cuda" else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-loader",
                                            initializer=on_device)
        self._pending: Future[tuple[np.ndarray, torch.Tensor]] | None = None
        self.shard_index = 0
        self.tokens, self.host_tokens = self._read(self.paths[0])
        self.position = 0
        self.switches = 0
        if prefetch:
            self._prefetch_next()

    def _next_index(self) -> int:
        return (self.shard_index + 1) % len(self.paths)

    def _read(self, path: Path) -> tuple[np.ndarray, torch.Tensor]:
        """A shard's tokens, and the tensor batches are copied from: on a GPU the whole shard
        in pinned memory, pinned once here (in the prefetching thread when prefetch is on).
        Pinning each batch instead cost 2-6 ms per step on 2x H200 (`aten::_pin_memory` in
        `data:next_batch`, the GPU idle meanwhile)."""
        tokens = read_shard(path)
        host = torch.from_numpy(tokens)
        return tokens, host.pin_memory() if self.device.type == "cuda" else host

    def _prefetch_next(self) -> None:
        self._pending = self._executor.submit(self._read, self.paths[self._next_index()])

    def switch_shard(self) -> None:
        """Move to the next shard (cycling): instant if prefetched, else a full synchronous read."""
        if self._pending is not None:
            tokens, host = self._pending.result()
            self._pending = None
        else:
            tokens, host = self._read(self.paths[self._next_index()])
        self.shard_index = self._next_index()
        self.tokens, self.host_tokens, self.position = tokens, host, 0
        self.switches += 1
        if self.prefetch:
            self._prefetch_next()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), each (batch_size, seq_len) int64 on the device."""
        if self.position + self.global_tokens + 1 > self.tokens.size:
            with record_function("data:wait_shard"):
                self.switch_shard()
        start = self.position + self.rank * self.local_tokens
        end = start + self.local_tokens + 1
        highest = int(self.tokens[start:end].max())
        if highest >= self.vocab_size:  # would be an opaque indexing error later
            raise TrainerError(
                f"shard {self.paths[self.shard_index]} has token id {highest}, beyond "
                f"the model's vocabulary of {self.vocab_size}"
            )
        self.position += self.global_tokens
        # uint16 crosses to the device as it is stored; the widening runs there.
        buf = self.host_tokens[start:end].to(self.device, non_blocking=True).to(torch.int64)
        inputs = buf[:-1].view(self.batch_size, self.seq_len)
        targets = buf[1:].view(self.batch_size, self.seq_len)
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
