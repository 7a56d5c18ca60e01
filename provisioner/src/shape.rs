//! The shape of the workload's pods, read from its scale target's pod template: what one pod
//! requests and where it may run. Capacity made ahead of the pods must fit exactly this, or the
//! pods will not land on it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The extended resource a GPU pod requests.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What one pod of the workload needs and where it may run.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// GPUs (`nvidia.com/gpu`) per pod.
    pub gpus: u32,
    /// CPU cores per pod (requests; containers without requests count their limits, as the API
    /// server defaults them).
    pub cpu: f64,
    /// Memory bytes per pod.
    pub memory: f64,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    pub tolerations: Vec<Toleration>,
    /// The whole requests of one pod, for placeholders that must match it exactly.
    pub requests: BTreeMap<String, Quantity>,
    /// The pod's images, for placeholders that warm them.
    pub images: crate::warm::PodImages,
}

impl Shape {
    pub fn plan_shape(&self) -> crate::plan::PodShape {
        crate::plan::PodShape {
            gpus: self.gpus,
            cpu: self.cpu,
            memory: self.memory,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    #[error("container {container}: resource {resource} has an invalid quantity {value:?}")]
    BadQuantity {
        container: String,
        resource: String,
        value: String,
    },
    #[error("container {container}: {resource} must be a whole number, not {value:?}")]
    Fractional {
        container: String,
        resource: String,
        value: String,
    },
}

/// Reads the shape of a pod spec: the sum over its containers of the effective requests (a
/// request, or the limit when only a limit is given), the larger of that and any init
/// container's (init containers run one at a time, before the others), and its placement.
pub fn shape_of(spec: &PodSpec) -> Result<Shape, ShapeError> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for c in &spec.containers {
        for (resource, amount) in effective_requests(&c.name, c.resources.as_ref())? {
            *total.entry(resource).or_default() += amount;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (resource, amount) in effective_requests(&c.name, c.resources.as_ref())? {
            let slot = total.entry(resource).or_default();
            *slot = slot.max(amount);
        }
    }
    let gpus = total.get(GPU_RESOURCE).copied().unwrap_or(0.0);
    let requests = total
        .iter()
        .map(|(r, v)| (r.clone(), Quantity(format_quantity(r, *v))))
        .collect();
    Ok(Shape {
        gpus: gpus.round() as u32,
        cpu: total.get("cpu").copied().unwrap_or(0.0),
        memory: total.get("memory").copied().unwrap_or(0.0),
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        affinity: spec.affinity.clone(),
        tolerations: spec.tolerations.clone().unwrap_or_default(),
        requests,
        images: crate::warm::PodImages::of(spec),
    })
}

fn effective_requests(
    container: &str,
    resources: Option<&ResourceRequirements>,
) -> Result<BTreeMap<String, f64>, ShapeError> {
    let mut out = BTreeMap::new();
    let Some(r) = resources else {
        return Ok(out);
    };
    let limits = r.limits.clone().unwrap_or_default();
    let requests = r.requests.clone().unwrap_or_default();
    for (resource, q) in limits.iter().chain(requests.iter()) {
        // Requests win over limits: insert limits first, then overwrite.
        let value = parse_quantity(&q.0).ok_or_else(|| ShapeError::BadQuantity {
            container: container.into(),
            resource: resource.clone(),
            value: q.0.clone(),
        })?;
        if resource == GPU_RESOURCE && value.fract() != 0.0 {
            return Err(ShapeError::Fractional {
                container: container.into(),
                resource: resource.clone(),
                value: q.0.clone(),
            });
        }
        out.insert(resource.clone(), value);
    }
    Ok(out)
}

/// Parses a Kubernetes quantity (`500m`, `2`, `1.5`, `14Gi`, `129M`, `1e9`) to a number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // `1e3` is an exponent; `1E` alone is the exa suffix.
    let (number, suffix) = if suffix.is_empty() && number.ends_with('E') {
        (&number[..number.len() - 1], &number[number.len() - 1..])
    } else {
        (number, suffix)
    };
    if number.is_empty() || number.starts_with(['+']) && number.len() == 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let v = value * factor;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Writes a number back as a quantity the API server accepts: millicores for CPU, whole units
/// otherwise.
fn format_quantity(resource: &str, v: f64) -> String {
    if resource == "cpu" {
        format!("{}m", (v * 1000.0).round() as u64)
    } else {
        format!("{}", v.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        for (s, v) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5", 1.5),
            ("14Gi", 14.0 * 1024.0 * 1024.0 * 1024.0),
            ("129M", 129e6),
            ("1e9", 1e9),
            ("1E", 1e18),
            ("64Ki", 65536.0),
        ] {
            assert_eq!(parse_quantity(s), Some(v), "{s}");
        }
        for s in ["", "Gi", "1Qi", "-1", "abc", "+"] {
            assert_eq!(parse_quantity(s), None, "{s:?}");
        }
    }

    #[test]
    fn gpu_limits_count_as_requests_and_containers_add_up() {
        let spec = PodSpec {
            containers: vec![
                container(
                    "worker",
                    &[("cpu", "3"), ("memory", "12Gi")],
                    &[("nvidia.com/gpu", "1")],
                ),
                container("sidecar", &[("cpu", "250m"), ("memory", "256Mi")], &[]),
            ],
            init_containers: Some(vec![container("warmup", &[("cpu", "4")], &[])]),
            node_selector: Some([("karpenter.sh/nodepool".to_string(), "gpu".to_string())].into()),
            ..Default::default()
        };
        let s = shape_of(&spec).unwrap();
        assert_eq!(s.gpus, 1);
        assert_eq!(s.cpu, 4.0, "the init container's 4 cores exceed 3.25");
        assert_eq!(s.memory, (12.0 + 0.25) * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(s.requests["cpu"].0, "4000m");
        assert_eq!(s.requests["nvidia.com/gpu"].0, "1");
        assert_eq!(s.node_selector["karpenter.sh/nodepool"], "gpu");
    }

    #[test]
    fn bad_quantities_name_the_container_and_resource() {
        let spec = PodSpec {
            containers: vec![container("w", &[("nvidia.com/gpu", "0.5")], &[])],
            ..Default::default()
        };
        let e = shape_of(&spec).unwrap_err();
        assert!(e.to_string().contains("nvidia.com/gpu"), "{e}");
        let spec = PodSpec {
            containers: vec![container("w", &[("memory", "lots")], &[])],
            ..Default::default()
        };
        assert!(
            shape_of(&spec)
                .unwrap_err()
                .to_string()
                .contains("\"lots\"")
        );
    }
}
