#!/usr/bin/env python3
"""Prototype for the 100M-key design (README, How it is built): a compact open-addressing digest
table in one flat buffer (what a memory-mapped file shared by a machine's workers would hold) and a
bloom filter in front; memory per key, and look-up costs against a dict in interleaved rounds.

    .venv/bin/python scripts/proto_100m.py [N]      (default 10,000,000; about 1.5 GB at that size)

Not used by the service: random digests, no store.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

SLOT = struct.Struct("<15s3sd16s")  # digest prefix, grant number (24 bits), expires_at, key UUID
SIZE = SLOT.size
EMPTY = bytes(15)
LOAD = 0.85
BLOOM_BITS, BLOOM_K = 9.6, 7  # bits a key, positions: 1 % false positives


def rss() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) * 1024


class FlatTable:
    def __init__(self, count: int) -> None:
        self.capacity = int(count / LOAD)
        self.buffer = bytearray(self.capacity * SIZE)

    def add(self, digest: bytes, grant: int, expires_at: float, key_id: bytes) -> None:
        buffer, capacity = self.buffer, self.capacity
        i = int.from_bytes(digest[:8], "little") % capacity  # a digest's bits are uniform
        while buffer[i * SIZE:i * SIZE + 15] != EMPTY:
            i = (i + 1) % capacity
        SLOT.pack_into(buffer, i * SIZE, digest[:15], grant.to_bytes(3, "little"), expires_at, key_id)

    def find(self, digest: bytes) -> int | None:
        """The offset of the digest's slot, or None."""
        buffer, capacity, prefix = self.buffer, self.capacity, digest[:15]
        i = int.from_bytes(digest[:8], "little") % capacity
        while True:
            offset = i * SIZE
            stored = buffer[offset:offset + 15]
            if stored == prefix:
                return offset
            if stored == EMPTY:
                return None
            i = (i + 1) % capacity


class Bloom:
    def __init__(self, count: int) -> None:
        self.size = int(count * BLOOM_BITS)
        self.bits = bytearray(self.size // 8 + 1)

    def add(self, digest: bytes) -> None:
        x, size, bits = int.from_bytes(digest, "little"), self.size, self.bits
        for j in range(BLOOM_K):
            p = (x >> (36 * j)) % size
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, digest: bytes) -> bool:
        x, size, bits = int.from_bytes(digest, "little"), self.size, self.bits
        for j in range(BLOOM_K):
            p = (x >> (36 * j)) % size
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    digests = [os.urandom(32) for _ in range(count)]
    before = rss()
    table = FlatTable(count)
    started = time.perf_counter()
    for digest in digests:
        table.add(digest, 1, 1.9e9, digest[16:])
    build = time.perf_counter() - started
    table_bytes = rss() - before
    bloom = Bloom(count)
    for digest in digests:
        bloom.add(digest)
    false_positives = sum(os.urandom(32) in bloom for _ in range(100_000)) / 100_000
    baseline = {d[:15]: None for d in digests[::max(1, count // 1_000_000)]}  # a dict of up to 1M
    sample = digests[::max(1, count // 2000)][:2000]
    unknown = [os.urandom(32) for _ in range(2000)]
    assert all(table.find(d) is not None for d in sample) and all(table.find(d) is None for d in unknown)
    fns: dict[str, Callable[[], object]] = {
        "flat table, a known digest": lambda: [table.find(d) for d in sample],
        "flat table, an unknown digest": lambda: [table.find(d) for d in unknown],
        "bloom filter check": lambda: [d in bloom for d in sample],
        "dict look-up (baseline)": lambda: [baseline.get(d[:15]) for d in sample]}
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(20):  # interleaved: a neighbour's load hits every variant alike
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            rounds[name].append((time.perf_counter() - started) / len(sample) * 1e6)
    print(f"{count:,} keys; flat table of {SIZE}-byte slots at load {LOAD}: {table_bytes / count:.1f} bytes "
          f"a key (built in {build:.1f} s); bloom filter {len(bloom.bits) / count:.2f} bytes a key, "
          f"false positives {false_positives:.2%}")
    for name, times in rounds.items():
        q1, q2, q3 = statistics.quantiles(times, n=4)
        print(f"  {name}: {q2:.2f} us ({q1:.2f}-{q3:.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
