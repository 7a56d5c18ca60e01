//! The `externalscaler.ExternalScaler` service KEDA calls.
//!
//! Rules from KEDA's side of the protocol (`reference/keda-external-scaler.md`):
//! - `GetMetricSpec` is derived from metadata alone — if it failed, KEDA's fallback would never
//!   engage — so it never touches the backend;
//! - exactly one `MetricValue`, with both the float and the (deprecated) int field set;
//! - metric names already normalised (lower case, KEDA's replacements);
//! - bad metadata is `INVALID_ARGUMENT` naming the key, an unreadable backend `UNAVAILABLE`
//!   (or `PERMISSION_DENIED` for refused credentials), never a 0.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use headroom_proto::externalscaler::external_scaler_server::ExternalScaler;
use headroom_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::access::Access;
use crate::demand::Seen;
use crate::error::Error;
use crate::metrics;
use crate::observations::Observations;
use crate::planned::Plans;
use crate::push::PushHub;
use crate::shared_state::SharedState;
use crate::sources::kafka::{Persistent, persistent_partitions};
use crate::sources::{Depth, SourceConfig, SourceError, SourceKind};
use crate::trigger::{Answer, Trigger};

/// How long a saved planner history is kept without being saved again.
pub const HISTORY_TTL: Duration = Duration::from_secs(8 * 86_400);

/// The scaler's state shared by all calls.
#[derive(Debug, Clone)]
pub struct Scaler {
    observations: Arc<Observations>,
    push: Arc<PushHub>,
    plans: Arc<Plans>,
    seen: Arc<Seen>,
    shutdown: CancellationToken,
    heartbeat: Duration,
    history: Arc<SharedState>,
    persistent_lag_interval: Duration,
    /// What the operator lets triggers name (Secrets' namespaces, backends).
    access: Arc<Access>,
}

/// Default of `--persistent-lag-interval`.
pub const PERSISTENT_LAG_INTERVAL: Duration = Duration::from_secs(1);

impl Scaler {
    /// `heartbeat`: how often an open `StreamIsActive` repeats its current state.
    pub fn new(
        observations: Arc<Observations>,
        push: Arc<PushHub>,
        shutdown: CancellationToken,
        heartbeat: Duration,
    ) -> Self {
        Self {
            observations,
            push,
            plans: Arc::default(),
            seen: Arc::default(),
            shutdown,
            heartbeat,
            history: Arc::new(SharedState::default()),
            persistent_lag_interval: PERSISTENT_LAG_INTERVAL,
            access: Arc::default(),
        }
    }

    /// Parses triggers under the operator's `access` rules (default: Secrets only in the
    /// ScaledObject's namespace, any backend).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = Arc::new(access);
        self
    }

    /// Parses a trigger of the ScaledObject in `namespace` under the operator's rules.
    pub fn parse_trigger(
        &self,
        metadata: &std::collections::HashMap<String, String>,
        namespace: &str,
    ) -> Result<Trigger, crate::metadata::MetadataError> {
        Trigger::parse_with(metadata, namespace, &self.access)
    }

    fn parse<'r>(
        &self,
        r: Option<&'r ScaledObjectRef>,
    ) -> Result<(&'r ScaledObjectRef, Trigger), Error> {
        let r = r.ok_or(Error::Request("request has no scaledObjectRef"))?;
        Ok((r, self.parse_trigger(&r.scaler_metadata, &r.namespace)?))
    }

    /// Keeps per-trigger state (Kafka's `excludePersistentLag`) in `history`, comparing with
    /// readings at least `interval` older.
    pub fn with_history(mut self, history: Arc<SharedState>, interval: Duration) -> Self {
        self.history = history;
        self.persistent_lag_interval = interval;
        self
    }

    pub fn observations(&self) -> &Arc<Observations> {
        &self.observations
    }

    /// Planned mode's per-queue planners.
    pub fn plans(&self) -> &Arc<Plans> {
        &self.plans
    }

    /// The triggers KEDA has called about, for the Demand service.
    pub fn seen(&self) -> &Arc<Seen> {
        &self.seen
    }

    /// Resolves when the server begins shutting down.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// Queues watched for push activation right now.
    pub fn push_watchers(&self) -> usize {
        self.push.watchers()
    }

    /// The spec KEDA puts in the HPA: from metadata only.
    pub fn metric_spec(trigger: &Trigger) -> GetMetricSpecResponse {
        let target = trigger.target();
        #[allow(deprecated)]
        GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: trigger.metric_name.clone(),
                target_size: target.ceil() as i64,
                target_size_float: target,
            }],
        }
    }

    /// Reads the trigger's queue (through the observation cache) and answers for it, within
    /// one deadline taken now (`--backend-timeout`): the read, the persistent-lag state and the
    /// history restore all count against it.
    pub async fn answer(&self, r: &ScaledObjectRef, trigger: &Trigger) -> Result<Answer, Error> {
        let deadline = self.observations.deadline();
        let source_error = |error| Error::Source {
            source_name: trigger.kind().name(),
            error,
        };
        let (depth, read_at) = self
            .observations
            .get_by(&trigger.query(), deadline)
            .await
            .map_err(source_error)?;
        let persistent =
            match tokio::time::timeout_at(deadline, self.persistent(r, trigger, &depth)).await {
                Ok(p) => p.map_err(source_error)?,
                Err(_) => {
                    return Err(source_error(SourceError::Timeout {
                        endpoint: self.history.label(),
                        after: self.observations.timeout(),
                    }));
                }
            };
        self.seen.record(
            &r.namespace,
            &r.name,
            &trigger.metric_name,
            &r.scaler_metadata,
        );
        // Only what is left of the deadline: a slow history store costs the learned history
        // (the answer starts reactive), never the answer.
        let _ = tokio::time::timeout_at(deadline, self.restore_history(trigger)).await;
        let answer = self.evaluate(trigger, &depth, &persistent, read_at);
        if trigger.planned().is_some() {
            metrics::desired_replicas(
                &r.namespace,
                &r.name,
                &trigger.metric_name,
                answer.value as u32,
            );
        }
        metrics::trigger_reading(
            &r.namespace,
            &r.name,
            &trigger.metric_name,
            trigger.kind(),
            depth.waiting,
            depth.in_flight,
            answer.value,
        );
        Ok(answer)
    }

    /// Planned mode: before a queue's first answer in this process, continue from the history
    /// another replica (or this one before a restart) saved. A store that cannot be read only
    /// costs the learned history: the answer starts reactive, never at zero.
    pub async fn restore_history(&self, trigger: &Trigger) {
        let Some(config) = trigger.planned() else {
            return;
        };
        let query = trigger.query();
        if self.plans.contains(&query, config) {
            return;
        }
        let key = Plans::key_of(&query, config);
        match self.history.get(&key).await {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(state) => {
                    self.plans.restore(&query, config, state);
                    tracing::debug!(key, "planner history restored");
                }
                Err(error) => {
                    tracing::warn!(%error, key, "stored planner history unreadable; starting afresh")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "planner history store unavailable; starting afresh")
            }
        }
    }

    /// Saves every planner's history to the store (kept for 8 days: a week of seasonality and
    /// a margin). Returns how many were saved.
    pub async fn save_history(&self) -> usize {
        let mut saved = 0;
        for (key, state) in self.plans.snapshot() {
            let Ok(bytes) = serde_json::to_vec(&state) else {
                continue;
            };
            match self.history.set(&key, bytes, HISTORY_TTL).await {
                Ok(()) => saved += 1,
                Err(error) => {
                    tracing::warn!(%error, "planner history not saved");
                    break;
                }
            }
        }
        saved
    }

    /// The answer for a reading taken at `read_at`: KEDA's rule in depth mode, the planner's
    /// in planned mode (which also records the reading in the queue's history).
    pub fn evaluate(
        &self,
        trigger: &Trigger,
        depth: &Depth,
        persistent: &Persistent,
        read_at: SystemTime,
    ) -> Answer {
        match trigger.planned() {
            None => trigger.answer(depth, persistent),
            Some(config) => {
                let a = self.plans.answer(
                    &trigger.query(),
                    config,
                    depth,
                    read_at,
                    SystemTime::now(),
                    None,
                );
                Answer {
                    value: f64::from(a.decision.desired),
                    active: a.decision.active,
                }
            }
        }
    }

    /// Kafka's `excludePersistentLag`: the partitions stuck since the previous read of this
    /// trigger. A history store that cannot be read is an error, never "nothing is stuck".
    async fn persistent(
        &self,
        r: &ScaledObjectRef,
        trigger: &Trigger,
        depth: &crate::sources::Depth,
    ) -> Result<Persistent, SourceError> {
        let (SourceConfig::Kafka(m), Some(offsets)) = (&trigger.source, &depth.kafka) else {
            return Ok(Persistent::default());
        };
        if !m.exclude_persistent_lag {
            return Ok(Persistent::default());
        }
        let key = m
            .query()
            .state_key(&r.namespace, &r.name, &trigger.metric_name);
        persistent_partitions(&self.history, &key, offsets, self.persistent_lag_interval)
            .await
            .map_err(|e| SourceError::Unavailable {
                endpoint: self.history.label(),
                source: Arc::new(e),
            })
    }

    pub fn metric_value(trigger: &Trigger, answer: &Answer) -> GetMetricsResponse {
        #[allow(deprecated)]
        GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: trigger.metric_name.clone(),
                metric_value: answer.value.round() as i64,
                metric_value_float: answer.value,
            }],
        }
    }
}

/// Times a call, records its metrics, and turns its error into a status.
async fn observe<T>(
    rpc: &'static str,
    r: Option<&ScaledObjectRef>,
    call: impl Future<Output = Result<(T, SourceKind), (Error, Option<SourceKind>)>>,
) -> Result<T, Status> {
    let start = Instant::now();
    let span = tracing::info_span!(
        "rpc",
        rpc,
        scaled_object = r
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .unwrap_or_default(),
        source = tracing::field::Empty,
    );
    let result = call.instrument(span.clone()).await;
    match result {
        Ok((value, kind)) => {
            span.record("source", kind.name());
            metrics::rpc(rpc, Some(kind), tonic::Code::Ok, start.elapsed());
            Ok(value)
        }
        Err((error, kind)) => {
            let status = Status::from(error);
            metrics::rpc(rpc, kind, status.code(), start.elapsed());
            span.in_scope(
                || tracing::debug!(code = ?status.code(), message = status.message(), "rpc failed"),
            );
            Err(status)
        }
    }
}

type PushStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let r = request.into_inner();
        observe("is_active", Some(&r), async {
            let (r, trigger) = self.parse(Some(&r)).map_err(|e| (e, None))?;
            let kind = trigger.kind();
            let answer = self
                .answer(r, &trigger)
                .await
                .map_err(|e| (e, Some(kind)))?;
            Ok((
                IsActiveResponse {
                    result: answer.active,
                },
                kind,
            ))
        })
        .await
        .map(Response::new)
    }

    type StreamIsActiveStream = PushStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        let trigger = observe("stream_is_active", Some(&r), async {
            let (_, trigger) = self.parse(Some(&r)).map_err(|e| (e, None))?;
            let kind = trigger.kind();
            Ok((trigger, kind))
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        let span = tracing::info_span!(
            "push",
            scaled_object = format!("{}/{}", r.namespace, r.name),
            source = trigger.kind().name()
        );
        let scaler = self.clone();
        tokio::spawn(async move { scaler.push_stream(trigger, tx).await }.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let r = request.into_inner();
        observe("get_metric_spec", Some(&r), async {
            let (_, trigger) = self.parse(Some(&r)).map_err(|e| (e, None))?;
            Ok((Self::metric_spec(&trigger), trigger.kind()))
        })
        .await
        .map(Response::new)
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let req = request.into_inner();
        let r = req.scaled_object_ref.as_ref();
        observe("get_metrics", r, async {
            let (r, trigger) = self.parse(r).map_err(|e| (e, None))?;
            let kind = trigger.kind();
            if !req.metric_name.eq_ignore_ascii_case(&trigger.metric_name) {
                // KEDA files the value under the name it asked for, so answering is safe; a
                // mismatch means the ScaledObject changed between spec and value.
                tracing::debug!(
                    asked = req.metric_name,
                    ours = trigger.metric_name,
                    "metric name differs"
                );
            }
            let answer = self
                .answer(r, &trigger)
                .await
                .map_err(|e| (e, Some(kind)))?;
            Ok((Self::metric_value(&trigger, &answer), kind))
        })
        .await
        .map(Response::new)
    }

    type StreamMetricSpecStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

    /// Specs depend only on metadata, which cannot change under an open stream: KEDA stops
    /// asking after `UNIMPLEMENTED` and uses `GetMetricSpec`.
    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented(
            "StreamMetricSpec is not needed: specs depend only on metadata; use GetMetricSpec",
        ))
    }
}

impl Scaler {
    /// Feeds one `StreamIsActive` stream: the current state as soon as it is known, then every
    /// change, and the current state again every heartbeat. Ends when the client goes away or
    /// the server shuts down (KEDA then reconnects, to another replica if this one is leaving).
    async fn push_stream(
        self,
        trigger: Trigger,
        tx: mpsc::Sender<Result<IsActiveResponse, Status>>,
    ) {
        metrics::push_streams(1.0);
        let mut readings = self.push.subscribe(&trigger.query());
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.tick().await; // the first tick is immediate
        let mut sent: Option<bool> = None;
        // Planned mode can turn active with no change in the queue (a schedule window opening,
        // the forecast), so its streams re-evaluate every second; depth mode only on readings.
        let mut reevaluate = tokio::time::interval(if trigger.planned().is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(86_400)
        });
        reevaluate.tick().await;
        let mut last: Option<(Depth, SystemTime)> = None;
        loop {
            if let Some(Ok(depth)) = readings.borrow_and_update().clone()
                && last.as_ref().is_none_or(|(d, _)| *d != depth)
            {
                last = Some((depth, SystemTime::now()));
            }
            if let Some((depth, read_at)) = &last {
                // Activation never depends on persistent-lag state.
                let active = self
                    .evaluate(&trigger, depth, &Persistent::default(), *read_at)
                    .active;
                if sent != Some(active) {
                    if active && sent == Some(false) {
                        metrics::push_activation(trigger.kind());
                        tracing::info!(waiting = depth.waiting, "queue became active; pushing");
                    }
                    if tx
                        .send(Ok(IsActiveResponse { result: active }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent = Some(active);
                }
            }
            tokio::select! {
                changed = readings.changed() => if changed.is_err() { break },
                _ = reevaluate.tick() => {}
                _ = heartbeat.tick() => {
                    if let Some(active) = sent
                        && tx.send(Ok(IsActiveResponse { result: active })).await.is_err()
                    {
                        break;
                    }
                }
                () = tx.closed() => break,
                () = self.shutdown.cancelled() => break,
            }
        }
        metrics::push_streams(-1.0);
    }
}
