//! The simulator is built from the pure policy crate alone: none of the programs' I/O
//! dependencies (queue clients, the AWS SDK, Kubernetes, gRPC, the async runtime) may enter its
//! build. Issue 10, item 7.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn headroom_sim_builds_without_any_io_dependency() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "--manifest-path", manifest])
        .args(["-p", "headroom-sim", "-e", "normal", "--prefix", "none"])
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("headroom-policy "), "{tree}");
    // Each line is `name vX.Y.Z ...`; a crate named exactly `tokio`, or any of a family.
    let forbidden = [
        "rdkafka",
        "aws-sdk",
        "aws-config",
        "kube",
        "tonic",
        "tokio ",
    ];
    let found: Vec<&str> = tree
        .lines()
        .filter(|line| forbidden.iter().any(|f| line.starts_with(f)))
        .collect();
    assert!(found.is_empty(), "headroom-sim depends on {found:?}");
    for program in ["headroom-scaler ", "headroom-provisioner "] {
        assert!(!tree.contains(program), "headroom-sim depends on {program}");
    }
}
