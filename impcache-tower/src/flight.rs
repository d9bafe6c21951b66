//! Request coalescing: one handler call per key per process, across the store boundary, on
//! `impcache`'s single-flight primitive ([`impcache::flight`], whose docs give the protocol).
//!
//! The first request to miss a URL becomes the *leader* and calls the handler; later ones wait
//! (bounded by the lock timeout, one per request however many leaders it waits for: `Waiting`
//! in `service.rs`) for what the leader publishes: the entry when the response is
//! stored; that a stale entry stood in for a failed handler (each waiter then serves its own stale
//! entry: a failing origin is called once per flight, not once per request); "not shareable"
//! otherwise (they then call the handler themselves, side by side, without the cross-process
//! lock: `service.rs`, `Coalesced::NotShared`; under the lock, once one more of them has called
//! through it for the others). The leader keeps the flight open until its
//! background store has finished, so requests joining in that window are answered from memory.
//!
//! **`Vary` variants.** A flight is keyed by the URL until the URL's `Vary` names are known, then
//! by the request's variant key: a request whose lookup found them joins its variant's flight; one
//! handed another variant's response waits for that response's store, looks again, and joins its
//! variant's flight (`service.rs`, `coalesce`). So each variant has one handler call however many
//! miss at once.
//!
//! **Read your own writes.** A request takes a [`Ticket`] *before* its lookup, and joins the
//! flight only after the lookup missed: a flight of the URL's group that ended in between (its
//! store finished, so the lookup may have overtaken the write) makes the new leader look again
//! ([`Leader::recheck`]) before calling the handler. Taking a ticket is one atomic load: hits
//! pay next to nothing for it.
//!
//! **Purges.** A purge of a URL (an unsafe method's invalidation, `purge_url`, a sweep) detaches
//! its flights, every variant's ([`impcache::flight::Flights::detach`], from
//! [`crate::landing`]): the requests that joined them before the purge still get their leaders'
//! answers, which are not stored; a request that arrives after it leads a new flight, whose
//! handler call reads the data as the purge left it.
//!
//! **A leader that goes away** (its client disconnected, it panicked, the body was dropped
//! mid-way) or whose response body fails mid-way (an upstream error: `Unfinished::give_up`)
//! publishes nothing: its waiters look in the cache again and the first of them to join leads
//! the next flight, the others wait for it (as `#[cached]` does), within what is left of their
//! lock timeout, counted from their first wait (with nothing left, they call the handler
//! themselves): an upstream whose bodies always fail does not line them up one call after
//! another. What they waited also counts in their hard timeout.

use std::sync::Arc;

use http::HeaderName;
use impcache::flight;

use crate::entry::Entry;
use crate::policy::Why;

/// What a leader hands to its waiters.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) entry: Entry,
    /// The Vary header names of the stored response.
    pub(crate) vary: Vec<HeaderName>,
    /// The variant key the entry was stored under.
    pub(crate) variant_key: String,
    /// Its stale policy (see [`crate::stale`]): its key outlives its TTL by the stale window.
    pub(crate) stale: impcache::Freshness,
    /// The generation of the record its lookup found (see [`crate::store`]), when it names this
    /// response's variants: stored under it without writing the record.
    pub(crate) generation: Option<u64>,
}

/// What a leader hands to its waiters.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    /// The response, stored.
    Stored(Arc<Published>),
    /// The handler failed (an error, a time limit, a stale-if-error status) and a stale entry
    /// answered for it (stale-if-error): each waiter answers with its own stale entry the same
    /// way, without calling the handler again; one without a stale entry calls the handler.
    StoodIn(Why),
    /// The handler's call passed the hard timeout and no stale entry answered for it (the
    /// leader answered `504`): a waiter answers with its own stale entry if it has one, else
    /// calls the handler within what is left of its hard timeout (it waited as long).
    TimedOut,
}

/// The flights in progress, by URL key, shared by every service a layer makes.
pub(crate) type Flights = flight::Flights<String, Shared>;
/// A request's place in a flight.
pub(crate) type Join = flight::Join<String, Shared>;
/// A new leader, told whether to look again.
pub(crate) type Leader = flight::Leader<String, Shared>;
/// The leader's handle: publishes, or ends the flight when dropped.
pub(crate) type FlightGuard = flight::FlightGuard<String, Shared>;
/// What a waiting request learned.
pub(crate) type Wait = flight::Wait<Shared>;
pub(crate) use impcache::flight::Ticket;
/// A waiting request (named for completeness: the service only calls its `wait`).
#[allow(dead_code)]
pub(crate) type Waiter = flight::Waiter<Shared>;
