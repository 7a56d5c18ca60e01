//! One read per queue: readings keyed by [`Query`] (endpoint + queue set + read options),
//! concurrent requests for the same query coalesced into one backend round trip, and the result
//! served for a short TTL so that the `GetMetrics` and `IsActive` of one KEDA poll agree and a
//! thousand triggers on one queue cost one read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

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
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Backend reads started, for tests and benchmarks (the metrics say the same per source).
    reads: AtomicU64,
}

/// Concurrent reads per backend endpoint.
pub const READS_PER_ENDPOINT: usize = 64;

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
            limits: Mutex::default(),
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

    /// A reading no older than the TTL, with the wall-clock time it was taken.
    pub async fn get_at(&self, query: &Query) -> Result<(Depth, SystemTime), SourceError> {
        if self.ttl.is_zero() {
            let at = SystemTime::now();
            return self.read(query).await.map(|d| (d, at));
        }
        let slot = self.slot(query);
        let mut reading = slot.reading.lock().await;
        if let Some(r) = reading.as_ref().filter(|r| r.started.elapsed() < self.ttl) {
            metrics::observation_served(query.kind(), true);
            return r.result.clone().map(|d| (d, r.at));
        }
        metrics::observation_served(query.kind(), false);
        let (started, at) = (Instant::now(), SystemTime::now());
        let result = self.read(query).await;
        *reading = Some(Reading {
            started,
            at,
            result: result.clone(),
        });
        result.map(|d| (d, at))
    }

    /// A reading that started after this call: for push activation, which must not act on a
    /// reading taken before the event it reacts to. Concurrent fresh reads still coalesce.
    pub async fn fresh(&self, query: &Query) -> Result<Depth, SourceError> {
        let asked = Instant::now();
        if self.ttl.is_zero() {
            return self.read(query).await;
        }
        let slot = self.slot(query);
        let mut reading = slot.reading.lock().await;
        if let Some(r) = reading.as_ref().filter(|r| r.started >= asked) {
            return r.result.clone();
        }
        let (started, at) = (Instant::now(), SystemTime::now());
        let result = self.read(query).await;
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
                let s = Arc::new(Slot::default());
                slots.insert(query.clone(), s.clone());
                s
            }
        };
        slot.last_used.store(now, Ordering::Relaxed);
        slot
    }

    /// One backend read: waits at most `timeout` for a turn at the endpoint, then at most
    /// `timeout` for the read itself.
    async fn read(&self, query: &Query) -> Result<Depth, SourceError> {
        let kind = query.kind();
        let endpoint = query.endpoint_label();
        let timed_out = || SourceError::Timeout {
            endpoint: query.endpoint_label(),
            after: self.timeout,
        };
        let limit = {
            let mut limits = self
                .limits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limits
                .entry(endpoint)
                .or_insert_with(|| Arc::new(Semaphore::new(READS_PER_ENDPOINT)))
                .clone()
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(self.timeout, limit.acquire_owned()).await
        else {
            metrics::backend_read(kind, Duration::ZERO, Some(&timed_out()));
            return Err(timed_out());
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let deadline = start + self.timeout;
        let result =
            match tokio::time::timeout(self.timeout, query.read(&self.backends, deadline)).await {
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
