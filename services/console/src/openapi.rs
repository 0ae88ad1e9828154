//! The OpenAPI 3 document of `/api/v1`, generated from the handlers and the protocol types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drover console API",
        description = "Runs, workers, pools and logs, as the Drover console shows them. \
            Reads need nothing; actions need the console's token as a bearer token. Errors \
            carry the `v1.error` codes of the services (docs/protocol.md), plus \
            `not_permitted`, `not_found` and `method_not_allowed`.",
    ),
    paths(
        crate::api::overview,
        crate::api::runs,
        crate::api::submit,
        crate::api::run,
        crate::api::children,
        crate::api::run_logs,
        crate::api::cancel,
        crate::api::resubmit,
        crate::api::workers,
        crate::api::worker,
        crate::api::worker_logs,
        crate::api::pools,
        crate::api::pool,
        crate::api::scale,
        crate::api::restart,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&TokenScheme),
    tags(
        (name = "overview", description = "Services, workers, runs and throughput at a glance"),
        (name = "runs", description = "Runs, their children and their logs"),
        (name = "workers", description = "Workers and their logs"),
        (name = "pools", description = "WorkerPools"),
        (name = "actions", description = "What the console's token allows"),
    )
)]
struct ApiDoc;

struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document served at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
