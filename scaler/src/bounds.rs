//! The scaler's input bounds: no call can make it allocate, read or compute without limit.
//!
//! Every bound is checked before the work it bounds is done; a value over one is
//! `INVALID_ARGUMENT` naming the key and the bound. They are constants, not flags: each sits far
//! above any real trigger (the largest real values are noted) and far below what would hurt a
//! 512 MiB scaler serving a cluster.

/// Largest gRPC message the scaler decodes (tonic's default is 4 MiB). A KEDA request carries
/// one trigger's metadata (at most [`MAX_METADATA_BYTES`]); a Demand request at most
/// [`MAX_DEMAND_TRIGGERS`] of them.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 1024 * 1024;

/// Keys in one trigger's metadata (the largest real trigger, Kafka with TLS and SASL and every
/// option, has about 25).
pub const MAX_METADATA_KEYS: usize = 64;

/// Bytes of one metadata value (a PEM certificate chain is a few KiB).
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

/// Bytes of one trigger's metadata, keys and values together.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Partitions listed by Kafka's `partitionLimitation`, ranges expanded, in total.
pub const MAX_KAFKA_PARTITIONS: usize = 10_000;

/// Redis lists one Celery read counts: queues × (priority steps), each an `LLEN`.
pub const MAX_CELERY_LISTS: usize = 256;

/// Windows in one `schedule` (enforced by the schedule parser itself).
pub const MAX_SCHEDULE_WINDOWS: usize = headroom_policy::schedule::MAX_WINDOWS;

/// Triggers in one Demand request.
pub const MAX_DEMAND_TRIGGERS: usize = 16;

/// Forecast points per trigger in one Demand answer (`horizon / step + 1`): 24 hours at the
/// 10 s step headroom-provisioner asks for.
pub const MAX_FORECAST_POINTS: usize = 8_641;

/// Concurrent calls the gRPC server runs per connection (KEDA's operator and adapter each hold
/// one connection and issue a few calls per trigger per poll).
pub const MAX_CONCURRENT_CALLS_PER_CONNECTION: usize = 256;

/// Concurrent HTTP/2 streams per connection, open push streams included.
pub const MAX_CONCURRENT_STREAMS: u32 = 1_024;

/// What is over a bound in `metadata`, as (key, bound) pairs; empty when within.
pub fn metadata_excess(
    metadata: &std::collections::HashMap<String, String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if metadata.len() > MAX_METADATA_KEYS {
        out.push((
            "(metadata)".to_string(),
            format!(
                "{} keys; at most {MAX_METADATA_KEYS} are read",
                metadata.len()
            ),
        ));
    }
    let mut total = 0usize;
    for (k, v) in metadata {
        total = total.saturating_add(k.len()).saturating_add(v.len());
        if v.len() > MAX_VALUE_BYTES {
            out.push((
                k.clone(),
                format!("{} bytes; a value may have {MAX_VALUE_BYTES}", v.len()),
            ));
        }
    }
    if total > MAX_METADATA_BYTES {
        out.push((
            "(metadata)".to_string(),
            format!("{total} bytes in all; a trigger's metadata may have {MAX_METADATA_BYTES}"),
        ));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn metadata_within_the_bounds_has_no_excess() {
        let m: HashMap<String, String> = [("source", "celery"), ("address", "r:6379")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(metadata_excess(&m).is_empty());
    }

    #[test]
    fn too_many_keys_a_long_value_and_a_large_total_are_each_named() {
        let mut m: HashMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        m.insert("ca".into(), "x".repeat(MAX_VALUE_BYTES + 1));
        m.insert("cert".into(), "x".repeat(MAX_VALUE_BYTES));
        let excess = metadata_excess(&m);
        let keys: Vec<&str> = excess.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["(metadata)", "(metadata)", "ca"], "{excess:?}");
    }
}
