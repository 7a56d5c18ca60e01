//! `mode: overprovision`: pause pods shaped exactly like the workload's pods, in a Deployment
//! under a negative PriorityClass. Any node autoscaler (Karpenter or Cluster Autoscaler) brings
//! up nodes for them; the scheduler preempts them the moment real pods need the room.
//!
//! Their requests, node selector, affinity and tolerations must equal the workload's, or the
//! nodes they hold will not fit the real pods (`reference/provisioning.md`). Building is pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::karpenter::{MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL};
use crate::shape::Shape;

/// The PriorityClass value of placeholders: below every real pod (0 by default), and -10 is the
/// lowest value that still makes Cluster Autoscaler scale up for them.
pub const PRIORITY: i32 = -10;

/// The placeholder Deployment for a policy.
pub fn deployment(
    name: &str,
    namespace: &str,
    policy_label: &str,
    shape: &Shape,
    replicas: u32,
    priority_class: &str,
    image: &str,
) -> Deployment {
    let labels: BTreeMap<String, String> = [
        (POLICY_LABEL.to_string(), policy_label.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            "headroom-placeholder".to_string(),
        ),
    ]
    .into();
    let pause = Container {
        name: "pause".into(),
        image: Some(image.into()),
        resources: Some(ResourceRequirements {
            requests: Some(shape.requests.clone()),
            // Extended resources (GPUs) must be given as limits equal to the requests.
            limits: Some(
                shape
                    .requests
                    .iter()
                    .filter(|(r, _)| r.contains('/'))
                    .map(|(r, q)| (r.clone(), q.clone()))
                    .collect(),
            )
            .filter(|m: &BTreeMap<_, _>| !m.is_empty()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65535),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            // Placeholders are interchangeable: replace them all at once on a shape change.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![pause],
                    priority_class_name: Some(priority_class.into()),
                    node_selector: (!shape.node_selector.is_empty())
                        .then(|| shape.node_selector.clone()),
                    affinity: shape.affinity.clone(),
                    tolerations: (!shape.tolerations.is_empty()).then(|| shape.tolerations.clone()),
                    termination_grace_period_seconds: Some(0),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The PriorityClass placeholders run under.
pub fn priority_class(name: &str) -> PriorityClass {
    PriorityClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..Default::default()
        },
        value: PRIORITY,
        global_default: Some(false),
        preemption_policy: Some("Never".into()),
        description: Some(
            "Headroom placeholder pods: preempted by any real pod that needs their room".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::shape_of;
    use k8s_openapi::api::core::v1::Toleration;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn placeholders_take_the_workload_shape_exactly() {
        let workload = PodSpec {
            containers: vec![Container {
                name: "worker".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_string(), Quantity("3".into())),
                            ("memory".to_string(), Quantity("12Gi".into())),
                        ]
                        .into(),
                    ),
                    limits: Some([("nvidia.com/gpu".to_string(), Quantity("1".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some([("karpenter.sh/nodepool".to_string(), "gpu".to_string())].into()),
            tolerations: Some(vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let shape = shape_of(&workload).unwrap();
        let d = deployment(
            "gpu-worker-headroom",
            "ml",
            "ml.gpu-worker",
            &shape,
            3,
            "headroom-overprovision",
            "registry.k8s.io/pause:3.10",
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("headroom-overprovision")
        );
        assert_eq!(pod.node_selector, workload.node_selector);
        assert_eq!(pod.tolerations, workload.tolerations);
        let r = pod.containers[0].resources.clone().unwrap();
        let requests = r.requests.unwrap();
        assert_eq!(requests["cpu"].0, "3000m");
        assert_eq!(requests["memory"].0, (12u64 << 30).to_string());
        assert_eq!(requests["nvidia.com/gpu"].0, "1");
        assert_eq!(r.limits.unwrap()["nvidia.com/gpu"].0, "1");
        assert_eq!(priority_class("x").value, PRIORITY);
    }
}
