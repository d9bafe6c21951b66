//! What a near-cache entry weighs against `max_capacity_bytes` (live entries and fail-safe
//! copies alike).

/// What an entry costs in memory besides its key and value: moka's entry (hash-table node, LRU
/// deque node, timer-wheel node for its lifetime) and the near entry's own fields. Measured with
/// `near-memory` at 1 M entries (BENCHMARKS.md, issue 14, "Memory per entry"): 365 B. Counted in
/// the weight so that `max_capacity_bytes` bounds the memory, not only the payload.
const ENTRY_OVERHEAD_BYTES: usize = 368;

/// An entry's weight against `max_capacity_bytes`: key, value and [`ENTRY_OVERHEAD_BYTES`]
/// (moka weighs with a `u32`).
pub(super) fn of(key: &str, value: &[u8]) -> u32 {
    u32::try_from(key.len() + value.len() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
}
