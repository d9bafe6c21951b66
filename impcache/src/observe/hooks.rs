//! Metrics recorded outside [`Cache`](crate::Cache)'s operations: by the `#[cached]` expansion,
//! the single-flight, the HTTP layer (`impcache-tower`) and the circuit breaker. Reached through
//! `impcache::__private::metrics`. /!\ Not a stable API. /!\
//!
//! Labels are `'static` where the caller can make them so (a function's name is a `static`
//! [`CachedFunction`] in the expansion): recording then allocates nothing. A route is the
//! framework's matched route (bounded), never the request's path.

use std::time::{Duration, Instant};

use metrics::{Key, Label, Recorder, Unit};

use super::METADATA;

/// `impcache_cached_calls_total{function, outcome}`: calls of `#[cached]` functions.
pub const CACHED_CALLS_TOTAL: &str = "impcache_cached_calls_total";
/// `impcache_single_flight_waits_total{function}`: callers that waited for another caller's
/// computation of the same key instead of running the function.
pub const SINGLE_FLIGHT_WAITS_TOTAL: &str = "impcache_single_flight_waits_total";
/// `impcache_single_flight_wait_duration_seconds{function}`: how long they waited.
pub const SINGLE_FLIGHT_WAIT_SECONDS: &str = "impcache_single_flight_wait_duration_seconds";
/// `impcache_http_requests_total{outcome, route}`: requests seen by the HTTP layer.
pub const HTTP_REQUESTS_TOTAL: &str = "impcache_http_requests_total";
/// `impcache_circuit_breaker_state{state}`: 1 for the breaker's current state, 0 for the others.
pub const BREAKER_STATE: &str = "impcache_circuit_breaker_state";
/// `impcache_circuit_breaker_transitions_total{from, to}`: state changes of the breaker.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "impcache_circuit_breaker_transitions_total";

/// How a `#[cached]` call was answered: the `outcome` label of [`CACHED_CALLS_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallOutcome {
    /// From the cache.
    Hit,
    /// The function ran (or another caller's run was awaited) and its value was offered to the
    /// cache.
    Miss,
    /// The function ran without the cache: the key could not be built, or the cache failed.
    Bypass,
}

impl CallOutcome {
    const fn index(self) -> usize {
        match self {
            CallOutcome::Hit => 0,
            CallOutcome::Miss => 1,
            CallOutcome::Bypass => 2,
        }
    }

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            CallOutcome::Hit => "hit",
            CallOutcome::Miss => "miss",
            CallOutcome::Bypass => "bypass",
        }
    }
}

/// The labels of one `#[cached]` function, built at compile time: the expansion holds it in a
/// `static` (`static F: CachedFunction = CachedFunction::new("module::name");`).
#[derive(Debug)]
pub struct CachedFunction {
    name: &'static str,
    /// `function` and `outcome`, in [`CallOutcome`] order.
    calls: [[Label; 2]; 3],
    /// `function` alone.
    function: [Label; 1],
}

impl CachedFunction {
    /// The labels of the function called `name` (bounded cardinality: one per function).
    pub const fn new(name: &'static str) -> Self {
        CachedFunction {
            name,
            calls: [
                [
                    Label::from_static_parts("function", name),
                    Label::from_static_parts("outcome", CallOutcome::Hit.name()),
                ],
                [
                    Label::from_static_parts("function", name),
                    Label::from_static_parts("outcome", CallOutcome::Miss.name()),
                ],
                [
                    Label::from_static_parts("function", name),
                    Label::from_static_parts("outcome", CallOutcome::Bypass.name()),
                ],
            ],
            function: [Label::from_static_parts("function", name)],
        }
    }

    /// The function's name (`module::path::name`).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Counts one call; also a `TRACE` event (target `impcache::cached`).
    pub fn call(&'static self, outcome: CallOutcome) {
        self.trace(outcome);
        metrics::with_recorder(|recorder| self.record_call(recorder, outcome));
    }

    /// The `TRACE` event of one call (target `impcache::cached`).
    #[inline(always)]
    pub(crate) fn trace(&self, outcome: CallOutcome) {
        tracing::trace!(
            target: "impcache::cached",
            function = self.name,
            outcome = outcome.name(),
            "#[cached] call"
        );
    }

    /// Counts one call in `recorder` (for a caller already inside the facade's `with_recorder`).
    pub(crate) fn record_call(&'static self, recorder: &dyn Recorder, outcome: CallOutcome) {
        let key = Key::from_static_parts(CACHED_CALLS_TOTAL, &self.calls[outcome.index()]);
        recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// Counts one call answered with `outcome`, and its wait for other callers' runs when it
    /// waited (both only once the call answers: a call dropped before is neither).
    pub(crate) fn answered(&'static self, outcome: CallOutcome, wait: FlightWait) {
        if let Some(waited) = wait.waited {
            self.single_flight_wait(waited);
        }
        self.call(outcome);
    }

    /// Counts one caller that waited `waited` for another caller's run of the same key.
    pub fn single_flight_wait(&'static self, waited: Duration) {
        let count = Key::from_static_parts(SINGLE_FLIGHT_WAITS_TOTAL, &self.function);
        let time = Key::from_static_parts(SINGLE_FLIGHT_WAIT_SECONDS, &self.function);
        metrics::with_recorder(|recorder| {
            recorder.register_counter(&count, &METADATA).increment(1);
            recorder.register_histogram(&time, &METADATA).record(waited);
        });
    }
}

/// A `#[cached]` caller's wait for other callers' runs of its key, the same with or without a
/// freshness option: one wait per caller however many leaders it waited for (the waiters of a
/// panicked or dropped leader join the flight again, and one of them leads), timed from its
/// first wait to its last's end, and counted by [`CachedFunction::answered`] when the call
/// answers (a caller dropped before, even one that led since, counts none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlightWait {
    /// When the caller first waited, with a recorder installed then.
    since: Option<Instant>,
    /// How long it had waited when its last wait ended.
    waited: Option<Duration>,
}

impl FlightWait {
    /// The caller waits for another caller's run (again, or for the first time).
    pub(crate) fn begins(&mut self) {
        if self.since.is_none() {
            self.since = super::metrics::recorder_installed().then(Instant::now);
        }
    }

    /// A wait ended: the caller was answered, or joins the flight again.
    pub(crate) fn ends(&mut self) {
        self.waited = self.since.map(|since| since.elapsed());
    }
}

/// How the HTTP layer answered a request: the `outcome` label of [`HTTP_REQUESTS_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerOutcome {
    /// From the cache (a `304 Not Modified` to a matching `If-None-Match` included).
    Hit,
    /// Forwarded to the service; the response may have been stored.
    Miss,
    /// Forwarded without looking in the cache (method, request headers, or a rule said so).
    Bypass,
    /// The cache failed; forwarded to the service.
    Error,
    /// A stored response served past its freshness (stale-while-revalidate, or standing in for
    /// a failed service under stale-if-error).
    Stale,
    /// The request's response future was dropped before its outcome was counted (its client went
    /// away, a timeout around the service, a panic of the service): a caller that left, as the
    /// `cancelled` outcome of `impcache_operations_total`; not an error.
    Cancelled,
}

impl LayerOutcome {
    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            LayerOutcome::Hit => "hit",
            LayerOutcome::Miss => "miss",
            LayerOutcome::Bypass => "bypass",
            LayerOutcome::Error => "error",
            LayerOutcome::Stale => "stale",
            LayerOutcome::Cancelled => "cancelled",
        }
    }
}

/// Counts one request of the HTTP layer. `route` is the matched route template (axum's
/// `MatchedPath`, such as `/users/{id}`), never the raw path; without one the label is absent.
pub fn layer_request(outcome: LayerOutcome, route: Option<&str>) {
    let outcome = Label::from_static_parts("outcome", outcome.name());
    let labels = match route {
        Some(route) => vec![outcome, Label::new("route", route.to_owned())],
        None => vec![outcome],
    };
    let key = Key::from_parts(HTTP_REQUESTS_TOTAL, labels);
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA).increment(1));
}

/// A circuit breaker's state: the `state`, `from` and `to` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Operations go through.
    Closed,
    /// One probe goes through; the others fail fast.
    HalfOpen,
    /// Operations fail fast.
    Open,
}

impl BreakerState {
    const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::HalfOpen,
        BreakerState::Open,
    ];

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// Counts a breaker's change of state and sets [`BREAKER_STATE`] to `to`. `breaker` are the labels
/// naming the breaker (`repository` and `target`: the server, or a cluster node), so that
/// several breakers do not write over each other's gauge.
pub fn breaker_transition(breaker: &[Label], from: BreakerState, to: BreakerState) {
    let key = |name: &'static str, extra: &[(&'static str, &'static str)]| {
        let extra = extra
            .iter()
            .map(|&(key, value)| Label::from_static_parts(key, value));
        Key::from_parts(
            name,
            breaker.iter().cloned().chain(extra).collect::<Vec<_>>(),
        )
    };
    let transition = key(
        BREAKER_TRANSITIONS_TOTAL,
        &[("from", from.name()), ("to", to.name())],
    );
    metrics::with_recorder(|recorder| {
        recorder
            .register_counter(&transition, &METADATA)
            .increment(1);
    });
    breaker_state(breaker, to);
}

/// Sets the state gauge of a breaker (labels `breaker`): 1 for `state`, 0 for the others. Also
/// when it is made (closed), so that a healthy repository's series exists before any change.
pub fn breaker_state(breaker: &[Label], state: BreakerState) {
    breaker_gauges(breaker, Some(state));
}

/// Sets every state gauge of a breaker that is gone (a Cluster node no longer in the cluster) to
/// 0: no state is its.
#[cfg(feature = "cluster")]
pub fn breaker_gone(breaker: &[Label]) {
    breaker_gauges(breaker, None);
}

fn breaker_gauges(breaker: &[Label], state: Option<BreakerState>) {
    metrics::with_recorder(|recorder| {
        for each in BreakerState::ALL {
            let value = if Some(each) == state { 1.0 } else { 0.0 };
            let labels = breaker
                .iter()
                .cloned()
                .chain([Label::from_static_parts("state", each.name())]);
            let gauge = Key::from_parts(BREAKER_STATE, labels.collect::<Vec<_>>());
            recorder.register_gauge(&gauge, &METADATA).set(value);
        }
    });
}

/// Name, unit and help text of the metrics above.
pub(super) const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        CACHED_CALLS_TOTAL,
        Some(Unit::Count),
        "Calls of #[cached] functions, by function and outcome (hit, miss, bypass).",
    ),
    (
        SINGLE_FLIGHT_WAITS_TOTAL,
        Some(Unit::Count),
        "#[cached] callers that waited for another caller's run of the same key, by function.",
    ),
    (
        SINGLE_FLIGHT_WAIT_SECONDS,
        Some(Unit::Seconds),
        "How long #[cached] callers waited for another caller's run, by function.",
    ),
    (
        HTTP_REQUESTS_TOTAL,
        Some(Unit::Count),
        "Requests seen by the HTTP cache layer, by outcome and matched route.",
    ),
    (
        BREAKER_STATE,
        None,
        "1 for the circuit breaker's current state (closed, half_open, open), 0 for the others.",
    ),
    (
        BREAKER_TRANSITIONS_TOTAL,
        Some(Unit::Count),
        "Circuit breaker state changes, by from and to state.",
    ),
    (
        NEAR_LOOKUPS_TOTAL,
        Some(Unit::Count),
        "Keys looked up through a near cache, by the tier that answered (near, remote, stale).",
    ),
];

// --- Near cache (issue 14). ---

/// `impcache_near_cache_lookups_total{tier}`: keys looked up through a near cache, by the tier
/// that answered: `near` (process memory) or `remote` (Redis), or `stale`: a fail-safe copy
/// standing in for a failed loader while Redis failed ([`NearCache::fail_safe`](crate::NearCache::fail_safe)).
pub const NEAR_LOOKUPS_TOTAL: &str = "impcache_near_cache_lookups_total";

/// The tier that answered a near cache's lookup: the `tier` label of [`NEAR_LOOKUPS_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Process memory.
    Near,
    /// Redis.
    Remote,
    /// A fail-safe copy (the `stale` outcome).
    FailSafe,
}

static NEAR_TIER_LABELS: [[Label; 1]; 3] = [
    [Label::from_static_parts("tier", "near")],
    [Label::from_static_parts("tier", "remote")],
    [Label::from_static_parts("tier", "stale")],
];

/// Counts `count` keys answered by `tier` (nothing without a recorder), and records the tier on
/// the operation's span once, whatever `count` (a batch read from Redis is one `remote`).
#[inline]
pub(crate) fn near_lookups(tier: Tier, count: u64) {
    let index = match tier {
        Tier::Near => 0,
        Tier::Remote => 1,
        Tier::FailSafe => 2,
    };
    let labels = &NEAR_TIER_LABELS[index];
    super::span::record_tier(labels[0].value());
    if !super::metrics::recorder_installed() {
        return;
    }
    let key = Key::from_static_parts(NEAR_LOOKUPS_TOTAL, labels);
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA).increment(count));
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// A recorded value, comparable.
    #[derive(Debug, PartialEq)]
    enum Value {
        Counter(u64),
        Gauge(f64),
        Histogram(Vec<f64>),
    }

    /// A recorded metric: name, sorted labels, value.
    type Metric = (String, Vec<(String, String)>, Value);

    /// Every metric recorded by `f`, sorted.
    fn recorded(f: impl FnOnce()) -> Vec<Metric> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, f);
        let mut all: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(n) => Value::Counter(n),
                    DebugValue::Gauge(v) => Value::Gauge(v.into_inner()),
                    DebugValue::Histogram(v) => {
                        Value::Histogram(v.into_iter().map(|v| v.into_inner()).collect())
                    }
                };
                (key.name().to_owned(), labels, value)
            })
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn metric(name: &str, pairs: &[(&str, &str)], value: Value) -> Metric {
        (name.to_owned(), labels(pairs), value)
    }

    static FETCH_USER: CachedFunction = CachedFunction::new("app::fetch_user");

    #[test]
    fn cached_calls_count_by_function_and_outcome() {
        let all = recorded(|| {
            FETCH_USER.call(CallOutcome::Hit);
            FETCH_USER.call(CallOutcome::Hit);
            FETCH_USER.call(CallOutcome::Miss);
            FETCH_USER.call(CallOutcome::Bypass);
        });
        let call = |outcome, n| {
            metric(
                CACHED_CALLS_TOTAL,
                &[("function", "app::fetch_user"), ("outcome", outcome)],
                Value::Counter(n),
            )
        };
        assert_eq!(all, [call("bypass", 1), call("hit", 2), call("miss", 1)]);
    }

    #[test]
    fn single_flight_waits_count_and_time() {
        let all = recorded(|| {
            FETCH_USER.single_flight_wait(Duration::from_millis(250));
            FETCH_USER.single_flight_wait(Duration::from_millis(500));
        });
        let function = [("function", "app::fetch_user")];
        assert_eq!(
            all,
            [
                metric(
                    SINGLE_FLIGHT_WAIT_SECONDS,
                    &function,
                    Value::Histogram(vec![0.25, 0.5])
                ),
                metric(SINGLE_FLIGHT_WAITS_TOTAL, &function, Value::Counter(2)),
            ]
        );
    }

    #[test]
    fn layer_requests_count_by_outcome_and_route() {
        let all = recorded(|| {
            layer_request(LayerOutcome::Hit, Some("/users/{id}"));
            layer_request(LayerOutcome::Hit, Some("/users/{id}"));
            layer_request(LayerOutcome::Miss, Some("/users/{id}"));
            layer_request(LayerOutcome::Bypass, None);
        });
        assert_eq!(
            all,
            [
                metric(
                    HTTP_REQUESTS_TOTAL,
                    &[("outcome", "bypass")],
                    Value::Counter(1)
                ),
                metric(
                    HTTP_REQUESTS_TOTAL,
                    &[("outcome", "hit"), ("route", "/users/{id}")],
                    Value::Counter(2)
                ),
                metric(
                    HTTP_REQUESTS_TOTAL,
                    &[("outcome", "miss"), ("route", "/users/{id}")],
                    Value::Counter(1)
                ),
            ]
        );
    }

    #[test]
    fn breaker_transitions_count_and_set_the_state() {
        let all = recorded(|| {
            breaker_transition(&[], BreakerState::Closed, BreakerState::Open);
            breaker_transition(&[], BreakerState::Open, BreakerState::HalfOpen);
        });
        assert_eq!(
            all,
            [
                metric(BREAKER_STATE, &[("state", "closed")], Value::Gauge(0.0)),
                metric(BREAKER_STATE, &[("state", "half_open")], Value::Gauge(1.0)),
                metric(BREAKER_STATE, &[("state", "open")], Value::Gauge(0.0)),
                metric(
                    BREAKER_TRANSITIONS_TOTAL,
                    &[("from", "closed"), ("to", "open")],
                    Value::Counter(1)
                ),
                metric(
                    BREAKER_TRANSITIONS_TOTAL,
                    &[("from", "open"), ("to", "half_open")],
                    Value::Counter(1)
                ),
            ]
        );
    }
}
