//! One read per queue: readings keyed by [`Query`] (endpoint + queue set + read options),
//! concurrent requests for the same query coalesced into one backend round trip, and the result
//! served for a short TTL so that the `GetMetrics` and `IsActive` of one KEDA poll agree and a
//! thousand triggers on one queue cost one read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

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
        let Ok(mut reading) = tokio::time::timeout_at(deadline.into(), slot.reading.lock()).await
        else {
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
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline.into(), limit.acquire_owned()).await
        else {
            metrics::backend_read(kind, Duration::ZERO, Some(&timed_out()));
            return Err(timed_out());
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result =
            match tokio::time::timeout_at(deadline.into(), query.read(&self.backends, deadline))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(timed_out()),
            };
        metrics::backend_read(kind, start.elapsed(), result.as_ref().err());
        result
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
