//! The one place where engine errors become gRPC statuses. Bad input maps to
//! `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail naming the field.

use quiver_engine::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Maps an engine error to a status with a message naming what is wrong.
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match &e {
        Error::InvalidArgument { field, reason } => {
            let details = ErrorDetails::with_bad_request_violation(field.clone(), reason.clone());
            Status::with_error_details(Code::InvalidArgument, msg, details)
        }
        Error::BadValue { row, field, reason } => {
            let details = ErrorDetails::with_bad_request_violation(
                format!("events[{row}].{field}"),
                reason.clone(),
            );
            Status::with_error_details(Code::InvalidArgument, msg, details)
        }
        Error::Sql(_) => Status::invalid_argument(msg),
        Error::NotFound { .. } => Status::not_found(msg),
        Error::AlreadyExists { .. } => Status::already_exists(msg),
        Error::Config(_) => Status::failed_precondition(msg),
        Error::Unavailable(_) => Status::unavailable(msg),
        Error::Io { .. } | Error::Delta(_) | Error::Arrow(_) | Error::Internal(_) => {
            tracing::error!(error = %msg, "internal error");
            Status::internal(msg)
        }
    }
}

/// An `INVALID_ARGUMENT` for a request field.
pub fn invalid(field: &str, reason: impl Into<String>) -> Status {
    status(Error::invalid(field, reason))
}
