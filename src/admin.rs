//! The admin HTTP API (SPEC §7). Health and readiness for now; the call-history, invocation,
//! connection and job routes arrive with the evidence store.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::net::{HttpResponse, json as json_response, json_error};
use crate::runtime::Runtime;

/// Route one admin request.
pub async fn handle(req: Request<Incoming>, rt: Arc<Runtime>) -> HttpResponse {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => json_response(
            StatusCode::OK,
            &json!({
                "status": "ready",
                "sessions": rt.active_sessions.load(std::sync::atomic::Ordering::Relaxed),
            }),
        ),
        (_, "/healthz" | "/readyz") => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}
