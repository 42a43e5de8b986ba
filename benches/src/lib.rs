//! Criterion benches for roomlab's hot paths; see BENCHMARKS.md for the figures and how to reproduce
//! them. The benches live in `benches/`; this library is empty.
