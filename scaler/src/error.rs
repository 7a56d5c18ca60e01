//! The scaler's errors and the one place where they become gRPC statuses.

use tonic::{Code, Status};

use crate::metadata::MetadataError;
use crate::secrets::SecretError;
use crate::sources::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The trigger's metadata is wrong: KEDA shows this on the ScaledObject.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The queue could not be read: KEDA counts a failure and, past the threshold, uses the
    /// ScaledObject's fallback. Never answered as 0.
    #[error("{source_name} read failed: {error}")]
    Source {
        source_name: &'static str,
        #[source]
        error: SourceError,
    },
    /// The request itself is malformed (no ScaledObjectRef).
    #[error("{0}")]
    Request(&'static str),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Metadata(e) if e.is_refusal() => Code::PermissionDenied,
            Error::Metadata(_) | Error::Request(_) => Code::InvalidArgument,
            Error::Source { error, .. } => match error {
                SourceError::Auth { .. } => Code::PermissionDenied,
                SourceError::NotFound { .. } => Code::NotFound,
                SourceError::WrongType { .. } => Code::FailedPrecondition,
                SourceError::Unavailable { .. }
                | SourceError::Timeout { .. }
                | SourceError::Backend { .. }
                | SourceError::Protocol { .. } => Code::Unavailable,
                SourceError::Secret(e) => match e {
                    SecretError::Unavailable { .. } => Code::Unavailable,
                    // One answer whether it is absent or refused: see SecretError.
                    SecretError::Unreadable { .. } => Code::NotFound,
                },
            },
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
