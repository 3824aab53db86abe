"""Storage benchmark: spotrain commit/restore vs raw fsspec put/get of the same bytes.

For each backend (local files, and a SeaweedFS S3 server started here on loopback) it writes a
checkpoint of ``--size-mib`` MiB split into ``--files`` files, then times

* raw:      ``fs.put(local_dir, remote, recursive=True)`` / ``fs.get(remote, out, recursive=True)``
* spotrain: ``CheckpointStore.commit`` (parallel upload + sha256 + manifest) /
            ``CheckpointStore.restore`` (parallel download, ranged GETs for big files on object
            stores, + size/sha256 verification)
* handover: ``CheckpointStore.commit(..., consume=True)`` of a fresh copy (made outside the
            timing), as the trainer's background committer commits (same filesystem: hard
            links + one hash pass)

and prints MiB/s and the ratio spotrain/raw (best of ``--repeat`` runs each, alternating the
order so neither side always gets a warm cache). Run: ``python bench/storage_bench.py`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storage.checkpoints import CheckpointStore, StoreOptions  # noqa: E402
from storage.testing.seaweed import SeaweedServer  # noqa: E402

MiB = 2**20


def make_files(root: Path, size_mib: int, n_files: int) -> int:
    """Random bytes: one big shard pair like a TF checkpoint plus small index files."""
    root.mkdir(parents=True)
    total = size_mib * MiB
    per = total // n_files
    chunk = os.urandom(8 * MiB)
    written = 0
    for i in range(n_files):
        size = per if i < n_files - 1 else total - written
        with open(root / f"variables.data-{i:05d}-of-{n_files:05d}", "wb") as f:
            left = size
            while left > 0:
                n = min(left, len(chunk))
                # vary the bytes per file so no layer can dedupe them
                f.write(bytes([i]) + chunk[1:n] if left == size else chunk[:n])
                left -= n
        written += size
    (root / "variables.index").write_bytes(os.urandom(4096))
    (root / "checkpoint").write_text('model_checkpoint_path: "variables"\n')
    return written + 4096 + len('model_checkpoint_path: "variables"\n')


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_backend(
    name: str,
    base_url: str,
    storage_options: dict[str, Any],
    src: Path,
    nbytes: int,
    work: Path,
    repeat: int,
    concurrency: int,
) -> list[dict[str, Any]]:
    store = CheckpointStore(
        f"{base_url}/spotrain-run",
        storage_options,
        StoreOptions(concurrency=concurrency, record_events=False),
    )
    fs = store.fs
    raw_root = store.fs._strip_protocol(f"{base_url}/raw-run")
    best = {"raw_put": 1e9, "raw_get": 1e9, "commit": 1e9, "restore": 1e9, "handover": 1e9}
    for i in range(repeat):
        out_raw = work / f"{name}-raw-{i}"
        out_sp = work / f"{name}-sp-{i}"
        remote = f"{raw_root}/{i}"

        def raw_put(remote: str = remote) -> None:
            fs.put(str(src), remote, recursive=True)

        def raw_get(remote: str = remote, out: Path = out_raw) -> None:
            fs.invalidate_cache()
            fs.get(remote, str(out), recursive=True)

        def commit(i: int = i) -> None:
            store.commit(i + 1, src, {"i": i})

        def restore(i: int = i, out: Path = out_sp) -> None:
            store.restore(out, step=i + 1)

        handed = work / f"{name}-handover-{i}"
        shutil.copytree(src, handed)

        def handover(i: int = i, handed: Path = handed) -> None:
            store.commit(10_000 + i, handed, {"i": i}, consume=True)

        pairs: list[tuple[str, Callable[[], Any]]] = [("raw_put", raw_put), ("commit", commit)]
        pairs += [("raw_get", raw_get), ("restore", restore)]
        if i % 2:  # alternate who goes first
            pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
        for key, fn in pairs:
            best[key] = min(best[key], timed(fn))
        best["handover"] = min(best["handover"], timed(handover))
        shutil.rmtree(handed, ignore_errors=True)
        store.delete_step(10_000 + i)
        shutil.rmtree(out_raw, ignore_errors=True)
        shutil.rmtree(out_sp, ignore_errors=True)
        fs.rm(remote, recursive=True)
        store.delete_step(i + 1)
    rows = []
    for op, raw_key, sp_key in (
        ("upload", "raw_put", "commit"),
        ("handover", "raw_put", "handover"),
        ("download", "raw_get", "restore"),
    ):
        raw_mibs = nbytes / MiB / best[raw_key]
        sp_mibs = nbytes / MiB / best[sp_key]
        rows.append(
            {
                "backend": name,
                "op": op,
                "raw": raw_key,
                "spotrain": sp_key,
                "raw_mib_s": round(raw_mibs, 1),
                "spotrain_mib_s": round(sp_mibs, 1),
                "ratio": round(sp_mibs / raw_mibs, 2),
                "raw_s": round(best[raw_key], 3),
                "spotrain_s": round(best[sp_key], 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=8, help="data shards (plus 2 small files)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=StoreOptions().concurrency)
    parser.add_argument("--backends", default="local,s3", help="comma list of: local, s3")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="spotrain-bench-") as tmp:
        work = Path(tmp)
        src = work / "checkpoint"
        nbytes = make_files(src, args.size_mib, args.files)
        print(
            f"checkpoint: {nbytes / MiB:.1f} MiB in {args.files + 2} files; best of "
            f"{args.repeat}; concurrency {args.concurrency}; {os.cpu_count()} CPUs"
        )
        rows: list[dict[str, Any]] = []
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if "local" in backends:
            rows += bench_backend(
                "local",
                f"file://{work}/remote",
                {},
                src,
                nbytes,
                work,
                args.repeat,
                args.concurrency,
            )
        if "s3" in backends:
            with SeaweedServer.start(work / "seaweed", bucket="bench") as server:
                rows += bench_backend(
                    "seaweedfs-s3",
                    f"s3://{server.bucket}",
                    server.storage_options,
                    src,
                    nbytes,
                    work,
                    args.repeat,
                    args.concurrency,
                )
        print(f"{'backend':<14} {'op':<9} {'raw MiB/s':>10} {'spotrain MiB/s':>15} {'ratio':>6}")
        for r in rows:
            print(
                f"{r['backend']:<14} {r['op']:<9} {r['raw_mib_s']:>10.1f} "
                f"{r['spotrain_mib_s']:>15.1f} {r['ratio']:>6.2f}"
            )
        if args.json:
            print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
