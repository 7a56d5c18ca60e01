//! One read per queue: readings keyed by [`Query`] (endpoint + queue set + read options),
//! concurrent requests for the same query coalesced into one backend round trip, and the result
//! served for a short TTL so that the `GetMetrics` and `IsActive` of one KEDA poll agree and a
//! thousand triggers on one queue cost one read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
// tokio's clock (the system's monotonic clock, or the test's paused one), so that the TTL,
// coalescing and deadlines are tested on virtual time.
use tokio::time::Instant;

use crate::cache::BoundedMap;
use crate::metrics;
use crate::sources::{Backends, Depth, Query, SourceError};

/// The last reading of one query.
#[derive(Debug, Clone)]
struct Reading {
    /// When the read started: a reading answers for the state at or after this instant.
    started: Instant,
    /// The same instant on the wall clock, for history and forecasts.
    at: SystemTime,
    result: Result<Depth, SourceError>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Held while reading, so concurrent askers wait for the read in progress instead of
    /// starting their own.
    reading: tokio::sync::Mutex<Option<Reading>>,
    /// Milliseconds since [`Observations::epoch`] of the last use, for eviction.
    last_used: AtomicU64,
}

/// The observation cache.
#[derive(Debug)]
pub struct Observations {
    backends: Arc<Backends>,
    ttl: Duration,
    timeout: Duration,
    epoch: Instant,
    slots: Mutex<HashMap<Query, Arc<Slot>>>,
    /// Reads in progress per endpoint are bounded, so a burst of distinct queries (KEDA
    /// restarting with thousands of triggers) is served in order instead of every read timing
    /// out together.
    /// Per-endpoint read slots ([`READS_PER_ENDPOINT`] each), bounded like every per-target map.
    limits: Mutex<BoundedMap<String, Arc<Semaphore>>>,
    /// Backend reads started, for tests and benchmarks (the metrics say the same per source).
    reads: AtomicU64,
    /// Unit tests: reads go here instead of to a backend.
    #[cfg(test)]
    fake: Option<FakeRead>,
}

#[cfg(test)]
type ReadFn = dyn Fn(
        Query,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Depth, SourceError>> + Send>>
    + Send
    + Sync;

#[cfg(test)]
#[derive(Clone)]
struct FakeRead(Arc<ReadFn>);

#[cfg(test)]
impl std::fmt::Debug for FakeRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeRead")
    }
}

/// Concurrent reads per backend endpoint.
pub const READS_PER_ENDPOINT: usize = 64;

/// Endpoints with a read-slot semaphore of their own.
pub const MAX_ENDPOINTS: usize = 4_096;

/// Queries with a cached reading. Past it, recently unused ones are dropped at once (not at the
/// next sweep); if all are in use, a further query is read without caching or coalescing, so a
/// flood of made-up triggers costs reads, never unbounded memory.
pub const MAX_QUERIES: usize = 20_000;

impl Observations {
    /// `ttl` is how long a reading answers (zero: every call reads, with no coalescing — the
    /// naive baseline the benchmark compares against); `timeout` bounds every backend read.
    pub fn new(backends: Arc<Backends>, ttl: Duration, timeout: Duration) -> Self {
        Self {
            backends,
            ttl,
            timeout,
            epoch: Instant::now(),
            slots: Mutex::default(),
            limits: Mutex::new(BoundedMap::new(
                "endpoint_semaphores",
                MAX_ENDPOINTS,
                Duration::from_secs(600),
            )),
            reads: AtomicU64::new(0),
            #[cfg(test)]
            fake: None,
        }
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// A reading no older than the TTL.
    pub async fn get(&self, query: &Query) -> Result<Depth, SourceError> {
        self.get_at(query).await.map(|(depth, _)| depth)
    }

    /// A reading no older than the TTL, with the wall-clock time it was taken, within one
    /// backend timeout from now.
    pub async fn get_at(&self, query: &Query) -> Result<(Depth, SystemTime), SourceError> {
        self.get_by(query, Instant::now() + self.timeout).await
    }

    /// `--backend-timeout`: the budget of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When a call that starts now must be answered: one backend timeout from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// [`Observations::get_at`] by `deadline`: waiting for a read another call started, for a
    /// turn at the endpoint and for the read itself all count against it, so a call never
    /// takes longer than its deadline whatever it waits on.
    pub async fn get_by(
        &self,
        query: &Query,
        deadline: Instant,
    ) -> Result<(Depth, SystemTime), SourceError> {
        if self.ttl.is_zero() {
            let at = SystemTime::now();
            return self.read(query, deadline).await.map(|d| (d, at));
        }
        let slot = self.slot(query);
        let Ok(mut reading) = tokio::time::timeout_at(deadline, slot.reading.lock()).await else {
            return Err(self.timed_out(query));
        };
        if let Some(r) = reading.as_ref().filter(|r| r.started.elapsed() < self.ttl) {
            metrics::observation_served(query.kind(), true);
            return r.result.clone().map(|d| (d, r.at));
        }
        metrics::observation_served(query.kind(), false);
        let (started, at) = (Instant::now(), SystemTime::now());
        let result = self.read(query, deadline).await;
        *reading = Some(Reading {
            started,
            at,
            result: result.clone(),
        });
        result.map(|d| (d, at))
    }

    fn timed_out(&self, query: &Query) -> SourceError {
        SourceError::Timeout {
            endpoint: query.endpoint_label(),
            after: self.timeout,
        }
    }

    /// A reading that started after this call: for push activation, which must not act on a
    /// reading taken before the event it reacts to. Concurrent fresh reads still coalesce.
    pub async fn fresh(&self, query: &Query) -> Result<Depth, SourceError> {
        let asked = Instant::now();
        let deadline = asked + self.timeout;
        if self.ttl.is_zero() {
            return self.read(query, deadline).await;
        }
        let slot = self.slot(query);
        let mut reading = slot.reading.lock().await;
        if let Some(r) = reading.as_ref().filter(|r| r.started >= asked) {
            return r.result.clone();
        }
        let (started, at) = (Instant::now(), SystemTime::now());
        let result = self.read(query, deadline).await;
        *reading = Some(Reading {
            started,
            at,
            result: result.clone(),
        });
        result
    }

    fn slot(&self, query: &Query) -> Arc<Slot> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = match slots.get(query) {
            Some(s) => s.clone(),
            None => {
                if slots.len() >= MAX_QUERIES {
                    let cutoff = now.saturating_sub(60_000);
                    slots.retain(|_, s| {
                        Arc::strong_count(s) > 1 || s.last_used.load(Ordering::Relaxed) >= cutoff
                    });
                    metrics::cache_entries("observations", slots.len());
                }
                let s = Arc::new(Slot::default());
                if slots.len() < MAX_QUERIES {
                    slots.insert(query.clone(), s.clone());
                }
                s
            }
        };
        slot.last_used.store(now, Ordering::Relaxed);
        slot
    }

    /// One backend read, done by `deadline`: the turn at the endpoint and the read itself
    /// together.
    async fn read(&self, query: &Query, deadline: Instant) -> Result<Depth, SourceError> {
        let kind = query.kind();
        let endpoint = query.endpoint_label();
        let timed_out = || self.timed_out(query);
        let limit = {
            let mut limits = self
                .limits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limits
                .get_or_insert_with(&endpoint, || Arc::new(Semaphore::new(READS_PER_ENDPOINT)))
                .clone()
        };
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, limit.acquire_owned()).await else {
            metrics::backend_read(kind, Duration::ZERO, Some(&timed_out()));
            return Err(timed_out());
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result =
            match tokio::time::timeout_at(deadline, self.backend_read(query, deadline)).await {
                Ok(r) => r,
                Err(_) => Err(timed_out()),
            };
        metrics::backend_read(kind, start.elapsed(), result.as_ref().err());
        result
    }

    /// The read itself: the query's backend, or a unit test's fake.
    async fn backend_read(&self, query: &Query, deadline: Instant) -> Result<Depth, SourceError> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return (fake.0)(query.clone()).await;
        }
        query.read(&self.backends, deadline.into_std()).await
    }

    /// Forgets queries nobody asked about for `idle`, so 10 000 short-lived triggers do not
    /// stay in memory.
    pub fn sweep(&self, idle: Duration) -> usize {
        let cutoff = self.epoch.elapsed().saturating_sub(idle).as_millis() as u64;
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = slots.len();
        slots.retain(|_, s| {
            Arc::strong_count(s) > 1 || s.last_used.load(Ordering::Relaxed) >= cutoff
        });
        before - slots.len()
    }

    /// Backend reads started since the cache was made.
    pub fn backend_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    //! The TTL, coalescing, deadlines and sweeps on paused (virtual) time, with a fake read
    //! that takes a set time and counts itself.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::metadata::md;
    use crate::trigger::Trigger;

    fn query(list: &str) -> Query {
        Trigger::parse(&md(&[
            ("source", "redis-list"),
            ("address", "never-contacted:6379"),
            ("listName", list),
        ]))
        .unwrap()
        .query()
    }

    /// Observations whose every read takes `takes` and answers `waiting` = reads so far.
    fn observations(ttl: Duration, timeout: Duration, takes: Duration) -> Arc<Observations> {
        let mut o = Observations::new(Arc::new(Backends::default()), ttl, timeout);
        let count = Arc::new(AtomicU64::new(0));
        o.fake = Some(FakeRead(Arc::new(move |_q| {
            let count = count.clone();
            Box::pin(async move {
                tokio::time::sleep(takes).await;
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Depth::simple(n, 0))
            })
        })));
        Arc::new(o)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_answers_for_the_ttl_then_the_next_call_reads_again() {
        let o = observations(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::ZERO,
        );
        let q = query("a");
        assert_eq!(o.get(&q).await.unwrap().waiting, 1);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(o.get(&q).await.unwrap().waiting, 1, "within the TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            o.get(&q).await.unwrap().waiting,
            2,
            "at the TTL: read again"
        );
        assert_eq!(o.backend_reads(), 2);
        // Another query has its own reading.
        assert_eq!(o.get(&query("b")).await.unwrap().waiting, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_wait_for_one_read_in_progress() {
        let o = observations(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_millis(300),
        );
        let q = query("a");
        let started = Instant::now();
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (o, q) = (o.clone(), q.clone());
                tokio::spawn(async move { o.get(&q).await.unwrap().waiting })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), 1);
        }
        assert_eq!(o.backend_reads(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_slower_than_the_deadline_is_a_timeout_at_the_deadline() {
        let o = observations(
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        let started = Instant::now();
        let e = o.get(&query("a")).await.unwrap_err();
        assert!(matches!(e, SourceError::Timeout { .. }), "{e:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // A call that waits for another's read gives up at its own deadline, not the read's.
        let (o2, q) = (o.clone(), query("b"));
        let first = tokio::spawn(async move { o2.get(&q).await });
        tokio::task::yield_now().await;
        let started = Instant::now();
        let e = o
            .get_by(&query("b"), Instant::now() + Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::Timeout { .. }), "{e:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(first.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_answers_for_the_ttl_too_and_is_never_a_zero() {
        let mut o = Observations::new(
            Arc::new(Backends::default()),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        o.fake = Some(FakeRead(Arc::new(|_q| {
            Box::pin(async {
                Err(SourceError::Timeout {
                    endpoint: "r".into(),
                    after: Duration::from_secs(1),
                })
            })
        })));
        let q = query("a");
        assert!(o.get(&q).await.is_err());
        assert!(o.get(&q).await.is_err());
        assert_eq!(o.backend_reads(), 1, "the failure is cached like a reading");
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_forget_queries_idle_for_the_given_time_only() {
        let o = observations(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        o.get(&query("old")).await.unwrap();
        tokio::time::advance(Duration::from_secs(50)).await;
        o.get(&query("new")).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(o.sweep(Duration::from_secs(60)), 1, "old: 70 s idle");
        assert_eq!(o.len(), 1);
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(o.sweep(Duration::from_secs(60)), 1, "new: 61 s idle");
        assert!(o.is_empty());
    }
}
