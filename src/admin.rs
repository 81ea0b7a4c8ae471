//! The admin HTTP API (SPEC §7).
//!
//! Unauthenticated: `/healthz`, `/readyz`, `/metrics`. Everything else needs
//! `Authorization: Bearer <admin token>`: a `[admin] tokens` token sees every org, an org's
//! `admin_tokens` token sees only that org, and another org's objects answer 404, as if they
//! did not exist. Errors are `{"error": code, "message": text}`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::net::{HttpResponse, json as json_response, json_error};
use crate::runtime::{AdminScope, Runtime};
use crate::telemetry;
use crate::workflow::{JobState, now_ms};

/// Most jobs one list returns.
const MAX_LIMIT: usize = 1000;

/// Route one admin request.
pub async fn handle(req: Request<Incoming>, rt: Arc<Runtime>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => ready(&rt).await,
        (&Method::GET, ["metrics"]) => metrics(&rt).await,
        (_, ["healthz" | "readyz" | "metrics"]) => method_not_allowed("GET"),
        (method, ["v1", "jobs", rest @ ..]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match (method, rest) {
                (&Method::GET, []) => list_jobs(&req, &rt, &scope).await,
                (&Method::POST, [id, "retry"]) => retry_job(id, &rt, &scope).await,
                (_, []) => method_not_allowed("GET"),
                (_, [_, "retry"]) => method_not_allowed("POST"),
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The scope of the request's admin bearer token, or the 401 to answer.
fn authorize(req: &Request<Incoming>, rt: &Runtime) -> Result<AdminScope, HttpResponse> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match token.and_then(|t| rt.admin_scope(t)) {
        Some(scope) => Ok(scope.clone()),
        None => {
            let mut resp = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <admin token>",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(resp)
        }
    }
}

fn visible(scope: &AdminScope, org: &str) -> bool {
    match scope {
        AdminScope::All => true,
        AdminScope::Org(own) => own == org,
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn ready(rt: &Runtime) -> HttpResponse {
    match rt.jobs.ping().await {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({
                "status": "ready",
                "sessions": rt.active_sessions.load(std::sync::atomic::Ordering::Relaxed),
            }),
        ),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            &format!("the job store does not answer: {e}"),
        ),
    }
}

async fn metrics(rt: &Runtime) -> HttpResponse {
    let handle = telemetry::prometheus();
    if let Ok(counts) = rt.jobs.counts().await {
        telemetry::job_counts(&counts);
    }
    handle.run_upkeep();
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            handle.render(),
        )))
        .expect("static response parts are valid")
}

async fn list_jobs(req: &Request<Incoming>, rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    let state = match query_param(req, "state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match JobState::parse(&s) {
            Some(state) => Some(state),
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!(
                        "state {s:?} is not one of queued, in_flight, succeeded, failed, dead"
                    ),
                );
            }
        },
    };
    let limit = match query_param(req, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("limit must be 1..={MAX_LIMIT}"),
            );
        }
    };
    let org = match scope {
        AdminScope::All => None,
        AdminScope::Org(o) => Some(o.clone()),
    };
    match rt.jobs.list(state, org, limit).await {
        Ok(jobs) => json_response(StatusCode::OK, &json!({ "jobs": jobs })),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn retry_job(id: &str, rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    match rt.jobs.get(id).await {
        Ok(Some(job)) if visible(scope, &job.org) => {}
        Ok(_) => return json_error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            );
        }
    }
    match rt.jobs.retry(id, now_ms()).await {
        Ok(Some(Ok(job))) => json_response(StatusCode::OK, &json!({ "job": job })),
        Ok(Some(Err(state))) => json_error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("the job is {state}; only failed or dead jobs can be retried"),
        ),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}
