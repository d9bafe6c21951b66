//! What a near-cache entry weighs against `max_capacity_bytes` (live entries and fail-safe
//! copies alike).

/// What an entry costs in memory besides its key and value: moka's entry (hash-table node, LRU
/// deque node) and the near entry's own fields. Measured with `near-memory` at 1 M entries
/// (BENCHMARKS.md, issue 14, "Memory per entry"): 365 B; 381 B once the entry held its kept tag
/// verdict's cell (`store.rs`, `Entry::verified`); 365 B again since moka's per-entry expiry gave
/// way to the entry's own deadline (BENCHMARKS.md, "Run I"); 381 B once the entry held the
/// ticket and slot of the read it was kept from (`Entry::read`, BENCHMARKS.md, "Run L"). Counted
/// in the weight so that `max_capacity_bytes` bounds the memory, not only the payload.
const ENTRY_OVERHEAD_BYTES: usize = 384;

/// What a tagged entry's kept verdict costs besides, its tags' copy aside: its cell (an `Arc` of
/// the verdict budget and an `ArcSwapOption`, 32 B allocated) and the verdict (an `Arc` of the
/// call's tags, the tag sequence and the value's `Bytes`, 80 B allocated), rounded up
/// (`store.rs`, `VerdictCell`, `Verified`).
const VERIFIED_OVERHEAD_BYTES: usize = 128;

/// An entry's weight against `max_capacity_bytes` (moka weighs with a `u32`): key, value and
/// [`ENTRY_OVERHEAD_BYTES`]; for a tagged entry, whose kept verdict may hold a copy of the
/// call's tags up to `verdict_budget` bytes of heap (`Some`: that of the entry's own tags,
/// `tags::heap_bytes`), [`VERIFIED_OVERHEAD_BYTES`] and that budget as well.
pub(super) fn of(key: &str, value: &[u8], verdict_budget: Option<usize>) -> u32 {
    let verdict = verdict_budget.map_or(0, |budget| VERIFIED_OVERHEAD_BYTES + budget);
    u32::try_from(key.len() + value.len() + ENTRY_OVERHEAD_BYTES + verdict).unwrap_or(u32::MAX)
}
