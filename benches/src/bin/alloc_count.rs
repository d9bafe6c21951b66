//! Counts heap allocations per operation on the hit path (placeholder).
fn main() {}
