//! Routine handlers: async functions of a [`Context`] and parameters, stored type-erased.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::context::Context;
use crate::error::RoutineError;

/// What a handler returns once called.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, RoutineError>> + Send>>;

/// A routine handler with its parameter and result types erased to JSON.
pub(crate) type Handler = Arc<dyn Fn(Context, Value) -> HandlerFuture + Send + Sync>;

/// The error type of parameters that do not deserialise into a typed routine's input.
pub const INVALID_PARAMS_TYPE: &str = "InvalidParams";

/// The error type of a result that does not serialise to JSON.
pub const INVALID_RESULT_TYPE: &str = "InvalidResult";

/// Wraps a handler that takes and returns JSON.
pub(crate) fn plain<F, Fut>(handler: F) -> Handler
where
    F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, RoutineError>> + Send + 'static,
{
    Arc::new(move |ctx, params| Box::pin(handler(ctx, params)))
}

/// Wraps a handler with typed parameters and result, converted through serde.
///
/// Parameters that do not fit `P` fail the attempt without retry: a retry would get the
/// same parameters.
pub(crate) fn typed<P, O, F, Fut>(handler: F) -> Handler
where
    P: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(Context, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, RoutineError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |ctx, params| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let params: P = serde_json::from_value(params).map_err(|error| {
                RoutineError::fatal(format!("parameters do not fit the routine: {error}"))
                    .with_type(INVALID_PARAMS_TYPE)
            })?;
            let output = handler(ctx, params).await?;
            serde_json::to_value(output).map_err(|error| {
                RoutineError::fatal(format!("the result does not serialise: {error}"))
                    .with_type(INVALID_RESULT_TYPE)
            })
        })
    })
}
