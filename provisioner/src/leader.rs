//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder acts; the others stay
//! ready and wait.
//!
//! The holder renews every third of the lease duration. Another replica takes the Lease over
//! once `renewTime + leaseDurationSeconds` has passed; writes carry the resourceVersion read, so
//! of two replicas racing for an expired Lease exactly one wins (the other gets 409 Conflict).
//! A holder that cannot renew for a whole lease duration stops acting before anyone else can
//! take over. On graceful shutdown the holder releases the Lease (empty holder, duration 1 s),
//! so a successor takes over at once instead of waiting out the duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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
}

/// Runs the election until `shutdown`, publishing whether this replica leads on `leading`.
/// `stopped` is awaited (the caller's acting stopped) before the Lease is released.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
    stopped: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let period = (config.duration / 3).max(Duration::from_millis(200));
    let mut last_renew: Option<Instant> = None;
    loop {
        match try_acquire(&api, &config).await {
            Ok(true) => last_renew = Some(Instant::now()),
            Ok(false) => last_renew = None,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                // Stop leading at two thirds of the duration without a renewal (client-go's
                // renew deadline), before another replica can see the Lease expire.
                if last_renew.is_some_and(|t| t.elapsed() >= config.duration * 2 / 3) {
                    last_renew = None;
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
    if was_leader && let Err(e) = release(&api, &config).await {
        tracing::warn!(error = %e, "cannot release the lease");
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
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, LeaseError> {
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
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => {
            now > *renewed + SignedDuration::from_secs(i64::from(d))
        }
        _ => true,
    };
    if holder != config.identity && !holder.is_empty() && !expired {
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
