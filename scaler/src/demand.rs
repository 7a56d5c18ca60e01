//! `headroom.v1.Demand`: what a ScaledObject's queues need now and over the next horizon, for
//! headroom-provisioner.
//!
//! A request names the ScaledObject and may carry its triggers' metadata; without it the scaler
//! answers for the triggers KEDA last called it about for that ScaledObject (so the provisioner
//! needs no copy of the metadata, and `...FromEnv` values are already resolved). Planned-mode
//! triggers answer from their planner (backlog, arrival rate, service time, forecast); depth
//! triggers answer what the HPA would do with their value, flat over the horizon.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use headroom_proto::headroom::v1::demand_server::Demand;
use headroom_proto::headroom::v1::{DemandRequest, DemandResponse, ForecastPoint, TriggerDemand};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::bounds;
use crate::metrics;
use crate::planned::unix_seconds;
use crate::service::Scaler;
use crate::trigger::Trigger;

/// Default forecast step.
pub const DEFAULT_STEP: Duration = Duration::from_secs(30);
/// The shortest default horizon.
pub const MIN_DEFAULT_HORIZON: Duration = Duration::from_secs(600);
/// The longest horizon answered.
pub const MAX_HORIZON: Duration = Duration::from_secs(86_400);

/// A ScaledObject's triggers by metric name: metadata and when KEDA last sent it.
type Triggers = BTreeMap<String, (HashMap<String, String>, Instant)>;

/// Trigger metadata KEDA sent, per ScaledObject (namespace, name) and metric name. It holds
/// resolved `...FromEnv` secrets: `Debug` shows only how many.
#[derive(Default)]
pub struct Seen {
    triggers: Mutex<HashMap<(String, String), Triggers>>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_struct("Seen")
            .field("scaled_objects", &t.len())
            .field("triggers", &t.values().map(BTreeMap::len).sum::<usize>())
            .finish()
    }
}

impl Seen {
    pub fn record(&self, namespace: &str, name: &str, metric: &str, md: &HashMap<String, String>) {
        let mut t = self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let so = t.entry((namespace.into(), name.into())).or_default();
        match so.get_mut(metric) {
            Some((m, at)) => {
                if m != md {
                    *m = md.clone();
                }
                *at = Instant::now();
            }
            None => {
                so.insert(metric.into(), (md.clone(), Instant::now()));
            }
        }
    }

    /// The triggers of a ScaledObject, in metric-name order.
    pub fn triggers(&self, namespace: &str, name: &str) -> Vec<HashMap<String, String>> {
        let t = self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.get(&(namespace.to_string(), name.to_string()))
            .map(|so| so.values().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    }

    /// Forgets triggers not seen for `idle` (a deleted ScaledObject, a changed metric name).
    pub fn sweep(&self, idle: Duration) {
        let mut t = self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for so in t.values_mut() {
            so.retain(|_, (_, at)| at.elapsed() < idle);
        }
        t.retain(|_, so| !so.is_empty());
    }
}

fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

impl Scaler {
    /// One Demand answer.
    pub async fn demand(&self, req: &DemandRequest) -> Result<DemandResponse, Status> {
        if req.namespace.is_empty() || req.name.is_empty() {
            return Err(Status::invalid_argument(
                "namespace and name of the ScaledObject are required",
            ));
        }
        if req.horizon_ms < 0 || req.step_ms < 0 || (req.step_ms > 0 && req.step_ms < 1000) {
            return Err(Status::invalid_argument(
                "horizon_ms must be ≥ 0 and step_ms 0 (default 30 s) or ≥ 1000",
            ));
        }
        if req.triggers.len() > bounds::MAX_DEMAND_TRIGGERS {
            return Err(Status::invalid_argument(format!(
                "triggers: {} given; at most {} per request (the scaler's bound)",
                req.triggers.len(),
                bounds::MAX_DEMAND_TRIGGERS
            )));
        }
        let metadata: Vec<HashMap<String, String>> = if req.triggers.is_empty() {
            self.seen().triggers(&req.namespace, &req.name)
        } else {
            req.triggers.iter().map(|t| t.metadata.clone()).collect()
        };
        if metadata.is_empty() {
            return Err(Status::not_found(format!(
                "no trigger of ScaledObject {}/{} has called this scaler yet; pass the trigger metadata in the request or wait for KEDA's first poll",
                req.namespace, req.name
            )));
        }
        let parsed: Vec<Result<Trigger, String>> = metadata
            .iter()
            .map(|m| {
                self.parse_trigger(m, &req.namespace)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let lead = parsed
            .iter()
            .flatten()
            .filter_map(|t| t.planned().map(|c| c.lead_time_seconds))
            .fold(0.0f64, f64::max);
        let step = if req.step_ms == 0 {
            DEFAULT_STEP.as_secs_f64()
        } else {
            req.step_ms as f64 / 1000.0
        };
        let horizon = if req.horizon_ms == 0 {
            (2.0 * lead).max(MIN_DEFAULT_HORIZON.as_secs_f64())
        } else {
            req.horizon_ms as f64 / 1000.0
        }
        .min(MAX_HORIZON.as_secs_f64());
        let points = (horizon / step).floor() + 1.0;
        if points > bounds::MAX_FORECAST_POINTS as f64 {
            return Err(Status::invalid_argument(format!(
                "horizon_ms / step_ms: {points} forecast points; at most {} (the scaler's bound): \
                 use a longer step",
                bounds::MAX_FORECAST_POINTS
            )));
        }

        let now = SystemTime::now();
        // One deadline for the whole call, however many triggers it reads.
        let deadline = self.observations().deadline();
        let mut triggers = Vec::with_capacity(parsed.len());
        let mut observed_at = 0.0f64;
        for t in parsed {
            let trigger = match t {
                Ok(t) => t,
                Err(error) => {
                    triggers.push(TriggerDemand {
                        error,
                        ..Default::default()
                    });
                    continue;
                }
            };
            let mut d = TriggerDemand {
                metric_name: trigger.metric_name.clone(),
                source: trigger.kind().name().into(),
                forecast_state: "off".into(),
                forecast_error: -1.0,
                ..Default::default()
            };
            let (depth, read_at) =
                match self.observations().get_by(&trigger.query(), deadline).await {
                    Ok(r) => r,
                    Err(error) => {
                        // The same text as GetMetrics's status for this failure.
                        d.error = crate::error::Error::Source {
                            source_name: trigger.kind().name(),
                            error,
                        }
                        .to_string();
                        triggers.push(d);
                        continue;
                    }
                };
            observed_at = observed_at.max(unix_seconds(read_at));
            d.waiting = depth.waiting as f64;
            d.in_flight = depth.in_flight as f64;
            let _ = tokio::time::timeout_at(deadline, self.restore_history(&trigger)).await;
            match trigger.planned() {
                Some(config) => {
                    let a = self.plans().answer(
                        &trigger.query(),
                        config,
                        &depth,
                        read_at,
                        now,
                        Some((horizon, step)),
                    );
                    d.desired_replicas = a.decision.desired;
                    if let Some(i) = a.inputs {
                        d.arrival_rate = i.arrival_rate.unwrap_or(0.0);
                        d.service_time_seconds = i.service_time.unwrap_or(0.0);
                    }
                    d.forecast = a
                        .forecast
                        .iter()
                        .zip(&a.forecast_rates)
                        .map(|((at, replicas), rate)| ForecastPoint {
                            at_unix_ms: ms(*at),
                            replicas: *replicas,
                            arrivals_per_second: *rate,
                        })
                        .collect();
                    d.forecast_state = a.forecast_state.into();
                    d.forecast_error = a.forecast_error.unwrap_or(-1.0);
                    if let Some(e) = a.forecast_error {
                        metrics::forecast_error(&req.namespace, &req.name, &trigger.metric_name, e);
                    }
                }
                None => {
                    // What the HPA does with an AverageValue metric: ceil(value / target).
                    let answer = trigger.answer_now(&depth);
                    let replicas = (answer.value / trigger.target()).ceil().clamp(0.0, 1e6) as u32;
                    d.desired_replicas = replicas;
                    let n = (horizon / step).floor() as usize;
                    let start = unix_seconds(now);
                    d.forecast = (0..=n)
                        .map(|i| ForecastPoint {
                            at_unix_ms: ms(start + i as f64 * step),
                            replicas,
                            arrivals_per_second: 0.0,
                        })
                        .collect();
                }
            }
            metrics::forecast_replicas(
                &req.namespace,
                &req.name,
                &trigger.metric_name,
                d.forecast.iter().map(|p| p.replicas).max().unwrap_or(0),
            );
            triggers.push(d);
        }

        let readable: Vec<&TriggerDemand> =
            triggers.iter().filter(|t| t.error.is_empty()).collect();
        if readable.is_empty() {
            // Every trigger failed: an error, never a demand of 0.
            let reasons: Vec<&str> = triggers.iter().map(|t| t.error.as_str()).collect();
            return Err(Status::unavailable(reasons.join("; ")));
        }
        let desired = readable
            .iter()
            .map(|t| t.desired_replicas)
            .max()
            .unwrap_or(0);
        let points = readable.iter().map(|t| t.forecast.len()).max().unwrap_or(0);
        let forecast = (0..points)
            .map(|i| {
                let at = readable
                    .iter()
                    .filter_map(|t| t.forecast.get(i))
                    .map(|p| p.at_unix_ms)
                    .next()
                    .unwrap_or_default();
                ForecastPoint {
                    at_unix_ms: at,
                    replicas: readable
                        .iter()
                        .filter_map(|t| t.forecast.get(i))
                        .map(|p| p.replicas)
                        .max()
                        .unwrap_or(0),
                    arrivals_per_second: readable
                        .iter()
                        .filter_map(|t| t.forecast.get(i))
                        .map(|p| p.arrivals_per_second)
                        .sum(),
                }
            })
            .collect();
        Ok(DemandResponse {
            namespace: req.namespace.clone(),
            name: req.name.clone(),
            observed_at_unix_ms: ms(observed_at),
            desired_replicas: desired,
            forecast,
            lead_time_ms: ms(lead),
            triggers,
        })
    }
}

type DemandStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DemandResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Demand for Scaler {
    async fn get_demand(
        &self,
        request: Request<DemandRequest>,
    ) -> Result<Response<DemandResponse>, Status> {
        let start = Instant::now();
        let result = self.demand(request.get_ref()).await;
        metrics::rpc(
            "get_demand",
            None,
            result
                .as_ref()
                .map(|_| tonic::Code::Ok)
                .unwrap_or_else(|s| s.code()),
            start.elapsed(),
        );
        result.map(Response::new)
    }

    type WatchDemandStream = DemandStream;

    /// The current answer at once, then whenever the desired replicas or the forecast change
    /// (checked every second), and at least every step.
    async fn watch_demand(
        &self,
        request: Request<DemandRequest>,
    ) -> Result<Response<Self::WatchDemandStream>, Status> {
        let req = request.into_inner();
        let first = self.demand(&req).await?;
        let step = if req.step_ms == 0 {
            DEFAULT_STEP
        } else {
            Duration::from_millis(req.step_ms.unsigned_abs())
        };
        let (tx, rx) = mpsc::channel(4);
        let scaler = self.clone();
        tokio::spawn(async move {
            let shape = |r: &DemandResponse| {
                (
                    r.desired_replicas,
                    r.forecast.iter().map(|p| p.replicas).collect::<Vec<_>>(),
                )
            };
            let mut last = shape(&first);
            let mut sent = Instant::now();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                    () = scaler.shutting_down() => return,
                }
                let next = scaler.demand(&req).await;
                let send = match &next {
                    Ok(r) => shape(r) != last || sent.elapsed() >= step,
                    Err(_) => sent.elapsed() >= step,
                };
                if send {
                    if let Ok(r) = &next {
                        last = shape(r);
                    }
                    sent = Instant::now();
                    if tx.send(next).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
