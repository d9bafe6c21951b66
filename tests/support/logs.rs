//! What a `tracing_subscriber::fmt` subscriber writes, kept for a test to read, and what keeps a
//! test's own subscriber seeing every event ([`keep_callsites_interested`]).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// A log buffer: give a clone to the subscriber (`.with_writer(move || logs.clone())`), read
/// [`text`](Logs::text) afterwards.
#[derive(Clone, Default, Debug)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once per test binary, a global `tracing` subscriber that records nothing (a bare
/// `Registry`), so that a subscriber a test installs for its thread (`set_default`,
/// `with_default`) sees every event of its test. `tracing` caches each call site's interest for
/// the whole process, computed on the thread that first reaches it: a sibling test's thread
/// with no subscriber cached `never`, and the call site's events were then dropped on every
/// thread (tokio-rs/tracing#2743 and #3611; two of this suite's tests lost events that way
/// before they moved to global subscribers). Installing it also recomputes the interest of the
/// call sites already cached. Call it before a test installs its thread's subscriber; not in a
/// binary that installs a global subscriber of its own (call that one's initializer instead:
/// a second global subscriber is refused).
pub fn keep_callsites_interested() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Refused only if a global subscriber is already installed, which keeps call sites
        // interested as well.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}
