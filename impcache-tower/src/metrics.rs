//! The layer's metric, `impcache_http_requests_total{outcome, route}` (the table is in
//! `OBSERVABILITY.md`).
//!
//! The route is the one axum matched (`axum::extract::MatchedPath`, with the `axum` feature), never
//! the request's path: one label value per route, however many paths. Without the feature, or
//! outside an axum router, requests are counted without a route.

use http::Request;
use impcache::__private::metrics::{layer_request, recorder_installed, LayerOutcome};

/// The request being counted, once: `None` without a metrics recorder (nothing is counted,
/// nothing is looked up in the request), and once it has been counted.
///
/// Also the request's drop guard, as the core's operations' (`impcache::observe::Observation`):
/// a request whose response future is dropped before its outcome was counted (its client went
/// away while it waited for another request's handler call or the cross-process lock, or while
/// its handler ran with a stale response that could stand in for it; a panic of the handler) is
/// counted when this is dropped, as `cancelled`. Dropped after its count (a hit whose client drops
/// the body, a miss whose client leaves during the handler call), it counts nothing more.
#[derive(Debug)]
pub(crate) struct Counted(Option<Option<Route>>);

#[cfg(feature = "axum")]
type Route = axum::extract::MatchedPath;
#[cfg(not(feature = "axum"))]
type Route = std::convert::Infallible;

impl Counted {
    /// Reads the request's route, when a recorder is installed.
    #[inline]
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        Counted(recorder_installed().then(|| route(request)))
    }

    /// Counts the request with its outcome, unless it was counted already (each request once).
    #[inline]
    pub(crate) fn count(&mut self, outcome: LayerOutcome) {
        if let Some(route) = self.0.take() {
            layer_request(outcome, route.as_ref().map(as_str));
        }
    }

    /// Dropped before its outcome was counted: the request's future was dropped.
    #[cold]
    #[inline(never)]
    fn cancelled(&mut self) {
        self.count(LayerOutcome::Cancelled);
    }
}

impl Drop for Counted {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            self.cancelled();
        }
    }
}

#[cfg(feature = "axum")]
fn route<B>(request: &Request<B>) -> Option<Route> {
    request.extensions().get::<Route>().cloned()
}

#[cfg(feature = "axum")]
fn as_str(route: &Route) -> &str {
    route.as_str()
}

#[cfg(not(feature = "axum"))]
fn route<B>(_: &Request<B>) -> Option<Route> {
    None
}

#[cfg(not(feature = "axum"))]
fn as_str(route: &Route) -> &str {
    match *route {}
}
