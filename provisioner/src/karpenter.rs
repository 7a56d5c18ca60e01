//! NodeClaims (`karpenter.sh/v1`) built from a NodePool and the workload's pod shape.
//!
//! Facts this follows (`reference/provisioning.md`): a NodeClaim's spec is immutable; hand-made
//! NodeClaims carrying the `karpenter.sh/nodepool` label count toward that NodePool's limits and
//! can be consolidated once empty, unless annotated `karpenter.sh/do-not-disrupt: "true"`; the
//! kwok provider needs a `node.kubernetes.io/instance-type` requirement on every NodeClaim.
//!
//! Building is pure (JSON in, JSON out); the controller does the API calls.

use serde_json::{Value, json};

use crate::shape::Shape;

pub const NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// Set on everything Headroom creates: `<namespace>.<policy name>` of the owning policy, so a
/// restarted provisioner adopts what exists instead of creating it again.
pub const POLICY_LABEL: &str = "headroom.dev/policy";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "headroom-provisioner";
/// Unix milliseconds of the last plan that counted the capacity as needed.
pub const LAST_NEEDED_ANNOTATION: &str = "headroom.dev/last-needed";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeClaimError {
    #[error("NodePool {pool} has no spec.template.spec.nodeClassRef")]
    NoNodeClass { pool: String },
    #[error("no instance type can hold one pod ({gpus} GPU(s)): NodePool {pool} allows {allowed}")]
    NoInstanceType {
        pool: String,
        gpus: u32,
        allowed: String,
    },
}

/// The value of [`POLICY_LABEL`] for a policy: label values are at most 63 characters of
/// `[A-Za-z0-9_.-]`, and namespaces and names are DNS labels, so `<ns>.<name>` fits unless both
/// are long; then a stable hash suffix keeps it unique.
pub fn policy_label(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    if full.len() <= 63 {
        return full;
    }
    let hash = fnv1a(full.as_bytes());
    format!("{}-{hash:016x}", &full[..46])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The instance types of `candidates` (name, GPUs) that the NodePool's requirements allow and
/// whose GPUs hold at least one pod, in the given order.
pub fn fitting_types<'a>(
    pool: &Value,
    candidates: &'a [(String, u32)],
    shape: &Shape,
) -> Vec<&'a str> {
    let allowed = requirement_values(pool, INSTANCE_TYPE_LABEL);
    candidates
        .iter()
        .filter(|(_, gpus)| *gpus >= shape.gpus)
        .filter(|(name, _)| allowed.as_ref().is_none_or(|a| a.iter().any(|v| v == name)))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The `In` values of a NodePool template requirement, if it has one for `key`.
pub fn requirement_values(pool: &Value, key: &str) -> Option<Vec<String>> {
    pool.pointer("/spec/template/spec/requirements")?
        .as_array()?
        .iter()
        .find(|r| r["key"] == key && r["operator"] == "In")
        .and_then(|r| r["values"].as_array())
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
}

/// A NodeClaim for one node of `pool`, restricted to `instance_types`, sized for the pod shape,
/// labelled as the policy's and held from disruption.
pub fn node_claim(
    pool: &Value,
    policy_label: &str,
    instance_types: &[&str],
    shape: &Shape,
    now_ms: i64,
) -> Result<Value, NodeClaimError> {
    let pool_name = pool
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let template = pool.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let node_class = template
        .pointer("/spec/nodeClassRef")
        .cloned()
        .ok_or_else(|| NodeClaimError::NoNodeClass {
            pool: pool_name.clone(),
        })?;
    if instance_types.is_empty() {
        return Err(NodeClaimError::NoInstanceType {
            pool: pool_name.clone(),
            gpus: shape.gpus,
            allowed: requirement_values(pool, INSTANCE_TYPE_LABEL)
                .map(|v| v.join(", "))
                .unwrap_or_else(|| "any type".into()),
        });
    }
    let mut requirements: Vec<Value> = template
        .pointer("/spec/requirements")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["key"] != INSTANCE_TYPE_LABEL)
        .collect();
    requirements.push(json!({
        "key": INSTANCE_TYPE_LABEL,
        "operator": "In",
        "values": instance_types,
    }));

    let mut labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(NODEPOOL_LABEL.into(), json!(pool_name));
    labels.insert(POLICY_LABEL.into(), json!(policy_label));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let mut annotations = template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    annotations.insert(DO_NOT_DISRUPT.into(), json!("true"));
    annotations.insert(LAST_NEEDED_ANNOTATION.into(), json!(now_ms.to_string()));

    let mut spec = json!({
        "nodeClassRef": node_class,
        "requirements": requirements,
        "resources": {"requests": shape.requests},
    });
    for field in [
        "taints",
        "startupTaints",
        "expireAfter",
        "terminationGracePeriod",
    ] {
        if let Some(v) = template.pointer(&format!("/spec/{field}")) {
            spec[field] = v.clone();
        }
    }
    Ok(json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {
            "generateName": format!("{pool_name}-headroom-"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pool() -> Value {
        json!({
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodePool",
            "metadata": {"name": "gpu"},
            "spec": {
                "template": {
                    "metadata": {"labels": {"workload": "gpu"}},
                    "spec": {
                        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"},
                        "requirements": [
                            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.xlarge", "g5.12xlarge", "g4dn.xlarge"]}
                        ],
                        "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
                        "expireAfter": "720h"
                    }
                },
                "limits": {"nvidia.com/gpu": "16"}
            }
        })
    }

    fn gpu_shape(gpus: u32) -> Shape {
        Shape {
            gpus,
            cpu: 3.0,
            memory: 12e9,
            node_selector: BTreeMap::new(),
            affinity: None,
            tolerations: vec![],
            requests: [
                (
                    "nvidia.com/gpu".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity(gpus.to_string()),
                ),
                (
                    "cpu".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("3000m".into()),
                ),
            ]
            .into(),
            images: Default::default(),
        }
    }

    #[test]
    fn a_node_claim_copies_the_pool_template_and_is_held_and_labelled() {
        let types = [
            ("g5.xlarge".to_string(), 1),
            ("g5.12xlarge".to_string(), 4),
            ("p4d.24xlarge".to_string(), 8),
        ];
        let fit = fitting_types(&pool(), &types, &gpu_shape(2));
        assert_eq!(
            fit,
            ["g5.12xlarge"],
            "1 GPU is too small; p4d is not in the pool"
        );
        let claim = node_claim(&pool(), "ml.gpu-worker", &fit, &gpu_shape(2), 42).unwrap();
        assert_eq!(claim["metadata"]["labels"][NODEPOOL_LABEL], "gpu");
        assert_eq!(claim["metadata"]["labels"][POLICY_LABEL], "ml.gpu-worker");
        assert_eq!(claim["metadata"]["labels"]["workload"], "gpu");
        assert_eq!(claim["metadata"]["annotations"][DO_NOT_DISRUPT], "true");
        assert_eq!(
            claim["metadata"]["annotations"][LAST_NEEDED_ANNOTATION],
            "42"
        );
        assert_eq!(claim["spec"]["nodeClassRef"]["kind"], "EC2NodeClass");
        assert_eq!(claim["spec"]["taints"][0]["key"], "nvidia.com/gpu");
        assert_eq!(claim["spec"]["expireAfter"], "720h");
        assert_eq!(
            claim["spec"]["resources"]["requests"]["nvidia.com/gpu"],
            "2"
        );
        let reqs = claim["spec"]["requirements"].as_array().unwrap();
        let types: Vec<&Value> = reqs
            .iter()
            .filter(|r| r["key"] == INSTANCE_TYPE_LABEL)
            .collect();
        assert_eq!(
            types.len(),
            1,
            "the pool's type list is replaced, not doubled"
        );
        assert_eq!(types[0]["values"], json!(["g5.12xlarge"]));
        assert!(
            reqs.iter()
                .any(|r| r["key"] == "karpenter.sh/capacity-type")
        );
    }

    #[test]
    fn a_pool_without_a_node_class_or_a_fitting_type_is_a_clear_error() {
        let mut p = pool();
        p["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("nodeClassRef");
        let e = node_claim(&p, "a.b", &["g5.xlarge"], &gpu_shape(1), 0).unwrap_err();
        assert!(e.to_string().contains("nodeClassRef"), "{e}");
        let e = node_claim(&pool(), "a.b", &[], &gpu_shape(16), 0).unwrap_err();
        assert!(e.to_string().contains("g5.xlarge, g5.12xlarge"), "{e}");
    }

    #[test]
    fn policy_labels_are_valid_label_values() {
        assert_eq!(policy_label("ml", "gpu-worker"), "ml.gpu-worker");
        let long = policy_label(&"n".repeat(63), &"p".repeat(63));
        assert_eq!(long.len(), 63);
        assert_ne!(long, policy_label(&"n".repeat(63), &"q".repeat(63)));
    }
}
