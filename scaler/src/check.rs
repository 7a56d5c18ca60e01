//! `headroom-scaler check`: what KEDA would receive for each Headroom trigger of a ScaledObject,
//! before it is applied — metric name, target, value, active — or the error it would get.
//!
//! By default the triggers are evaluated in this process with the scaler's own code against the
//! real backends; with `--address` the same three calls KEDA makes go over gRPC to a running
//! scaler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_proto::externalscaler::external_scaler_server::ExternalScaler;
use headroom_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::metadata::FROM_ENV;
use crate::observations::Observations;
use crate::push::{PushHub, PushSettings};
use crate::service::Scaler;
use crate::sources::Backends;

/// Flags of `headroom-scaler check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// A ScaledObject YAML file (several documents allowed; `-` reads standard input).
    #[arg(short = 'f', long = "file", conflicts_with = "set")]
    pub file: Option<PathBuf>,
    /// Trigger metadata as key=value pairs, instead of a file (repeat the flag).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Ask a running scaler at this address (host:port) over gRPC, as KEDA does, instead of
    /// evaluating in this process.
    #[arg(long, env = "HEADROOM_CHECK_ADDRESS")]
    pub address: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Deadline for each call.
    #[arg(long, default_value = "3s")]
    pub timeout: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One trigger's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub scaled_object: String,
    pub trigger_index: usize,
    pub trigger_type: String,
    /// The name KEDA shows (with its `s<index>-` prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keda_metric_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
    /// Things a user should know (e.g. a FromEnv variable missing here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportError {
    pub call: &'static str,
    pub code: String,
    pub message: String,
}

/// A trigger to check, as KEDA would send it.
#[derive(Debug, Clone)]
pub struct TriggerInput {
    pub name: String,
    pub namespace: String,
    pub index: usize,
    pub trigger_type: String,
    pub metadata: HashMap<String, String>,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error("cannot connect to the scaler at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Runs the check and prints the reports. Returns whether every trigger answered.
pub async fn run(args: &CheckArgs) -> Result<bool, CheckError> {
    let timeout = headroom_common::parse_duration(&args.timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CheckError::Input(format!("--timeout: {:?} is not a duration", args.timeout))
        })?;
    let inputs = if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|source| CheckError::Read {
            path: path.display().to_string(),
            source,
        })?;
        triggers_from_yaml(&text, &|k| std::env::var(k).ok())?
    } else if !args.set.is_empty() {
        vec![trigger_from_pairs(&args.set, &|k| std::env::var(k).ok())?]
    } else {
        return Err(CheckError::Input(
            "give a ScaledObject with -f FILE, or trigger metadata with --set key=value".into(),
        ));
    };
    if inputs.is_empty() {
        return Err(CheckError::Input(
            "no external or external-push triggers found".into(),
        ));
    }
    let target = match &args.address {
        Some(address) => Target::remote(address, timeout).await?,
        None => Target::local(timeout),
    };
    let mut reports = Vec::new();
    for input in inputs {
        reports.push(target.evaluate(input).await);
    }
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&reports)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        ),
        Output::Text => print!("{}", render_text(&reports)),
    }
    Ok(reports.iter().all(|r| r.error.is_none()))
}

/// Where the calls go.
#[derive(Debug)]
pub enum Target {
    Local(Scaler),
    Remote(ExternalScalerClient<Channel>),
}

impl Target {
    /// The scaler's own code in this process, reading the backend on every call.
    pub fn local(timeout: Duration) -> Self {
        // `...Secret` keys are read with the kubeconfig of whoever runs the check.
        let backends = Arc::new(Backends::new(timeout, None));
        let observations = Arc::new(Observations::new(backends, Duration::ZERO, timeout));
        let push = PushHub::new(observations.clone(), PushSettings::default());
        Target::Local(Scaler::new(
            observations,
            push,
            CancellationToken::new(),
            Duration::from_secs(30),
        ))
    }

    pub async fn remote(address: &str, timeout: Duration) -> Result<Self, CheckError> {
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let endpoint = Channel::from_shared(uri)
            .map_err(|e| CheckError::Input(format!("--address {address:?}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| CheckError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Target::Remote(ExternalScalerClient::new(channel)))
    }

    /// KEDA's sequence for one trigger: GetMetricSpec, GetMetrics, IsActive.
    pub async fn evaluate(&self, input: TriggerInput) -> Report {
        let r = ScaledObjectRef {
            name: input.name.clone(),
            namespace: input.namespace.clone(),
            scaler_metadata: input.metadata.clone(),
        };
        let mut report = Report {
            scaled_object: format!("{}/{}", input.namespace, input.name),
            trigger_index: input.index,
            trigger_type: input.trigger_type.clone(),
            keda_metric_name: None,
            metric_name: None,
            target: None,
            value: None,
            active: None,
            error: None,
            notes: input.notes.clone(),
        };
        let fail = |call: &'static str, s: Status| ReportError {
            call,
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        };
        let spec = match self.spec(r.clone()).await {
            Ok(spec) => spec,
            Err(s) => {
                report.error = Some(fail("GetMetricSpec", s));
                return report;
            }
        };
        report.keda_metric_name = Some(format!("s{}-{}", input.index, spec.0));
        report.metric_name = Some(spec.0.clone());
        report.target = Some(spec.1);
        match self.value(r.clone(), spec.0).await {
            Ok(v) => report.value = Some(v),
            Err(s) => {
                report.error = Some(fail("GetMetrics", s));
                return report;
            }
        }
        match self.active(r).await {
            Ok(a) => report.active = Some(a),
            Err(s) => report.error = Some(fail("IsActive", s)),
        }
        report
    }

    async fn spec(&self, r: ScaledObjectRef) -> Result<(String, f64), Status> {
        let resp = match self {
            Target::Local(s) => s.get_metric_spec(Request::new(r)).await?,
            Target::Remote(c) => c.clone().get_metric_spec(Request::new(r)).await?,
        }
        .into_inner();
        match resp.metric_specs.as_slice() {
            [one] => Ok((one.metric_name.clone(), one.target_size_float)),
            other => Err(Status::internal(format!(
                "expected one metric spec, got {}",
                other.len()
            ))),
        }
    }

    async fn value(&self, r: ScaledObjectRef, metric_name: String) -> Result<f64, Status> {
        let req = GetMetricsRequest {
            scaled_object_ref: Some(r),
            metric_name,
        };
        let resp = match self {
            Target::Local(s) => s.get_metrics(Request::new(req)).await?,
            Target::Remote(c) => c.clone().get_metrics(Request::new(req)).await?,
        }
        .into_inner();
        match resp.metric_values.as_slice() {
            #[allow(deprecated)]
            [one] => Ok(if one.metric_value_float > 0.0 {
                one.metric_value_float
            } else {
                one.metric_value as f64
            }),
            other => Err(Status::internal(format!(
                "expected one metric value, got {}",
                other.len()
            ))),
        }
    }

    async fn active(&self, r: ScaledObjectRef) -> Result<bool, Status> {
        let resp = match self {
            Target::Local(s) => s.is_active(Request::new(r)).await?,
            Target::Remote(c) => c.clone().is_active(Request::new(r)).await?,
        };
        Ok(resp.into_inner().result)
    }
}

/// Resolves `<key>FromEnv` values the way KEDA does for the workload's container: the value
/// names an environment variable (looked up here with `env`), and the key is dropped when that
/// variable is missing or empty.
fn resolve_from_env(
    metadata: HashMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> HashMap<String, String> {
    metadata
        .into_iter()
        .filter_map(|(k, v)| {
            if !k.ends_with(FROM_ENV) {
                return Some((k, v));
            }
            match env(v.trim()).filter(|x| !x.is_empty()) {
                Some(value) => Some((k, value)),
                None => {
                    notes.push(format!(
                        "`{k}`: environment variable {} is not set here; KEDA drops the key when the container lacks it",
                        v.trim()
                    ));
                    None
                }
            }
        })
        .collect()
}

/// The external triggers of every ScaledObject (or ScaledJob) in a YAML stream.
pub fn triggers_from_yaml(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<TriggerInput>, CheckError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (doc_index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| CheckError::Input(format!("YAML document {}: {e}", doc_index + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "ScaledObject" && kind != "ScaledJob" {
            continue;
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("unnamed")
            .to_string();
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string();
        let triggers = value
            .get("spec")
            .and_then(|s| s.get("triggers"))
            .and_then(|t| t.as_sequence())
            .ok_or_else(|| CheckError::Input(format!("{kind} {name}: spec.triggers is missing")))?;
        for (index, trigger) in triggers.iter().enumerate() {
            let trigger_type = trigger
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or_default();
            if trigger_type != "external" && trigger_type != "external-push" {
                continue;
            }
            let mut metadata = HashMap::new();
            if let Some(map) = trigger.get("metadata").and_then(|m| m.as_mapping()) {
                for (k, v) in map {
                    let key = k.as_str().unwrap_or_default().to_string();
                    let Some(v) = v.as_str() else {
                        return Err(CheckError::Input(format!(
                            "{name} trigger {index}: metadata `{key}` must be a string (quote it): Kubernetes rejects other types"
                        )));
                    };
                    metadata.insert(key, v.to_string());
                }
            }
            let mut notes = Vec::new();
            let metadata = resolve_from_env(metadata, env, &mut notes);
            out.push(TriggerInput {
                name: name.clone(),
                namespace: namespace.clone(),
                index,
                trigger_type: trigger_type.to_string(),
                metadata,
                notes,
            });
        }
    }
    Ok(out)
}

/// One trigger from `key=value` pairs.
pub fn trigger_from_pairs(
    pairs: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TriggerInput, CheckError> {
    let mut metadata = HashMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CheckError::Input(format!("--set {pair:?}: expected key=value")))?;
        metadata.insert(k.trim().to_string(), v.to_string());
    }
    let mut notes = Vec::new();
    let metadata = resolve_from_env(metadata, env, &mut notes);
    Ok(TriggerInput {
        name: "check".into(),
        namespace: "default".into(),
        index: 0,
        trigger_type: "external".into(),
        metadata,
        notes,
    })
}

pub fn render_text(reports: &[Report]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for r in reports {
        let _ = writeln!(
            s,
            "{} trigger {} ({})",
            r.scaled_object, r.trigger_index, r.trigger_type
        );
        if let Some(name) = &r.keda_metric_name {
            let _ = writeln!(s, "  metric name  {name}");
        }
        if let Some(t) = r.target {
            let _ = writeln!(s, "  target       {t} per replica (AverageValue)");
        }
        if let Some(v) = r.value {
            let _ = writeln!(s, "  value        {v}");
        }
        if let Some(a) = r.active {
            let _ = writeln!(s, "  active       {a}");
        }
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "  error        {} from {}: {}",
                e.code, e.call, e.message
            );
        }
        for n in &r.notes {
            let _ = writeln!(s, "  note         {n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SO: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: gpu-worker
  namespace: ml
spec:
  scaleTargetRef:
    name: gpu-worker
  triggers:
    - type: cpu
      metadata:
        value: "50"
    - type: external-push
      metadata:
        scalerAddress: headroom:9090
        source: celery
        addressFromEnv: REDIS_ADDR
        passwordFromEnv: REDIS_PASSWORD
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: other
"#;

    #[test]
    fn yaml_triggers_are_found_and_from_env_resolved_like_keda() {
        let env = |k: &str| (k == "REDIS_ADDR").then(|| "127.0.0.1:6379".to_string());
        let inputs = triggers_from_yaml(SO, &env).unwrap();
        assert_eq!(inputs.len(), 1);
        let t = &inputs[0];
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str(), t.index),
            ("ml", "gpu-worker", 1)
        );
        assert_eq!(t.metadata["addressFromEnv"], "127.0.0.1:6379");
        assert!(!t.metadata.contains_key("passwordFromEnv"));
        assert!(t.notes[0].contains("REDIS_PASSWORD"));
    }

    #[test]
    fn unquoted_numbers_are_reported_as_kubernetes_would() {
        let so = "kind: ScaledObject\nmetadata: {name: a}\nspec:\n  triggers:\n  - type: external\n    metadata:\n      listLength: 5\n";
        let err = triggers_from_yaml(so, &|_| None).unwrap_err();
        assert!(err.to_string().contains("listLength"), "{err}");
    }

    #[tokio::test]
    async fn bad_metadata_reports_keda_s_error() {
        let target = Target::local(Duration::from_secs(1));
        let input = trigger_from_pairs(
            &[
                "source=celery".into(),
                "address=h:1".into(),
                "tasksPerReplica=0".into(),
            ],
            &|_| None,
        )
        .unwrap();
        let report = target.evaluate(input).await;
        let e = report.error.unwrap();
        assert_eq!(
            (e.call, e.code.as_str()),
            ("GetMetricSpec", "InvalidArgument")
        );
        assert!(e.message.contains("tasksPerReplica"));
    }

    #[tokio::test]
    async fn unreachable_backend_is_unavailable_not_zero() {
        // Port 1 on loopback refuses connections.
        let target = Target::local(Duration::from_secs(1));
        let input = trigger_from_pairs(
            &[
                "source=redis-list".into(),
                "address=127.0.0.1:1".into(),
                "listName=q".into(),
            ],
            &|_| None,
        )
        .unwrap();
        let report = target.evaluate(input).await;
        assert_eq!(report.metric_name.as_deref(), Some("redis-q"));
        assert_eq!(report.target, Some(5.0));
        assert_eq!(report.value, None);
        let e = report.error.unwrap();
        assert_eq!((e.call, e.code.as_str()), ("GetMetrics", "Unavailable"));
    }
}
