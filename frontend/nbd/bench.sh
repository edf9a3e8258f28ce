#!/bin/sh
# Compare the NBD server (over a file-backed device) with `nbdkit file` on
# this machine using fio's nbd engine; prints IOPS, MB/s, CPU per I/O and
# ratios. Knobs (environment): NBD_BENCH_RUNTIME (s per run, default 3),
# NBD_BENCH_ROUNDS (default 3), NBD_BENCH_SIZE (default 256M),
# NBD_BENCH_DIR (default a temp dir; put it on the disk you care about).
set -eu
cd "$(dirname "$0")"
exec go test -run '^$' -bench '^BenchmarkFio$' -benchtime 1x -timeout 60m .
