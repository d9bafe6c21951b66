//! The layer's metric, `impcache_http_requests_total{outcome, route}` (the table is in
//! `OBSERVABILITY.md`).
//!
//! The route is the one axum matched (`axum::extract::MatchedPath`, with the `axum` feature), never
//! the request's path: one label value per route, however many paths. Without the feature, or
//! outside an axum router, requests are counted without a route.

use http::Request;
use impcache::__private::metrics::{layer_request, recorder_installed, LayerOutcome};

/// The request being counted: `None` without a metrics recorder (nothing is counted, nothing is
/// looked up in the request).
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

    /// Counts the request with its outcome.
    #[inline]
    pub(crate) fn count(&self, outcome: LayerOutcome) {
        if let Some(route) = &self.0 {
            layer_request(outcome, route.as_ref().map(as_str));
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
