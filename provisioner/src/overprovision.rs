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
use crate::warm::{self, Helper};

/// The PriorityClass value of placeholders: below every real pod (0 by default), and -10 is the
/// lowest value that still makes Cluster Autoscaler scale up for them.
pub const PRIORITY: i32 = -10;

/// The placeholder Deployment for a policy. With `warm` (the image-warming helper) and a
/// template that names images, placeholders run the workload's images instead of `image`
/// (pause): each container runs the helper's `sleep`, each init container its `exit`, so a pod
/// that preempts a placeholder finds its images on the node. The first container carries the
/// pod's whole requests, as the pause container does; the others tiny ones.
#[allow(clippy::too_many_arguments)]
pub fn deployment(
    name: &str,
    namespace: &str,
    policy_label: &str,
    shape: &Shape,
    replicas: u32,
    priority_class: &str,
    image: &str,
    warm: Option<&Helper>,
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
    let resources = ResourceRequirements {
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
    };
    let pause = Container {
        name: "pause".into(),
        image: Some(image.into()),
        resources: Some(resources.clone()),
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
    let warm = warm.filter(|_| !shape.images.containers.is_empty());
    let (containers, init_containers, volumes, annotations) = match warm {
        None => (vec![pause], None, None, None),
        Some(helper) => {
            let images = &shape.images;
            let mut containers: Vec<Container> = images
                .containers
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    warm::helper_container(
                        format!("warm-{i}"),
                        &r.image,
                        r.pull_policy.clone(),
                        "sleep",
                    )
                })
                .collect();
            if let Some(first) = containers.first_mut() {
                first.resources = Some(resources);
            }
            let mut init = vec![warm::helper_init_container(helper)];
            init.extend(images.init.iter().enumerate().map(|(i, r)| {
                warm::helper_container(
                    format!("warm-init-{i}"),
                    &r.image,
                    r.pull_policy.clone(),
                    "exit",
                )
            }));
            (
                containers,
                Some(init),
                Some(vec![warm::helper_volume()]),
                // A new image list is a new template: the placeholders roll.
                Some(BTreeMap::from([(
                    warm::IMAGES_ANNOTATION.to_string(),
                    images.hash.clone(),
                )])),
            )
        }
    };
    let pull_secrets = warm
        .map(|_| shape.images.pull_secrets.clone())
        .filter(|s| !s.is_empty());
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
                    annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    init_containers,
                    volumes,
                    image_pull_secrets: pull_secrets,
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
            None,
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

    #[test]
    fn warm_placeholders_run_every_workload_image_and_roll_when_the_images_change() {
        let mut workload: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "migrate", "image": "r/migrate:1"}],
            "containers": [
                {"name": "worker", "image": "r/worker:1",
                 "resources": {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}},
                {"name": "sidecar", "image": "r/sidecar:1"},
            ],
            "imagePullSecrets": [{"name": "regcred"}],
        }))
        .unwrap();
        let helper = Helper {
            image: "headroom:1".into(),
            path: "/usr/local/bin/headroom-warm".into(),
        };
        let build = |w: &PodSpec| {
            let d = deployment(
                "d",
                "ml",
                "ml.p",
                &shape_of(w).unwrap(),
                1,
                "pc",
                "pause",
                Some(&helper),
            );
            d.spec.unwrap().template
        };
        let t = build(&workload);
        let pod = t.spec.clone().unwrap();
        let images: Vec<_> = pod
            .containers
            .iter()
            .map(|c| c.image.clone().unwrap())
            .collect();
        assert_eq!(images, ["r/worker:1", "r/sidecar:1"]);
        assert!(
            pod.containers
                .iter()
                .all(|c| c.command.as_ref().unwrap()[1] == "sleep")
        );
        let first = pod.containers[0].resources.clone().unwrap();
        assert_eq!(first.requests.unwrap()["cpu"].0, "2000m");
        assert_eq!(first.limits.unwrap()["nvidia.com/gpu"].0, "1");
        let second = pod.containers[1].resources.clone().unwrap();
        assert_eq!(second.requests.unwrap()["cpu"].0, "1m");
        let init = pod.init_containers.unwrap();
        assert_eq!(init[0].image.as_deref(), Some("headroom:1"));
        assert_eq!(init[1].image.as_deref(), Some("r/migrate:1"));
        assert_eq!(init[1].command.as_ref().unwrap()[1], "exit");
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.priority_class_name.as_deref(), Some("pc"));
        assert_eq!(pod.termination_grace_period_seconds, Some(0));
        let hash = t.metadata.unwrap().annotations.unwrap()[warm::IMAGES_ANNOTATION].clone();
        workload.containers[1].image = Some("r/sidecar:2".into());
        let changed = build(&workload).metadata.unwrap().annotations.unwrap();
        assert_ne!(
            changed[warm::IMAGES_ANNOTATION],
            hash,
            "a new template: placeholders roll"
        );
        // Without the helper: pause, as before.
        let d = deployment(
            "d",
            "ml",
            "ml.p",
            &shape_of(&workload).unwrap(),
            1,
            "pc",
            "pause",
            None,
        );
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.containers[0].image.as_deref(), Some("pause"));
        assert_eq!(pod.init_containers, None);
    }
}
