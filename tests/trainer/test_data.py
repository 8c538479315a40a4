"""Shard format round trip, validation errors, synthetic data, and the per-rank loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import (
    HEADER_BYTES,
    MAGIC,
    ShardLoader,
    check_token_range,
    ensure_synthetic_shards,
    read_header,
    read_shard,
    resolve_shards,
    synthetic_tokens,
    write_shard,
)
from trainer.errors import TrainerError as UserError


def make_shard(path: Path, tokens: np.ndarray) -> Path:
    write_shard(path, tokens.astype(np.uint16))
    return path


def test_round_trip_and_header(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint16) * 37 % 50000
    path = make_shard(tmp_path / "a.bin", tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (int(header[0]), int(header[1]), int(header[2])) == (MAGIC, 1, 1000)
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    assert read_header(path).num_tokens == 1000
    np.testing.assert_array_equal(read_shard(path), tokens)


def test_bad_magic_is_a_user_error(tmp_path: Path) -> None:
    path = make_shard(tmp_path / "a.bin", np.zeros(10, np.uint16))
    raw = bytearray(path.read_bytes())
    raw[0:4] = np.int32(12345).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="magic 12345"):
        read_header(path)


def test_truncated_shard_is_a_user_error(tmp_path: Path) -> None:
    path = make_shard(tmp_path / "a.bin", np.zeros(100, np.uint16))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(UserError, match="truncated"):
        read_header(path)
    (tmp_path / "b.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="shorter than its header"):
        read_header(tmp_path / "b.bin")


def test_glob_without_matches(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no shard files match"):
        resolve_shards(str(tmp_path / "missing_*.bin"))


def test_synthetic_tokens_are_deterministic_and_learnable() -> None:
    vocab = 64
    a = synthetic_tokens(50_000, vocab, seed=3, shard_index=0)
    assert np.array_equal(a, synthetic_tokens(50_000, vocab, seed=3, shard_index=0))
    assert not np.array_equal(a, synthetic_tokens(50_000, vocab, seed=3, shard_index=1))
    assert a.max() < vocab
    # Structure: each token is mostly followed by one of a few successors, unlike uniform noise
    # (which would give close to all 64).
    pairs = np.unique(a[:-1].astype(np.int64) * vocab + a[1:], return_counts=True)
    prev = pairs[0] // vocab
    common = pairs[1] >= 10  # ignore the rare phrase-start transitions
    distinct = np.bincount(prev[common], minlength=vocab)
    assert np.median(distinct) <= 4


def test_synthetic_cache_is_reused(tmp_path: Path) -> None:
    first = ensure_synthetic_shards(128, 2, 16, 3, cache_dir=tmp_path)
    mtimes = [s.path.stat().st_mtime_ns for s in first]
    second = ensure_synthetic_shards(128, 2, 16, 3, cache_dir=tmp_path)
    assert [s.path for s in first] == [s.path for s in second]
    assert [s.path.stat().st_mtime_ns for s in second] == mtimes
    assert len(first) == 2 and first[0].num_tokens > 8 * 2 * 16 * 4


@pytest.mark.parametrize("prefetch", [True, False])
def test_loader_slices_per_rank_and_switches(tmp_path: Path, prefetch: bool) -> None:
    shard0 = make_shard(tmp_path / "s0.bin", np.arange(200, dtype=np.uint16))
    shard1 = make_shard(tmp_path / "s1.bin", np.arange(1000, 1200, dtype=np.uint16))
    shards = [read_header(shard0), read_header(shard1)]
    loaders = [ShardLoader(shards, r, 2, batch_size=2, seq_len=5, device=torch.device("cpu"),
                           prefetch=prefetch) for r in range(2)]
    try:
        (x0, y0), (x1, y1) = (loader.next_batch() for loader in loaders)
        assert x0.shape == (2, 5) and x0.dtype == torch.int64
        assert x0.flatten().tolist() == list(range(0, 10))
        assert y0.flatten().tolist() == list(range(1, 11))
        assert x1.flatten().tolist() == list(range(10, 20))  # rank 1: the next slice
        x0b, _ = loaders[0].next_batch()
        assert x0b.flatten().tolist() == list(range(20, 30))  # advanced by the global batch
        loaders[0].switch_shard()
        x0c, _ = loaders[0].next_batch()
        assert x0c.flatten().tolist() == list(range(1000, 1010))
        # Exhausting a shard moves on (cycling back to shard 0 after the last one).
        for _ in range(9):  # 200 tokens hold 9 global batches of 20 (+1)
            loaders[0].next_batch()
        assert loaders[0].shard_index == 0 and loaders[0].switches == 2
    finally:
        for loader in loaders:
            loader.close()


def test_tokens_beyond_the_vocabulary_are_refused(tmp_path: Path) -> None:
    shard = read_header(make_shard(tmp_path / "s.bin", np.arange(600, dtype=np.uint16)))
    with pytest.raises(UserError, match="token id 599, beyond"):
        check_token_range(shard, vocab_size=512)
    check_token_range(shard, vocab_size=600)
    loader = ShardLoader([shard], 0, 1, batch_size=1, seq_len=550, device=torch.device("cpu"),
                         prefetch=False, vocab_size=512)
    try:
        with pytest.raises(UserError, match="beyond"):
            loader.next_batch()
    finally:
        loader.close()
