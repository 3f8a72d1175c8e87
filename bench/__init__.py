"""ofexp benchmarks: each compares an ofexp code path with a baseline timed in the same process."""
