//! What the operator lets PrewarmPolicies name.
//!
//! A PrewarmPolicy is a namespaced object that a tenant writes, acted on by a cluster-wide
//! controller with the operator's credentials: left alone, a tenant could pick any NodePool
//! (another team's reserved GPUs), any launch template or subnet, a custom `spec.ec2.endpoint`
//! (which would receive requests signed with the controller's AWS credentials), or a
//! PriorityClass that outranks real work. [`Boundaries`] holds the operator's allow-lists
//! (provisioner flags, chart values `provisioner.allowed.*`); [`Boundaries::check`] names every
//! value of a policy outside them, and such a policy gets the `Allowed=False` condition and no
//! capacity.
//!
//! Each list entry is `name` (any namespace's policies may name it), `namespace/name` (only
//! policies in that namespace), or `*` / `namespace/*` (anything, for all or one namespace).
//! An unset list allows anything, except the EC2 endpoints (only those listed; none by
//! default) and the workload namespaces (see [`Boundaries::workload_namespaces`]).

use crate::crd::{CapacityMode, PrewarmPolicy};

/// Longest entry accepted, and most entries per list: flags are the operator's, but a typo
/// should be an error at start-up, not a slow match.
const MAX_ENTRY: usize = 2048;
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `None`: policies of any namespace.
    namespace: Option<String>,
    /// `*`: any value.
    value: String,
}

/// One allow-list (see the module documentation for the entry syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

impl AllowList {
    /// A list allowing anything, for any namespace.
    pub fn any() -> Self {
        Self {
            entries: vec![Entry {
                namespace: None,
                value: "*".into(),
            }],
        }
    }

    /// Parses the entries of `flag` (empty strings are skipped, so an empty environment
    /// variable is an empty list). `urls`: the values are URLs, which hold `/` themselves, so an
    /// entry's namespace is written `namespace=URL` instead.
    pub fn parse(flag: &str, values: &[String], urls: bool) -> Result<Self, String> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if values.len() > MAX_ENTRIES {
            return Err(format!(
                "--{flag}: {} entries, at most {MAX_ENTRIES}",
                values.len()
            ));
        }
        let mut entries = Vec::with_capacity(values.len());
        for v in values {
            if v.len() > MAX_ENTRY {
                return Err(format!(
                    "--{flag}: an entry of {} bytes, at most {MAX_ENTRY}",
                    v.len()
                ));
            }
            let (namespace, value) = if urls && v.contains("://") {
                match v.split_once('=') {
                    Some((ns, url)) if !ns.contains('/') => (Some(ns), url),
                    _ => (None, v),
                }
            } else if urls {
                (None, v)
            } else {
                match v.split_once('/') {
                    Some((ns, name)) => (Some(ns), name),
                    None => (None, v),
                }
            };
            if namespace.is_some_and(str::is_empty) || value.is_empty() {
                return Err(format!(
                    "--{flag}: {v:?} is neither `name`, `namespace/name` nor `*`"
                ));
            }
            entries.push(Entry {
                namespace: namespace.map(String::from),
                value: value.trim_end_matches('/').to_string(),
            });
        }
        Ok(Self { entries })
    }

    /// Whether a policy in `namespace` may name `value`.
    pub fn allows(&self, namespace: &str, value: &str) -> bool {
        let value = value.trim_end_matches('/');
        self.entries.iter().any(|e| {
            e.namespace.as_deref().is_none_or(|ns| ns == namespace)
                && (e.value == "*" || e.value == value)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The operator's boundaries on what policies may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundaries {
    /// `spec.karpenter.nodePool`; `None`: any.
    pub node_pools: Option<AllowList>,
    /// `spec.ec2.launchTemplate` (its id or its name, whichever the policy gives); `None`: any.
    pub launch_templates: Option<AllowList>,
    /// Each of `spec.ec2.subnetIds`; `None`: any.
    pub subnets: Option<AllowList>,
    /// `spec.ec2.endpoint` (a URL, matched exactly without a trailing `/`; an entry
    /// `namespace=URL` for one namespace). Empty: no policy may name an endpoint (requests go
    /// to AWS's own for the region).
    pub ec2_endpoints: AllowList,
    /// `spec.overprovision.priorityClassName`; `None`: any. Whatever the list, an existing
    /// PriorityClass is only used when its value is negative.
    pub priority_classes: Option<AllowList>,
    /// Namespaces whose policies may have Headroom create pods and Deployments there
    /// (overprovision placeholders). `None`: any (the chart always sets it, to the namespaces
    /// its Roles grant).
    pub workload_namespaces: Option<Vec<String>>,
}

impl Default for Boundaries {
    /// Nothing restricted but custom EC2 endpoints.
    fn default() -> Self {
        Self {
            node_pools: None,
            launch_templates: None,
            subnets: None,
            ec2_endpoints: AllowList::default(),
            priority_classes: None,
            workload_namespaces: None,
        }
    }
}

fn refuse(list: Option<&AllowList>, ns: &str, value: &str) -> bool {
    list.is_some_and(|l| !l.allows(ns, value))
}

impl Boundaries {
    /// Every value of `policy`'s mode that the operator does not allow, as `field "value"`
    /// phrases naming the flag that would allow it. Empty: allowed.
    pub fn check(&self, policy: &PrewarmPolicy) -> Vec<String> {
        let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
        let spec = &policy.spec;
        let mut refused = Vec::new();
        match spec.mode {
            CapacityMode::Karpenter => {
                if let Some(k) = &spec.karpenter
                    && refuse(self.node_pools.as_ref(), ns, &k.node_pool)
                {
                    refused.push(format!(
                        "spec.karpenter.nodePool {:?} is not one the operator allows for namespace {ns} (--allowed-node-pools)",
                        k.node_pool
                    ));
                }
            }
            CapacityMode::Overprovision => {
                let pc = spec
                    .overprovision
                    .clone()
                    .unwrap_or_default()
                    .priority_class_name;
                if refuse(self.priority_classes.as_ref(), ns, &pc) {
                    refused.push(format!(
                        "spec.overprovision.priorityClassName {pc:?} is not one the operator allows for namespace {ns} (--allowed-priority-classes)"
                    ));
                }
                if !self.allows_workloads_in(ns) {
                    refused.push(format!(
                        "namespace {ns} is not one where the operator lets Headroom create placeholder pods (--workload-namespaces)"
                    ));
                }
            }
            CapacityMode::Ec2 => {
                if let Some(e) = &spec.ec2 {
                    for name in [&e.launch_template.id, &e.launch_template.name]
                        .into_iter()
                        .flatten()
                    {
                        if refuse(self.launch_templates.as_ref(), ns, name) {
                            refused.push(format!(
                                "spec.ec2.launchTemplate {name:?} is not one the operator allows for namespace {ns} (--allowed-launch-templates)"
                            ));
                        }
                    }
                    for subnet in &e.subnet_ids {
                        if refuse(self.subnets.as_ref(), ns, subnet) {
                            refused.push(format!(
                                "spec.ec2.subnetIds {subnet:?} is not one the operator allows for namespace {ns} (--allowed-subnets)"
                            ));
                        }
                    }
                    if let Some(endpoint) = &e.endpoint
                        && !self.ec2_endpoint_allowed(ns, endpoint)
                    {
                        refused.push(format!(
                            "spec.ec2.endpoint {endpoint:?} is not one the operator allows for namespace {ns} (--allowed-ec2-endpoints): it would receive requests signed with the provisioner's AWS credentials"
                        ));
                    }
                }
            }
        }
        refused
    }

    /// Whether a policy in `namespace` may send EC2 requests to `endpoint`.
    pub fn ec2_endpoint_allowed(&self, namespace: &str, endpoint: &str) -> bool {
        self.ec2_endpoints.allows(namespace, endpoint)
    }

    /// Whether Headroom may create pods and Deployments in `namespace`.
    pub fn allows_workloads_in(&self, namespace: &str) -> bool {
        self.workload_namespaces
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n == "*" || n == namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        Ec2Spec, KarpenterSpec, LaunchTemplateRef, OverprovisionSpec, PrewarmPolicySpec,
    };

    fn list(v: &[&str]) -> AllowList {
        AllowList::parse(
            "x",
            &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            false,
        )
        .unwrap()
    }

    fn policy(ns: &str, mode: CapacityMode) -> PrewarmPolicy {
        let spec: PrewarmPolicySpec = serde_json::from_value(serde_json::json!({
            "scaledObjectRef": {"name": "w"},
            "demandAddress": "http://s:9090",
            "mode": "karpenter",
            "limits": {"maxNodes": 1, "maxGpus": 1},
        }))
        .unwrap();
        let mut p = PrewarmPolicy::new("p", PrewarmPolicySpec { mode, ..spec });
        p.metadata.namespace = Some(ns.into());
        p
    }

    #[test]
    fn entries_name_a_value_for_every_namespace_or_for_one() {
        let l = list(&["gpu-shared", "ml/gpu-ml", "etl/*", ""]);
        assert!(l.allows("ml", "gpu-shared"));
        assert!(l.allows("anyone", "gpu-shared"));
        assert!(l.allows("ml", "gpu-ml"));
        assert!(!l.allows("media", "gpu-ml"));
        assert!(l.allows("etl", "whatever"));
        assert!(!l.allows("ml", "whatever"));
        assert!(AllowList::any().allows("x", "y"));
        assert!(!AllowList::default().allows("x", "y"));
        for bad in ["/x", "ml/"] {
            assert!(
                AllowList::parse("allowed-node-pools", &[bad.into()], false)
                    .unwrap_err()
                    .contains("allowed-node-pools")
            );
        }
    }

    #[test]
    fn endpoint_entries_are_urls_with_an_optional_namespace() {
        let l = AllowList::parse(
            "allowed-ec2-endpoints",
            &[
                "http://moto.test:5000/".into(),
                "ml=https://vpce-1.ec2.us-east-1.vpce.amazonaws.com".into(),
            ],
            true,
        )
        .unwrap();
        assert!(l.allows("any", "http://moto.test:5000"));
        assert!(l.allows("ml", "https://vpce-1.ec2.us-east-1.vpce.amazonaws.com/"));
        assert!(!l.allows("etl", "https://vpce-1.ec2.us-east-1.vpce.amazonaws.com"));
        assert!(!l.allows("any", "http://moto.test:5000.evil.example"));
        assert!(!l.allows("any", "http://moto.test:5000/x"));
    }

    #[test]
    fn a_policy_naming_what_is_not_allowed_is_refused_naming_each_value_and_flag() {
        let b = Boundaries {
            node_pools: Some(list(&["ml/gpu"])),
            launch_templates: Some(list(&["lt-ok"])),
            subnets: Some(list(&["subnet-a"])),
            priority_classes: Some(list(&["headroom-overprovision"])),
            workload_namespaces: Some(vec!["ml".into()]),
            ..Boundaries::default()
        };
        let mut k = policy("ml", CapacityMode::Karpenter);
        k.spec.karpenter = Some(KarpenterSpec {
            node_pool: "gpu".into(),
            instance_types: vec![],
        });
        assert!(b.check(&k).is_empty());
        k.metadata.namespace = Some("etl".into());
        let r = b.check(&k);
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("\"gpu\"") && r[0].contains("--allowed-node-pools"));

        let mut e = policy("ml", CapacityMode::Ec2);
        e.spec.ec2 = Some(Ec2Spec {
            region: "us-east-1".into(),
            launch_template: LaunchTemplateRef {
                id: Some("lt-other".into()),
                name: None,
                version: None,
            },
            instance_types: vec![],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            spot: false,
            warm_pool_size: 0,
            endpoint: Some("http://evil.example:80".into()),
        });
        let r = b.check(&e).join("\n");
        assert!(r.contains("lt-other") && r.contains("--allowed-launch-templates"));
        assert!(r.contains("subnet-b") && !r.contains("\"subnet-a\""));
        assert!(r.contains("evil.example") && r.contains("--allowed-ec2-endpoints"));

        let mut o = policy("ml", CapacityMode::Overprovision);
        o.spec.overprovision = Some(OverprovisionSpec::default());
        assert!(b.check(&o).is_empty());
        o.metadata.namespace = Some("etl".into());
        assert!(b.check(&o).join("").contains("--workload-namespaces"));
        o.metadata.namespace = Some("ml".into());
        o.spec.overprovision = Some(OverprovisionSpec {
            priority_class_name: "system-cluster-critical".into(),
            ..OverprovisionSpec::default()
        });
        assert!(b.check(&o).join("").contains("system-cluster-critical"));
    }

    #[test]
    fn by_default_only_custom_ec2_endpoints_are_refused() {
        let b = Boundaries::default();
        let mut e = policy("ml", CapacityMode::Ec2);
        e.spec.ec2 = Some(Ec2Spec {
            region: "us-east-1".into(),
            launch_template: LaunchTemplateRef {
                id: Some("lt-1".into()),
                name: None,
                version: None,
            },
            instance_types: vec![],
            subnet_ids: vec!["subnet-a".into()],
            spot: false,
            warm_pool_size: 0,
            endpoint: None,
        });
        assert!(b.check(&e).is_empty());
        e.spec.ec2.as_mut().unwrap().endpoint = Some("http://127.0.0.1:5000".into());
        assert_eq!(b.check(&e).len(), 1);
        assert!(b.allows_workloads_in("anywhere"));
    }
}
