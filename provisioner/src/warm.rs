//! Image-warm capacity: a unit is warm only once it holds the workload's images.
//!
//! In `karpenter` mode, a Ready NodeClaim's node gets a short-lived *pre-pull pod*: pinned to the
//! node (`spec.nodeName`), tolerating every taint, tiny requests and no GPU, one container per
//! image of the workload's pod template (containers and init containers), with the template's
//! `imagePullSecrets`. Each container runs the static helper `headroom-warm exit`, which an init
//! container copied from Headroom's own image into an `emptyDir`, so any image works, distroless
//! included. A real kubelet starts a container only after its image is pulled, so "every
//! container running or terminated" means pulled; the pod is then deleted and the NodeClaim
//! records the images' hash in [`IMAGES_ANNOTATION`].
//!
//! The pod lives in the workload's namespace (so its pull secrets resolve) and carries the
//! policy's owner label, so a restarted provisioner finds it and a deleted policy removes it.
//!
//! Everything here is pure: the controller lists, creates, patches and deletes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::karpenter::{MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL};

/// `prepull` on pre-pull pods: tells them from placeholders and workload pods.
pub const WARM_LABEL: &str = "headroom.dev/warm";
pub const WARM_PREPULL: &str = "prepull";
/// The unit (NodeClaim name) a pre-pull pod warms.
pub const UNIT_LABEL: &str = "headroom.dev/unit";
/// The [`images_hash`] of the images a pod pulls, or that a unit holds.
pub const IMAGES_ANNOTATION: &str = "headroom.dev/images";
/// Where the helper is copied to inside pre-pull pods and placeholders.
pub const HELPER_DIR: &str = "/headroom-warm";
const HELPER_VOLUME: &str = "headroom-warm";
const HELPER_CONTAINER: &str = "headroom-warm-helper";

/// The kubelet's waiting reasons that mean the image cannot be pulled (as it stands).
pub const PULL_FAILURE_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Where the helper comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// Headroom's image holding the helper binary.
    pub image: String,
    /// The helper's path inside that image.
    pub path: String,
}

/// One image of a pod template, with the pull policy the template gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRef {
    pub image: String,
    pub pull_policy: Option<String>,
}

/// The images of the workload's pod template, for placeholders that run them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodImages {
    /// Of the init containers, in order.
    pub init: Vec<ImageRef>,
    /// Of the containers, in order (the first holds the pod's requests in a placeholder).
    pub containers: Vec<ImageRef>,
    pub pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// [`images_hash`] of [`images_of`] the template.
    pub hash: String,
}

impl PodImages {
    pub fn of(spec: &PodSpec) -> Self {
        let refs = |cs: &[Container]| {
            cs.iter()
                .filter_map(|c| {
                    Some(ImageRef {
                        image: c.image.clone().filter(|i| !i.is_empty())?,
                        pull_policy: c.image_pull_policy.clone(),
                    })
                })
                .collect()
        };
        Self {
            init: refs(spec.init_containers.as_deref().unwrap_or_default()),
            containers: refs(&spec.containers),
            pull_secrets: spec.image_pull_secrets.clone().unwrap_or_default(),
            hash: images_hash(&images_of(spec)),
        }
    }
}

/// The images of a pod template: init containers first, then containers, each once, in order.
pub fn images_of(spec: &PodSpec) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for image in all.filter_map(|c| c.image.as_deref()) {
        if !image.is_empty() && !images.iter().any(|i| i == image) {
            images.push(image.to_string());
        }
    }
    images
}

/// The identity of an image list, as it is persisted on units and pods: versioned, with a
/// stable hash (FNV-1a over the images, NUL-separated), never `DefaultHasher`.
pub fn images_hash(images: &[String]) -> String {
    const VERSION: &str = "v1";
    let mut h: u64 = 0xcbf29ce484222325;
    for b in VERSION.bytes().chain(
        images
            .iter()
            .flat_map(|i| std::iter::once(0u8).chain(i.bytes())),
    ) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{VERSION}-{h:016x}")
}

/// A label value (at most 63 characters) for a unit id: the id, or its hash when longer.
pub fn unit_label(unit: &str) -> String {
    if unit.len() <= 63 {
        return unit.to_string();
    }
    format!("{}-{:016x}", &unit[..46], fnv(unit))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The name of the pre-pull pod of `unit` for the images `hash`: deterministic, so a retried
/// create meets `AlreadyExists`; at most 63 characters.
pub fn prepull_name(unit: &str, hash: &str) -> String {
    let short: String = hash
        .chars()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let name = format!("hr-warm-{unit}-{short}");
    if name.len() <= 63 {
        return name;
    }
    format!("hr-warm-{:016x}-{short}", fnv(&name))
}

fn tiny() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("1m".into())),
                ("memory".to_string(), Quantity("8Mi".into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
        ..Default::default()
    }
}

/// Non-root, no privileges: the helper needs none, and any UID can run it.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65534),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn helper_mount() -> VolumeMount {
    VolumeMount {
        name: HELPER_VOLUME.into(),
        mount_path: HELPER_DIR.into(),
        ..Default::default()
    }
}

/// The init container copying the helper into the shared `emptyDir`.
pub fn helper_init_container(helper: &Helper) -> Container {
    Container {
        name: HELPER_CONTAINER.into(),
        image: Some(helper.image.clone()),
        command: Some(vec![
            helper.path.clone(),
            "copy".into(),
            format!("{HELPER_DIR}/headroom-warm"),
        ]),
        resources: Some(tiny()),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![helper_mount()]),
        ..Default::default()
    }
}

/// A container of `image` that runs the copied helper with `arg` (`exit` or `sleep`).
pub fn helper_container(
    name: String,
    image: &str,
    pull_policy: Option<String>,
    arg: &str,
) -> Container {
    Container {
        name,
        image: Some(image.to_string()),
        image_pull_policy: pull_policy,
        command: Some(vec![format!("{HELPER_DIR}/headroom-warm"), arg.into()]),
        args: Some(vec![]),
        resources: Some(tiny()),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![helper_mount()]),
        ..Default::default()
    }
}

/// The `emptyDir` the helper is copied into.
pub fn helper_volume() -> Volume {
    Volume {
        name: HELPER_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("32Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pull policy the workload gives `image` (the first container that uses it).
fn pull_policy_of(spec: &PodSpec, image: &str) -> Option<String> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.image.as_deref() == Some(image))
        .and_then(|c| c.image_pull_policy.clone())
}

/// What a pre-pull pod is for.
#[derive(Debug, Clone)]
pub struct Prepull<'a> {
    /// The workload's namespace.
    pub namespace: &'a str,
    /// [`crate::karpenter::policy_label`] of the owning policy.
    pub policy_label: &'a str,
    /// `namespace/name` of the owning policy.
    pub policy_ref: &'a str,
    /// The unit (NodeClaim name) and its node.
    pub unit: &'a str,
    pub node: &'a str,
    /// The workload's pod template spec.
    pub template: &'a PodSpec,
    pub helper: &'a Helper,
}

/// The pre-pull pod for one unit: one container per image of the template, each running the
/// helper's `exit`, pinned to the node, tolerating everything, tiny requests, no GPU.
pub fn prepull_pod(p: &Prepull<'_>) -> Pod {
    let images = images_of(p.template);
    let hash = images_hash(&images);
    let labels: BTreeMap<String, String> = [
        (POLICY_LABEL.to_string(), p.policy_label.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (WARM_LABEL.to_string(), WARM_PREPULL.to_string()),
        (UNIT_LABEL.to_string(), unit_label(p.unit)),
    ]
    .into();
    let annotations: BTreeMap<String, String> = [
        (IMAGES_ANNOTATION.to_string(), hash.clone()),
        (
            crate::providers::karpenter::POLICY_REF_ANNOTATION.to_string(),
            p.policy_ref.to_string(),
        ),
    ]
    .into();
    let containers = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            helper_container(
                format!("pull-{i}"),
                image,
                pull_policy_of(p.template, image),
                "exit",
            )
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(prepull_name(p.unit, &hash)),
            namespace: Some(p.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.to_string()),
            restart_policy: Some("Never".into()),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            image_pull_secrets: p.template.image_pull_secrets.clone(),
            init_containers: Some(vec![helper_init_container(p.helper)]),
            containers,
            volumes: Some(vec![helper_volume()]),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // Admitted under the `restricted` Pod Security Standard too.
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a pre-pull pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// Images still being pulled (or the pod not started yet).
    Pulling,
    /// Every image is on the node.
    Pulled,
    /// An image cannot be pulled: the kubelet's reason, the image and its message.
    Failed {
        reason: String,
        image: String,
        message: String,
    },
}

/// Classifies a pre-pull pod from its status. A container that is running or terminated (with
/// any exit code) had its image pulled: a kubelet starts a container only after the pull.
pub fn classify(pod: &Pod) -> PullState {
    let Some(status) = pod.status.as_ref() else {
        return PullState::Pulling;
    };
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    for s in init.clone().chain(main.clone()) {
        if let Some(w) = s.state.as_ref().and_then(|st| st.waiting.as_ref())
            && let Some(reason) = w.reason.as_deref()
            && PULL_FAILURE_REASONS.contains(&reason)
        {
            return PullState::Failed {
                reason: reason.to_string(),
                image: s.image.clone(),
                message: w.message.clone().unwrap_or_default(),
            };
        }
    }
    if status.phase.as_deref() == Some("Succeeded") {
        return PullState::Pulled;
    }
    let wanted = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let started = main
        .filter(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        })
        .count();
    if wanted > 0 && started >= wanted {
        return PullState::Pulled;
    }
    if status.phase.as_deref() == Some("Failed") {
        // Failed before its containers started (rejected by the kubelet, evicted).
        return PullState::Failed {
            reason: status.reason.clone().unwrap_or_else(|| "PodFailed".into()),
            image: String::new(),
            message: status.message.clone().unwrap_or_default(),
        };
    }
    PullState::Pulling
}

/// The warm state of one placeholder pod (overprovision mode) for the images `hash`: booting
/// until scheduled; warm once every container runs and its template holds the current
/// images; failed when an image cannot be pulled; pulling otherwise.
pub fn placeholder_state(pod: &Pod, hash: &str) -> (UnitState, PullState) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some();
    let current = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IMAGES_ANNOTATION))
        .is_some_and(|h| h == hash);
    let pull = classify(pod);
    let state = match &pull {
        _ if !scheduled => UnitState::Booting,
        PullState::Failed { .. } => UnitState::Failed,
        PullState::Pulled if current => UnitState::Warm,
        _ => UnitState::Pulling,
    };
    (state, pull)
}

/// A bounded label value for a pull failure reason (metrics): one of
/// [`PULL_FAILURE_REASONS`], else `Other`.
pub fn reason_label(reason: &str) -> &'static str {
    PULL_FAILURE_REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("Other")
}

/// A unit's warm state, as status and metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitState {
    /// Not Ready yet.
    Booting,
    /// Ready, images being pulled.
    Pulling,
    /// Ready and holding the current images.
    Warm,
    /// Ready, but an image cannot be pulled: not warm.
    Failed,
}

impl UnitState {
    pub const ALL: [UnitState; 4] = [
        UnitState::Booting,
        UnitState::Pulling,
        UnitState::Warm,
        UnitState::Failed,
    ];

    /// The `state` label of `headroom_provisioner_image_warm_units`.
    pub fn name(self) -> &'static str {
        match self {
            UnitState::Booting => "booting",
            UnitState::Pulling => "pulling",
            UnitState::Warm => "warm",
            UnitState::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, LocalObjectReference, PodStatus,
    };

    fn template() -> PodSpec {
        PodSpec {
            init_containers: Some(vec![Container {
                name: "migrate".into(),
                image: Some("registry.example/migrate:1".into()),
                ..Default::default()
            }]),
            containers: vec![
                Container {
                    name: "worker".into(),
                    image: Some("registry.example/worker:2".into()),
                    image_pull_policy: Some("Always".into()),
                    resources: Some(ResourceRequirements {
                        limits: Some([("nvidia.com/gpu".to_string(), Quantity("1".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Container {
                    name: "sidecar".into(),
                    image: Some("registry.example/migrate:1".into()),
                    ..Default::default()
                },
            ],
            image_pull_secrets: Some(vec![LocalObjectReference {
                name: "regcred".into(),
            }]),
            tolerations: Some(vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn helper() -> Helper {
        Helper {
            image: "headroom/provisioner:1".into(),
            path: "/usr/local/bin/headroom-warm".into(),
        }
    }

    fn pod() -> Pod {
        let t = template();
        let h = helper();
        prepull_pod(&Prepull {
            namespace: "ml",
            policy_label: "ml.gpu",
            policy_ref: "ml/gpu",
            unit: "gpu-hr-abc-0",
            node: "node-1",
            template: &t,
            helper: &h,
        })
    }

    #[test]
    fn the_prepull_pod_pulls_every_image_once_with_the_pull_secrets_pinned_to_the_node() {
        let p = pod();
        let spec = p.spec.clone().unwrap();
        let images: Vec<&str> = spec
            .containers
            .iter()
            .map(|c| c.image.as_deref().unwrap())
            .collect();
        assert_eq!(
            images,
            ["registry.example/migrate:1", "registry.example/worker:2"],
            "init container images first, each image once"
        );
        assert_eq!(
            spec.containers[1].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(
            tolerations[0].key, None,
            "every taint, not only the workload's"
        );
        for c in &spec.containers {
            let r = c.resources.clone().unwrap();
            let requests = r.requests.unwrap();
            assert_eq!(requests["cpu"].0, "1m");
            assert_eq!(requests["memory"].0, "8Mi");
            assert!(
                !requests.contains_key("nvidia.com/gpu")
                    && !r.limits.unwrap().contains_key("nvidia.com/gpu"),
                "no GPU"
            );
            assert_eq!(
                c.command.clone().unwrap(),
                ["/headroom-warm/headroom-warm", "exit"]
            );
            assert_eq!(c.volume_mounts.clone().unwrap()[0].mount_path, HELPER_DIR);
        }
        let init = spec.init_containers.unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].image.as_deref(), Some("headroom/provisioner:1"));
        assert_eq!(
            init[0].command.clone().unwrap(),
            [
                "/usr/local/bin/headroom-warm",
                "copy",
                "/headroom-warm/headroom-warm"
            ]
        );
        assert!(spec.volumes.unwrap()[0].empty_dir.is_some());
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[POLICY_LABEL], "ml.gpu");
        assert_eq!(labels[WARM_LABEL], WARM_PREPULL);
        assert_eq!(labels[UNIT_LABEL], "gpu-hr-abc-0");
        assert_eq!(p.metadata.namespace.as_deref(), Some("ml"));
        let hash = images_hash(&images_of(&template()));
        assert_eq!(p.metadata.annotations.unwrap()[IMAGES_ANNOTATION], hash);
        assert_eq!(
            p.metadata.name.unwrap(),
            prepull_name("gpu-hr-abc-0", &hash)
        );
    }

    #[test]
    fn the_images_hash_is_stable_and_changes_with_the_images() {
        let a = images_hash(&["a:1".into(), "b:1".into()]);
        assert_eq!(a, images_hash(&["a:1".into(), "b:1".into()]));
        assert!(a.starts_with("v1-"));
        assert_ne!(a, images_hash(&["a:1".into(), "b:2".into()]));
        assert_ne!(
            a,
            images_hash(&["a:1b:1".into()]),
            "separated, not concatenated"
        );
    }

    #[test]
    fn names_and_labels_stay_within_63_characters() {
        let long = "x".repeat(80);
        assert!(prepull_name(&long, "v1-0123456789abcdef").len() <= 63);
        assert_ne!(
            prepull_name(&long, "v1-0123456789abcdef"),
            prepull_name(&"y".repeat(80), "v1-0123456789abcdef")
        );
        assert_eq!(unit_label(&long).len(), 63);
    }

    fn with_status(statuses: Vec<ContainerState>, phase: &str) -> Pod {
        let mut p = pod();
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(
                statuses
                    .into_iter()
                    .enumerate()
                    .map(|(i, state)| ContainerStatus {
                        name: format!("pull-{i}"),
                        image: format!("registry.example/img-{i}"),
                        state: Some(state),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        p
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(format!("{reason}: denied")),
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pulls_are_classified_from_container_states() {
        assert_eq!(classify(&pod()), PullState::Pulling, "no status yet");
        assert_eq!(
            classify(&with_status(
                vec![running(), waiting("ContainerCreating")],
                "Pending"
            )),
            PullState::Pulling
        );
        assert_eq!(
            classify(&with_status(vec![running(), exited(0)], "Running")),
            PullState::Pulled
        );
        assert_eq!(
            classify(&with_status(vec![exited(1), exited(0)], "Failed")),
            PullState::Pulled,
            "a container that ran had its image, whatever its exit code"
        );
        assert_eq!(
            classify(&with_status(vec![], "Succeeded")),
            PullState::Pulled
        );
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            assert_eq!(
                classify(&with_status(vec![running(), waiting(reason)], "Pending")),
                PullState::Failed {
                    reason: reason.into(),
                    image: "registry.example/img-1".into(),
                    message: format!("{reason}: denied"),
                }
            );
            assert_eq!(reason_label(reason), reason);
        }
        assert_eq!(reason_label("SomethingNew"), "Other");
        let mut rejected = with_status(vec![], "Failed");
        rejected.status.as_mut().unwrap().reason = Some("OutOfcpu".into());
        assert!(
            matches!(classify(&rejected), PullState::Failed { reason, .. } if reason == "OutOfcpu")
        );
    }

    #[test]
    fn placeholders_are_warm_only_when_running_the_current_images() {
        let hash = pod().metadata.annotations.unwrap()[IMAGES_ANNOTATION].clone();
        let mut unscheduled = with_status(vec![], "Pending");
        unscheduled.spec.as_mut().unwrap().node_name = None;
        assert_eq!(placeholder_state(&unscheduled, &hash).0, UnitState::Booting);
        let both = with_status(vec![running(), running()], "Running");
        assert_eq!(placeholder_state(&both, &hash).0, UnitState::Warm);
        assert_eq!(
            placeholder_state(&both, "v1-other").0,
            UnitState::Pulling,
            "running older images"
        );
        let failing = with_status(vec![running(), waiting("ImagePullBackOff")], "Pending");
        assert_eq!(placeholder_state(&failing, &hash).0, UnitState::Failed);
    }
}
