//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder acts; the others stay
//! ready and wait.
//!
//! The holder renews every third of the lease duration. Another replica takes the Lease over
//! once it has seen the Lease unchanged (holder, `renewTime`, resourceVersion) for
//! `leaseDurationSeconds` by its *own* clock — the leader's wall-clock `renewTime` is never
//! compared with ours, so clock skew between nodes cannot cause an early takeover (client-go's
//! rule). Writes carry the resourceVersion read, so of two replicas racing for an expired Lease
//! exactly one wins (the other gets 409 Conflict).
//!
//! Every Lease call has a deadline: a round ends by the renew deadline (two thirds of the
//! duration after the last renewal was sent), so a hanging API call cannot keep a holder
//! believing it leads. The holder's [`Leadership`] is valid until that deadline; the
//! controller checks it right before every provider write, so nothing is written after the
//! Lease may have passed to someone else. On graceful shutdown the holder releases the Lease
//! (empty holder, duration 1 s), so a successor takes over at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Where the Lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {namespace}/{name}: no answer within {deadline:?}")]
    Timeout {
        namespace: String,
        name: String,
        deadline: Duration,
    },
}

/// Whether this replica may act now: valid until the renew deadline of its last renewal.
/// Cheap to check; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Leadership(Arc<Mutex<Option<Instant>>>);

impl Leadership {
    /// Leadership that is always held (embedding without an election, and tests).
    pub fn always() -> Self {
        let l = Self::default();
        // Far enough (30 years), as tokio's own "far future".
        l.hold_until(Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600));
        l
    }

    /// Held, right now.
    pub fn is_held(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    fn hold_until(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    fn drop_now(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The parts of a Lease whose change shows its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub renew_time: Option<Timestamp>,
    pub resource_version: Option<String>,
    pub duration: Duration,
}

/// What a replica last saw of the Lease, and when (by its own clock) that last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub since: Instant,
}

/// Records `record` as seen at `now` and says whether the Lease is free to take: no holder,
/// or unchanged for its whole duration by our clock since we first saw it so. A record never
/// seen before starts the wait afresh.
pub fn expired(observed: &mut Option<Observed>, record: LeaseRecord, now: Instant) -> bool {
    if record.holder.is_empty() {
        *observed = Some(Observed { record, since: now });
        return true;
    }
    match observed {
        Some(o) if o.record == record => now.saturating_duration_since(o.since) >= record.duration,
        _ => {
            *observed = Some(Observed { record, since: now });
            false
        }
    }
}

/// Runs the election until `shutdown`, publishing whether this replica leads on `leading`.
/// `stopped` is awaited (the caller's acting stopped) before the Lease is released.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    leadership: Leadership,
    shutdown: CancellationToken,
    stopped: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let period = (config.duration / 3).max(Duration::from_millis(200));
    // Client-go's renew deadline: before another replica can see the Lease unchanged for a
    // whole duration.
    let renew_deadline = config.duration * 2 / 3;
    let mut last_renew: Option<Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        let sent = Instant::now();
        // One deadline for the whole round: what is left of the renew deadline while leading.
        let deadline = match last_renew {
            Some(t) => (t + renew_deadline).saturating_duration_since(sent),
            None => renew_deadline,
        }
        .max(Duration::from_millis(100));
        let round = tokio::time::timeout(deadline, try_acquire(&api, &config, &mut observed));
        let result = match round.await {
            Ok(r) => r,
            Err(_) => Err(LeaseError::Timeout {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                deadline,
            }),
        };
        match result {
            Ok(true) => {
                last_renew = Some(sent);
                leadership.hold_until(sent + renew_deadline);
            }
            Ok(false) => {
                last_renew = None;
                leadership.drop_now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_renew.is_some_and(|t| t.elapsed() >= renew_deadline) {
                    last_renew = None;
                    leadership.drop_now();
                }
            }
        }
        let lead = last_renew.is_some();
        if *leading.borrow() != lead {
            tracing::info!(identity = %config.identity, leader = lead, "leadership changed");
            metrics::leader(lead);
            let _ = leading.send(lead);
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => break,
        }
    }
    let was_leader = *leading.borrow();
    let _ = leading.send(false);
    metrics::leader(false);
    stopped.await;
    leadership.drop_now();
    if was_leader {
        match tokio::time::timeout(renew_deadline, release(&api, &config)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the lease"),
            Err(_) => {
                tracing::warn!(deadline = ?renew_deadline, "cannot release the lease: no answer")
            }
        }
    }
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

fn kube_err(config: &LeaseConfig, source: kube::Error) -> LeaseError {
    LeaseError::Kube {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        source,
    }
}

/// One round: creates, renews or takes over the Lease. `Ok(true)` when we hold it now.
/// `observed` carries what this replica saw of another holder's Lease between rounds.
pub async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, LeaseError> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let existing = api
        .get_opt(&config.name)
        .await
        .map_err(|e| kube_err(config, e))?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(micro(now)),
                renew_time: Some(micro(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(kube_err(config, e)),
        };
    };
    let resource_version = lease.metadata.resource_version.clone();
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = LeaseRecord {
        holder: holder.clone(),
        renew_time: spec.renew_time.as_ref().map(|t| t.0),
        resource_version,
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0).max(0)).unwrap_or(0),
        ),
    };
    if holder != config.identity && !expired(observed, record, Instant::now()) {
        return Ok(false);
    }
    if holder != config.identity {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(micro(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(micro(now));
    spec.lease_duration_seconds = Some(seconds);
    // The resourceVersion read makes this write fail if anyone wrote in between.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(kube_err(config, e)),
    }
}

/// Gives the Lease up, if we still hold it.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), LeaseError> {
    let Some(mut lease) = api
        .get_opt(&config.name)
        .await
        .map_err(|e| kube_err(config, e))?
    else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(Timestamp::now()));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            tracing::info!(identity = %config.identity, "lease released");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(config, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed_s: i64, rv: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            renew_time: Timestamp::from_second(renewed_s).ok(),
            resource_version: Some(rv.into()),
            duration: Duration::from_secs(15),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_by_our_clock_only_after_it_stopped_changing_for_its_duration() {
        let mut seen = None;
        // First sight: the wait starts now, whatever renewTime says (here: long ago).
        assert!(!expired(&mut seen, record("a", 0, "1"), Instant::now()));
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(!expired(&mut seen, record("a", 0, "1"), Instant::now()));
        // A renewal (a new resourceVersion) restarts the wait.
        assert!(!expired(&mut seen, record("a", 0, "2"), Instant::now()));
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(!expired(&mut seen, record("a", 0, "2"), Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expired(&mut seen, record("a", 0, "2"), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_clock_far_ahead_or_behind_does_not_change_when_we_take_over() {
        for renewed in [-1_000_000_000, 4_000_000_000] {
            let mut seen = None;
            assert!(!expired(
                &mut seen,
                record("a", renewed, "7"),
                Instant::now()
            ));
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(!expired(
                &mut seen,
                record("a", renewed, "7"),
                Instant::now()
            ));
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(expired(
                &mut seen,
                record("a", renewed, "7"),
                Instant::now()
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_free_at_once() {
        let mut seen = None;
        assert!(expired(&mut seen, record("", 0, "3"), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_lapses_at_its_deadline_without_a_renewal() {
        let l = Leadership::default();
        assert!(!l.is_held());
        l.hold_until(Instant::now() + Duration::from_secs(10));
        assert!(l.clone().is_held());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!l.is_held());
        assert!(Leadership::always().is_held());
    }
}
