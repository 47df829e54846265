//! Nothing: the benchmarks are in `benches/` (`cargo bench -p tsm-bench`).
