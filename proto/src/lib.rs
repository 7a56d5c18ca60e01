//! Wire types and gRPC stubs shared by Headroom's programs, tests and benchmarks.
//!
//! [`externalscaler`] is KEDA's external scaler protocol, byte-for-byte: package `externalscaler`,
//! service `ExternalScaler`, the same message and field numbers, so KEDA's operator and metrics
//! server talk to `headroom-scaler` as to any external scaler.
//!
//! [`headroom::v1`] is Headroom's own: `Demand`, which the provisioner calls for the replicas a
//! ScaledObject needs now and over the next horizon.

/// Headroom's own services (`headroom.v1`): the Demand service between the scaler and the
/// provisioner.
pub mod headroom {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("headroom.v1");
    }
}

/// KEDA's `externalscaler` package (client and server).
#[allow(clippy::all, missing_docs, deprecated)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

#[cfg(test)]
mod tests {
    use super::externalscaler::*;
    use prost::Message;
    use std::collections::HashMap;

    /// Field numbers and wire types are the contract with KEDA: encode each message and compare
    /// with bytes written out by hand from KEDA's proto (tag = field << 3 | wire type).
    #[test]
    fn messages_encode_with_keda_field_numbers() {
        let r = ScaledObjectRef {
            name: "a".into(),
            namespace: "b".into(),
            scaler_metadata: HashMap::from([("k".into(), "v".into())]),
        };
        // 1:"a", 2:"b", 3:{1:"k", 2:"v"}
        assert_eq!(
            r.encode_to_vec(),
            [
                0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 6, 0x0a, 1, b'k', 0x12, 1, b'v'
            ]
        );
        assert_eq!(IsActiveResponse { result: true }.encode_to_vec(), [0x08, 1]);

        #[allow(deprecated)]
        let spec = MetricSpec {
            metric_name: "m".into(),
            target_size: 2,
            target_size_float: 2.0,
        };
        let mut expected = vec![0x0a, 1, b'm', 0x10, 2, 0x19];
        expected.extend_from_slice(&2.0f64.to_le_bytes());
        assert_eq!(spec.encode_to_vec(), expected);
        let mut wrapped = vec![0x0a, expected.len() as u8];
        wrapped.extend_from_slice(&expected);
        assert_eq!(
            GetMetricSpecResponse {
                metric_specs: vec![spec]
            }
            .encode_to_vec(),
            wrapped
        );

        #[allow(deprecated)]
        let value = MetricValue {
            metric_name: "m".into(),
            metric_value: 3,
            metric_value_float: 2.5,
        };
        let mut expected = vec![0x0a, 1, b'm', 0x10, 3, 0x19];
        expected.extend_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(value.encode_to_vec(), expected);

        let req = GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: "a".into(),
                ..Default::default()
            }),
            metric_name: "m".into(),
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 3, 0x0a, 1, b'a', 0x12, 1, b'm']);
    }

    #[test]
    fn service_paths_match_keda() {
        // tonic derives method paths from package + service + rpc names.
        let names = [
            "/externalscaler.ExternalScaler/IsActive",
            "/externalscaler.ExternalScaler/StreamIsActive",
            "/externalscaler.ExternalScaler/GetMetricSpec",
            "/externalscaler.ExternalScaler/GetMetrics",
            "/externalscaler.ExternalScaler/StreamMetricSpec",
        ];
        let source = include_str!(concat!(env!("OUT_DIR"), "/externalscaler.rs"));
        for name in names {
            assert!(source.contains(name), "generated code lacks {name}");
        }
    }
}
