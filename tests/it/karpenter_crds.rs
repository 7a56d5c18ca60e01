//! Smoke tests of Karpenter's CRDs on the real control plane (taken from the
//! `sigs.k8s.io/karpenter` module by tests/scripts/install-k8s.sh): they install, a NodeClaim with
//! `nodeClassRef` and requirements round-trips with the CRD's defaults applied, and the CRD's
//! schema and CEL rules reject bad NodeClaims with messages that name the problem — the
//! validation the provisioner (issue 5) will meet.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use headroom_integration::kube::KubeCluster;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

fn nodeclaims(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim");
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

fn nodeclaim(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"headroom.dev/managed-by": "headroom"}},
        "spec": spec,
    }))
    .unwrap()
}

fn valid_spec() -> serde_json::Value {
    serde_json::json!({
        "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"},
        "requirements": [
            // The kwok provider needs an instance type on every NodeClaim.
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.xlarge", "g5.2xlarge"]},
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gte", "values": ["1"]},
        ],
        "resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "2"}},
    })
}

/// The API server's refusal of a create, as text (the test fails if it was accepted).
async fn rejection(api: &Api<DynamicObject>, obj: &DynamicObject) -> String {
    match api.create(&PostParams::default(), obj).await {
        Ok(o) => panic!("accepted an invalid NodeClaim: {:?}", o.data),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn karpenter_crds_install_and_a_nodeclaim_round_trips_and_bad_ones_are_rejected() {
    let cluster = KubeCluster::shared().unwrap();
    cluster.install_karpenter_crds().unwrap();
    let client = cluster.client().await.unwrap();

    // The kwok provider's node class, which the NodeClaims reference.
    cluster
        .apply(
            "apiVersion: karpenter.kwok.sh/v1alpha1\nkind: KWOKNodeClass\nmetadata:\n  name: default\n",
        )
        .unwrap();

    let api = nodeclaims(&client);
    let created = api
        .create(
            &PostParams::default(),
            &nodeclaim("gpu-claim", valid_spec()),
        )
        .await
        .unwrap();
    let read = api.get("gpu-claim").await.unwrap();
    assert_eq!(read.metadata.uid, created.metadata.uid);
    let spec = &read.data["spec"];
    assert_eq!(spec["nodeClassRef"]["kind"], "KWOKNodeClass");
    assert_eq!(
        spec["requirements"][0]["values"],
        serde_json::json!(["g5.xlarge", "g5.2xlarge"])
    );
    assert_eq!(spec["requirements"][2]["operator"], "Gte");
    assert_eq!(spec["resources"]["requests"]["nvidia.com/gpu"], "1");
    // Filled in by the CRD's schema defaults.
    assert_eq!(spec["expireAfter"], "720h");
    assert_eq!(
        read.metadata.labels.as_ref().unwrap()["headroom.dev/managed-by"],
        "headroom"
    );

    // NodeClaim.spec is immutable (CEL rule `self == oldSelf`).
    let patch = serde_json::json!({"spec": {"expireAfter": "1h"}});
    let err = api
        .patch("gpu-claim", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec is immutable"), "{err}");
    // Metadata is not: the provisioner holds claims with an annotation.
    let hold =
        serde_json::json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}});
    let held = api
        .patch("gpu-claim", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    assert_eq!(
        held.metadata.annotations.unwrap()["karpenter.sh/do-not-disrupt"],
        "true"
    );

    // No nodeClassRef.
    let mut spec = valid_spec();
    spec.as_object_mut().unwrap().remove("nodeClassRef");
    let msg = rejection(&api, &nodeclaim("no-class", spec)).await;
    assert!(msg.contains("spec.nodeClassRef: Required value"), "{msg}");

    // An operator outside the enum.
    let mut spec = valid_spec();
    spec["requirements"][0]["operator"] = "Matches".into();
    let msg = rejection(&api, &nodeclaim("bad-operator", spec)).await;
    assert!(
        msg.contains("spec.requirements[0].operator: Unsupported value: \"Matches\""),
        "{msg}"
    );

    // `In` without values (a CEL rule of the CRD).
    let mut spec = valid_spec();
    spec["requirements"][0]["values"] = serde_json::json!([]);
    let msg = rejection(&api, &nodeclaim("empty-in", spec)).await;
    assert!(
        msg.contains("requirements with operator 'In' must have a value defined"),
        "{msg}"
    );

    // A restricted label domain.
    let mut spec = valid_spec();
    spec["requirements"][1]["key"] = "karpenter.sh/anything".into();
    let msg = rejection(&api, &nodeclaim("restricted", spec)).await;
    assert!(
        msg.contains("label domain \"karpenter.sh\" is restricted"),
        "{msg}"
    );

    // None of the rejected claims exists.
    for name in ["no-class", "bad-operator", "empty-in", "restricted"] {
        assert!(api.get_opt(name).await.unwrap().is_none(), "{name} exists");
    }
}

#[tokio::test]
async fn karpenter_nodepool_with_gpu_limits_is_accepted_and_weight_out_of_range_is_not() {
    let cluster = KubeCluster::shared().unwrap();
    cluster.install_karpenter_crds().unwrap();
    let client = cluster.client().await.unwrap();
    let gvk = GroupVersionKind::gvk("karpenter.sh", "v1", "NodePool");
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::from_gvk(&gvk));
    let pool = |name: &str, weight: i64| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodePool",
            "metadata": {"name": name},
            "spec": {
                "weight": weight,
                "limits": {"nvidia.com/gpu": "8", "cpu": "64"},
                "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30s"},
                "template": {"spec": {
                    "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"},
                    "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.xlarge"]}],
                }},
            }
        }))
        .unwrap()
    };
    let created = api
        .create(&PostParams::default(), &pool("gpu", 10))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["limits"]["nvidia.com/gpu"], "8");
    // Defaulted by the CRD: the disruption budget of 10 % of nodes.
    assert_eq!(
        created.data["spec"]["disruption"]["budgets"][0]["nodes"],
        "10%"
    );
    let err = api
        .create(&PostParams::default(), &pool("too-heavy", 101))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.weight"), "{err}");
}
