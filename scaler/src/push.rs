//! Push activation: one watcher per queue, shared by every `StreamIsActive` stream on it, so the
//! backend cost does not grow with the number of streams.
//!
//! A Redis watcher subscribes to keyspace notifications when the server publishes them for the
//! watched keys (`notify-keyspace-events` with `K` and the key type, or `A`), and reads the queue
//! on every event; otherwise it polls at a fast interval. SQS and Kafka cannot notify a reader
//! that is not a consumer, so their watcher polls at the broker poll interval — one read per
//! interval per queue, whatever the number of streams. Either way each reading goes through
//! [`Observations::fresh`], so it also refreshes what `GetMetrics` and `IsActive` answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::metrics;
use crate::observations::Observations;
use crate::sources::{Depth, Query, SourceError, WatchSpec, redis_conn::RedisEndpoint};

/// What a watcher publishes: the latest reading (`None` until the first one).
pub type Latest = Option<Result<Depth, SourceError>>;

/// Timing of push watchers.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// Poll interval when Redis cannot notify.
    pub poll_interval: Duration,
    /// Poll interval for brokers that never notify (SQS, Kafka): each tick is one backend
    /// read per watched queue, so it is slower than Redis's.
    pub broker_poll_interval: Duration,
    /// Safety read interval when notifications are on (a missed event is caught by this).
    pub event_recheck: Duration,
    /// Wait before retrying a broken subscription.
    pub retry: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(50),
            broker_poll_interval: Duration::from_millis(250),
            event_recheck: Duration::from_secs(2),
            retry: Duration::from_secs(1),
        }
    }
}

/// The registry of watchers.
#[derive(Debug)]
pub struct PushHub {
    observations: Arc<Observations>,
    settings: PushSettings,
    watchers: Mutex<HashMap<Query, watch::Sender<Latest>>>,
}

impl PushHub {
    pub fn new(observations: Arc<Observations>, settings: PushSettings) -> Arc<Self> {
        Arc::new(Self {
            observations,
            settings,
            watchers: Mutex::default(),
        })
    }

    /// Readings of `query`, starting a watcher if none runs. The watcher stops when the last
    /// receiver is dropped.
    pub fn subscribe(self: &Arc<Self>, query: &Query) -> watch::Receiver<Latest> {
        let mut watchers = self.lock();
        if let Some(tx) = watchers.get(query) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        watchers.insert(query.clone(), tx.clone());
        tokio::spawn(self.clone().run(query.clone(), tx));
        rx
    }

    /// Number of running watchers.
    pub fn watchers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Query, watch::Sender<Latest>>> {
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self: Arc<Self>, query: Query, tx: watch::Sender<Latest>) {
        loop {
            tokio::select! {
                _ = tx.closed() => {
                    // Decide under the registry lock, where new subscribers are added.
                    let mut watchers = self.lock();
                    if tx.receiver_count() == 0 {
                        if watchers.get(&query).is_some_and(|t| t.same_channel(&tx)) {
                            watchers.remove(&query);
                        }
                        return;
                    }
                }
                () = self.watch(&query, &tx) => {}
            }
        }
    }

    /// Runs until cancelled (by the caller's `select!`).
    async fn watch(&self, query: &Query, tx: &watch::Sender<Latest>) {
        match query.watch() {
            WatchSpec::RedisKeys {
                endpoint,
                keys,
                events,
            } => loop {
                match self.subscribe_redis(&endpoint, &keys, events).await {
                    Ok(Some(stream)) => {
                        metrics::push_watchers("events", 1.0);
                        let _gauge = Gauge("events");
                        self.follow_events(query, tx, stream).await;
                        tokio::time::sleep(self.settings.retry).await;
                    }
                    Ok(None) => {
                        metrics::push_watchers("poll", 1.0);
                        let _gauge = Gauge("poll");
                        self.poll(query, tx, self.settings.poll_interval).await;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "push subscription failed; polling");
                        metrics::push_watchers("poll", 1.0);
                        let _gauge = Gauge("poll");
                        // Poll for a while, then try to subscribe again.
                        let _ = tokio::time::timeout(
                            self.settings.retry * 10,
                            self.poll(query, tx, self.settings.poll_interval),
                        )
                        .await;
                    }
                }
            },
            WatchSpec::Poll => {
                metrics::push_watchers("poll", 1.0);
                let _gauge = Gauge("poll");
                self.poll(query, tx, self.settings.broker_poll_interval)
                    .await;
            }
        }
    }

    /// A pub/sub stream of keyspace events for `keys`, or `None` when the server does not
    /// publish the events needed.
    async fn subscribe_redis(
        &self,
        endpoint: &RedisEndpoint,
        keys: &[Vec<u8>],
        events: &str,
    ) -> Result<Option<redis::aio::PubSubStream>, SourceError> {
        let pool = &self.observations.backends().redis;
        let mut conn = pool.connection(endpoint).await?;
        let config: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await;
        let flags = match config {
            Ok(v) => v.get(1).cloned().unwrap_or_default(),
            Err(error) => {
                // Managed Redis often refuses CONFIG: fall back to polling.
                tracing::debug!(%error, "cannot read notify-keyspace-events; polling");
                return Ok(None);
            }
        };
        if !notifications_cover(&flags, events) {
            return Ok(None);
        }
        let mut pubsub = pool.pubsub(endpoint).await?;
        for key in keys {
            let mut channel = format!("__keyspace@{}__:", endpoint.db).into_bytes();
            channel.extend_from_slice(key);
            pubsub
                .subscribe(channel)
                .await
                .map_err(|e| crate::sources::redis_conn::classify(endpoint, e))?;
        }
        Ok(Some(pubsub.into_on_message()))
    }

    async fn follow_events(
        &self,
        query: &Query,
        tx: &watch::Sender<Latest>,
        mut stream: redis::aio::PubSubStream,
    ) {
        // Read once now: events before the subscription were not seen.
        publish(tx, self.observations.fresh(query).await);
        loop {
            let event = tokio::time::timeout(self.settings.event_recheck, stream.next()).await;
            let seen = Instant::now();
            match event {
                Ok(None) => return, // connection lost: resubscribe
                Ok(Some(_)) => {
                    // A burst of pushes needs one read: drain what has already arrived.
                    while let Some(Some(_)) = stream.next().now_or_never() {}
                    let result = self.observations.fresh(query).await;
                    if matches!(&result, Ok(d) if d.waiting > 0) {
                        metrics::push_detected(query.kind(), seen.elapsed());
                    }
                    publish(tx, result);
                }
                Err(_) => publish(tx, self.observations.fresh(query).await),
            }
        }
    }

    async fn poll(&self, query: &Query, tx: &watch::Sender<Latest>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            publish(tx, self.observations.fresh(query).await);
        }
    }
}

/// Decrements the watcher gauge when a watch mode ends (including by cancellation).
struct Gauge(&'static str);

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::push_watchers(self.0, -1.0);
    }
}

/// Whether `notify-keyspace-events` flags publish keyspace events for every type in `events`.
pub fn notifications_cover(flags: &str, events: &str) -> bool {
    flags.contains('K') && (flags.contains('A') || events.chars().all(|e| flags.contains(e)))
}

/// Publishes a reading, waking subscribers only when it differs from the last.
fn publish(tx: &watch::Sender<Latest>, result: Result<Depth, SourceError>) {
    tx.send_if_modified(|latest| {
        let same = match (latest.as_ref(), &result) {
            (Some(Ok(a)), Ok(b)) => a == b,
            (Some(Err(a)), Err(b)) => a.kind() == b.kind(),
            _ => false,
        };
        if !same {
            *latest = Some(result);
        }
        !same
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_flags_must_cover_the_watched_types() {
        assert!(notifications_cover("Kl", "l"));
        assert!(notifications_cover("AK", "lszh"));
        assert!(notifications_cover("KEA", "l"));
        assert!(!notifications_cover("El", "l"), "keyevent only");
        assert!(!notifications_cover("Ks", "l"));
        assert!(!notifications_cover("Kl", "lszh"));
        assert!(!notifications_cover("", "l"));
    }
}
