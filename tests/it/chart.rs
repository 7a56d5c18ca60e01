//! The Helm chart (charts/headroom) against the real tools: the test bed's helm renders it exactly
//! as committed in charts/headroom/rendered/ (regenerate with `bash tests/scripts/render-chart.sh`),
//! `helm lint --strict` passes, a real kube-apiserver accepts every rendered object in a
//! server-side dry run (with prometheus-operator's CRDs for the ServiceMonitor and PrometheusRule),
//! the RBAC it installs grants exactly the access listed in docs/operations.md ("What each program may do"), and
//! bad values fail `helm install` with a message naming the value. The examples' ScaledObjects
//! and PrewarmPolicies are validated the same way against KEDA's and the chart's CRDs.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use headroom_integration::kube::{KubeCluster, helm_bin, keda_crds_dir, kubectl_bin};
use headroom_integration::prometheus;
use headroom_integration::repo_root;

fn chart() -> PathBuf {
    repo_root().join("charts/headroom")
}

/// Every `ci/<name>-values.yaml` with its committed render `rendered/<name>.yaml`.
fn renders() -> Vec<(String, PathBuf, PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix("-values.yaml")?
                .to_string();
            let rendered = chart().join("rendered").join(format!("{name}.yaml"));
            Some((name, path, rendered))
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|(n, ..)| n == "default") && out.iter().any(|(n, ..)| n == "all-options"),
        "charts/headroom/ci holds default-values.yaml and all-options-values.yaml: {out:?}"
    );
    out
}

fn helm(args: &[&str]) -> std::process::Output {
    headroom_integration::kube::ensure_installed().unwrap();
    Command::new(helm_bin()).args(args).output().unwrap()
}

/// `helm template` exactly as tests/scripts/render-chart.sh runs it.
fn render(values: &Path) -> String {
    let out = helm(&[
        "template",
        "headroom",
        chart().to_str().unwrap(),
        "--namespace",
        "headroom",
        "--values",
        values.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "helm template: {out:?}");
    // render-chart.sh writes the output followed by one newline (printf '%s\n' of $(...), which
    // strips trailing newlines).
    format!(
        "{}\n",
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('\n')
    )
}

/// One cluster for this binary, with the CRDs every rendered object and example needs, and the
/// namespaces they name.
fn cluster() -> &'static KubeCluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = KubeCluster::shared().unwrap();
    READY.get_or_init(|| {
        prometheus::ensure_installed().unwrap();
        // The provisioner's ClusterRole names NodeClaims and NodePools.
        cluster.install_karpenter_crds().unwrap();
        let ops = prometheus::operator_crds_dir();
        for crd in [
            ops.join("monitoring.coreos.com_servicemonitors.yaml"),
            ops.join("monitoring.coreos.com_prometheusrules.yaml"),
            keda_crds_dir().join("keda.sh_scaledobjects.yaml"),
            chart().join("crds/prewarmpolicies.headroom.dev.yaml"),
        ] {
            cluster.apply_path(&crd).unwrap();
        }
        cluster
            .wait_established(&[
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
                "crd/scaledobjects.keda.sh",
                "crd/prewarmpolicies.headroom.dev",
            ])
            .unwrap();
        let namespaces: String = ["headroom", "ml", "etl", "media", "monitoring"]
            .iter()
            .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n---\n"))
            .collect();
        cluster.apply(&namespaces).unwrap();
    });
    cluster
}

/// Objects (`kind/name`) in a stream of YAML documents.
fn objects(yaml: &str) -> Vec<String> {
    yaml.split("\n---")
        .filter_map(|doc| {
            let v: serde_yaml::Value = serde_yaml::from_str(doc).ok()?;
            Some(format!(
                "{}/{}",
                v["kind"].as_str()?,
                v["metadata"]["name"].as_str()?
            ))
        })
        .collect()
}

#[test]
fn committed_renders_are_what_helm_template_makes_of_the_chart() {
    for (name, values, rendered) in renders() {
        let committed = std::fs::read_to_string(&rendered).unwrap_or_default();
        let fresh = render(&values);
        assert!(
            committed == fresh,
            "charts/headroom/rendered/{name}.yaml is stale: regenerate it with \
             `bash tests/scripts/render-chart.sh` (and review the diff)"
        );
    }
}

#[test]
fn helm_lint_strict_passes_with_every_values_file() {
    for (name, values, _) in renders() {
        let out = helm(&[
            "lint",
            "--strict",
            chart().to_str().unwrap(),
            "--values",
            values.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "helm lint --strict with ci/{name}-values.yaml: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_all_options_render_holds_every_optional_object() {
    let all = std::fs::read_to_string(chart().join("rendered/all-options.yaml")).unwrap();
    let all_objects = objects(&all);
    for want in [
        "Deployment/headroom-scaler",
        "Service/headroom-scaler",
        "Service/headroom-scaler-headless",
        "Deployment/headroom-provisioner",
        "Service/headroom-provisioner-metrics",
        "PodDisruptionBudget/headroom-scaler",
        "PodDisruptionBudget/headroom-provisioner",
        "NetworkPolicy/headroom-scaler",
        "NetworkPolicy/headroom-provisioner",
        "ServiceMonitor/headroom-scaler",
        "ServiceMonitor/headroom-provisioner",
        "PrometheusRule/headroom",
        "ConfigMap/headroom-dashboard-scaler",
        "ConfigMap/headroom-dashboard-provisioner",
        "Role/headroom-scaler-secrets",
        "ClusterRole/headroom-provisioner",
        "Role/headroom-provisioner-leader-election",
    ] {
        assert!(
            all_objects.iter().any(|o| o == want),
            "{want} missing from {all_objects:?}"
        );
    }
    // Scaler Secret reads: one Role per listed namespace, none cluster-wide.
    assert!(
        !all_objects
            .iter()
            .any(|o| o == "ClusterRole/headroom-scaler-secrets")
    );
    for needle in [
        "HEADROOM_TLS_CLIENT_CA",
        "eks.amazonaws.com/role-arn",
        "resourceNames:",
        "fieldPath: metadata.name",
        "readOnlyRootFilesystem: true",
        "honorLabels: true",
    ] {
        assert!(
            all.contains(needle),
            "{needle} missing from all-options.yaml"
        );
    }
    let default = std::fs::read_to_string(chart().join("rendered/default.yaml")).unwrap();
    let default_objects = objects(&default);
    assert!(
        !default.contains("secrets"),
        "the default scaler gets no Secret access"
    );
    // On by default: the scaler answers whoever reaches its port.
    assert!(
        default_objects
            .iter()
            .any(|o| o == "NetworkPolicy/headroom-scaler"),
        "{default_objects:?}"
    );
    for absent in ["ServiceMonitor/", "PrometheusRule/", "ConfigMap/"] {
        assert!(
            !default_objects.iter().any(|o| o.starts_with(absent)),
            "{absent} is optional: {default_objects:?}"
        );
    }
}

#[test]
fn a_real_apiserver_accepts_every_rendered_object_in_a_server_side_dry_run() {
    let cluster = cluster();
    for (name, _, rendered) in renders() {
        let out = cluster
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "-f",
                rendered.to_str().unwrap(),
            ])
            .unwrap_or_else(|e| panic!("rendered/{name}.yaml: {e:#}"));
        let want = objects(&std::fs::read_to_string(&rendered).unwrap());
        let accepted = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            want.len(),
            "rendered/{name}.yaml: every object accepted:\n{out}"
        );
    }
}

#[test]
fn examples_are_valid_against_the_keda_and_prewarmpolicy_crds() {
    let cluster = cluster();
    for example in ["celery", "sqs", "kafka"] {
        let dir = repo_root().join("examples").join(example);
        for file in [
            "scaledobject.yaml",
            "scaledobject-planned.yaml",
            "prewarmpolicy.yaml",
        ] {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let out = cluster
                .kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("examples/{example}/{file}: {e:#}"));
            assert_eq!(
                out.lines()
                    .filter(|l| l.contains("(server dry run)"))
                    .count(),
                objects(&text).len(),
                "examples/{example}/{file}: {out}"
            );
        }
        // The policy follows the planned ScaledObject, in its namespace.
        let so: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(dir.join("scaledobject-planned.yaml")).unwrap(),
        )
        .unwrap();
        let policy: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("prewarmpolicy.yaml")).unwrap())
                .unwrap();
        assert_eq!(
            policy["spec"]["scaledObjectRef"]["name"], so["metadata"]["name"],
            "examples/{example}"
        );
        assert_eq!(
            policy["metadata"]["namespace"], so["metadata"]["namespace"],
            "examples/{example}"
        );
    }
}

/// The planned examples' triggers are what the scaler accepts (parsed by its own metadata
/// parser, as every RPC does), in planned mode with a schedule.
#[test]
fn planned_example_triggers_parse_as_planned_mode_with_a_schedule() {
    use headroom_scaler::check::triggers_from_yaml;
    use headroom_scaler::trigger::Trigger;
    for example in ["celery", "sqs", "kafka"] {
        let path = repo_root()
            .join("examples")
            .join(example)
            .join("scaledobject-planned.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        // What KEDA would resolve from the worker's environment.
        let env = |k: &str| {
            Some(match k {
                "REDIS_ADDRESS" => "redis.ml.svc:6379".to_string(),
                "QUEUE_URL" => "https://sqs.eu-west-1.amazonaws.com/123456789012/transcode".into(),
                _ => "secret".to_string(),
            })
        };
        let inputs = triggers_from_yaml(&yaml, &env).unwrap();
        assert_eq!(inputs.len(), 1, "examples/{example}");
        let input = &inputs[0];
        let trigger =
            Trigger::parse(&input.metadata).unwrap_or_else(|e| panic!("examples/{example}: {e}"));
        assert!(
            trigger.planned().is_some(),
            "examples/{example} is in planned mode"
        );
        assert!(
            input.metadata.contains_key("schedule"),
            "examples/{example} declares a schedule"
        );
    }
}

/// `kubectl auth can-i` as a ServiceAccount (`namespace:name`).
fn can(cluster: &KubeCluster, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["auth", "can-i", verb])
        .arg(format!("--as=system:serviceaccount:{sa}"));
    // `kind/status` is a subresource; `secrets/<name>` a name.
    match resource.split_once('/') {
        Some((kind, sub)) if sub == "status" || sub == "finalizers" => {
            cmd.args([kind, "--subresource", sub]);
        }
        _ => {
            cmd.arg(resource);
        }
    }
    if let Some(ns) = ns {
        cmd.args(["--namespace", ns]);
    }
    // can-i prints yes or no, and exits 1 on no.
    let out = cmd.output().unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn the_installed_rbac_grants_each_program_exactly_what_it_uses() {
    let cluster = cluster();
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    // The images do not exist here, so no --wait: this is about the objects, not the pods.
    let out = helm(&[
        "upgrade",
        "--install",
        "rbac",
        chart().to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "headroom",
        "--set",
        "scaler.secretAccess.enabled=true",
        "--set",
        "scaler.secretAccess.namespaces={ml}",
        "--set",
        "scaler.secretAccess.resourceNames={redis-credentials}",
        "--set",
        "provisioner.workloadNamespaces={ml}",
    ]);
    assert!(out.status.success(), "helm install: {out:?}");

    let p = "headroom:rbac-headroom-provisioner";
    let yes: &[(&str, &str, Option<&str>)] = &[
        ("watch", "prewarmpolicies.headroom.dev", Some("ml")),
        ("patch", "prewarmpolicies.headroom.dev/status", Some("ml")),
        (
            "update",
            "prewarmpolicies.headroom.dev/finalizers",
            Some("ml"),
        ),
        ("get", "scaledobjects.keda.sh", Some("ml")),
        ("list", "statefulsets.apps", Some("ml")),
        ("create", "deployments.apps", Some("ml")),
        ("delete", "deployments.apps", Some("ml")),
        ("update", "deployments.apps", Some("ml")),
        ("watch", "pods", Some("ml")),
        ("patch", "pods", Some("ml")),
        // Pre-pull pods (provisioner.warm.enabled, the default).
        ("create", "pods", Some("ml")),
        ("delete", "pods", Some("ml")),
        ("patch", "prewarmpolicies.headroom.dev", Some("ml")),
        ("list", "nodes", None),
        ("patch", "nodes", None),
        ("create", "nodeclaims.karpenter.sh", None),
        ("patch", "nodeclaims.karpenter.sh", None),
        ("watch", "nodepools.karpenter.sh", None),
        ("create", "priorityclasses.scheduling.k8s.io", None),
        ("create", "events", Some("ml")),
        ("patch", "events.events.k8s.io", Some("ml")),
        ("update", "leases.coordination.k8s.io", Some("headroom")),
    ];
    for (verb, resource, ns) in yes {
        assert!(
            can(cluster, p, verb, resource, *ns),
            "provisioner may {verb} {resource} in {ns:?}"
        );
    }
    let no: &[(&str, &str, Option<&str>)] = &[
        ("get", "secrets", Some("ml")),
        ("update", "pods", Some("ml")),
        ("delete", "nodes", None),
        ("update", "nodeclaims.karpenter.sh", None),
        ("create", "nodepools.karpenter.sh", None),
        ("delete", "priorityclasses.scheduling.k8s.io", None),
        ("update", "prewarmpolicies.headroom.dev", Some("ml")),
        // Placeholder writes only in provisioner.workloadNamespaces.
        ("create", "deployments.apps", Some("etl")),
        ("update", "deployments.apps", Some("etl")),
        ("delete", "deployments.apps", Some("etl")),
        ("patch", "pods", Some("etl")),
        ("create", "pods", Some("etl")),
        ("delete", "pods", Some("etl")),
        ("update", "leases.coordination.k8s.io", Some("ml")),
        ("patch", "scaledobjects.keda.sh", Some("ml")),
    ];
    for (verb, resource, ns) in no {
        assert!(
            !can(cluster, p, verb, resource, *ns),
            "provisioner may not {verb} {resource} in {ns:?}"
        );
    }

    let s = "headroom:rbac-headroom-scaler";
    assert!(can(
        cluster,
        s,
        "get",
        "secrets/redis-credentials",
        Some("ml")
    ));
    assert!(can(
        cluster,
        s,
        "watch",
        "secrets/redis-credentials",
        Some("ml")
    ));
    assert!(!can(cluster, s, "get", "secrets/other", Some("ml")));
    assert!(!can(
        cluster,
        s,
        "get",
        "secrets/redis-credentials",
        Some("etl")
    ));
    assert!(!can(cluster, s, "list", "pods", Some("ml")));
    assert!(!can(cluster, s, "get", "configmaps", Some("ml")));

    let out = helm(&[
        "uninstall",
        "rbac",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "headroom",
    ]);
    assert!(out.status.success(), "helm uninstall: {out:?}");
}

#[test]
fn helm_install_with_bad_values_fails_naming_the_value_and_installs_nothing() {
    let cluster = cluster();
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let chart = chart();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "scaler.replicas=-1"], "/scaler/replicas"),
        (&["--set", "scaler.replicaz=2"], "'replicaz'"),
        (&["--set", "scaler.logFormat=xml"], "/scaler/logFormat"),
        (
            &["--set", "scaler.observationTtl=1sec"],
            "/scaler/observationTtl",
        ),
        (
            &["--set", "scaler.tls.enabled=true"],
            "/scaler/tls/secretName",
        ),
        (
            &["--set", "provisioner.leaseDuration=soon"],
            "/provisioner/leaseDuration",
        ),
        (
            &["--set", "provisioner.watchNamespace=Not_A_Namespace"],
            "/provisioner/watchNamespace",
        ),
        (
            &["--set", "metrics.prometheusRule.severity=page"],
            "/metrics/prometheusRule/severity",
        ),
        (&["--set", "dashboards.enabled=yes"], "/dashboards/enabled"),
        (
            // Secret reads are granted per namespace, never cluster-wide.
            &["--set", "scaler.secretAccess.enabled=true"],
            "/scaler/secretAccess/namespaces",
        ),
        (
            &["--set", "scaler.allowedBackends={a b}"],
            "/scaler/allowedBackends",
        ),
    ];
    for (args, names) in cases {
        let mut all = vec![
            "install",
            "bad",
            chart.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            "headroom",
        ];
        all.extend_from_slice(args);
        let out = helm(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(names),
            "{args:?}: the error names {names}: {stderr}"
        );
    }
    let list = helm(&[
        "list",
        "--all",
        "--short",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "headroom",
    ]);
    assert!(
        !String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l == "bad"),
        "a rejected install leaves no release"
    );
}
