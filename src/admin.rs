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
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::Connection;
use crate::connections::{Health, Status};
use crate::runtime::{AdminScope, ReloadError, Runtime};
use crate::telemetry;
use crate::workflow::{JobState, RetryRefused};

/// Most jobs one list returns.
const MAX_LIMIT: usize = 1000;

/// Route one admin request.
pub async fn handle(req: Request<Incoming>, rt: Arc<Runtime>) -> HttpResponse {
    // Each segment percent-decoded: a call id may hold any character (`/` arrives as %2F).
    let decoded: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => ready(&rt).await,
        (&Method::GET, ["metrics"]) => metrics(&rt).await,
        (_, ["healthz" | "readyz" | "metrics"]) => method_not_allowed("GET"),
        (method, ["v1", "connections", rest @ ..]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match (method, rest) {
                (&Method::GET, []) => list_connections(&rt, &scope),
                (&Method::POST, [id, "validate"]) => validate_connection(id, &rt, &scope).await,
                (_, []) => method_not_allowed("GET"),
                (_, [_, "validate"]) => method_not_allowed("POST"),
                _ => not_found(),
            }
        }
        (method, ["v1", "reload"]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match method {
                &Method::POST => reload(&rt, &scope).await,
                _ => method_not_allowed("POST"),
            }
        }
        (method, ["v1", "calls", call_id]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match method {
                &Method::GET => get_call(&req, call_id, &rt, &scope).await,
                _ => method_not_allowed("GET"),
            }
        }
        (method, ["v1", "invocations", rest @ ..]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match (method, rest) {
                (&Method::GET, []) => list_invocations(&req, &rt, &scope).await,
                (&Method::GET, [id]) => get_invocation(id, &rt, &scope).await,
                (_, [] | [_]) => method_not_allowed("GET"),
                _ => not_found(),
            }
        }
        (method, ["v1", "diagnostics"]) => {
            let scope = match authorize(&req, &rt) {
                Ok(scope) => scope,
                Err(resp) => return resp,
            };
            match method {
                &Method::GET => diagnostics(&req, &rt, &scope).await,
                _ => method_not_allowed("GET"),
            }
        }
        (method, ["calls", call_id]) => match method {
            &Method::GET => call_page(&req, call_id, &rt).await,
            _ => method_not_allowed("GET"),
        },
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

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The scope of the request's admin bearer token, or the 401 to answer.
fn authorize(req: &Request<Incoming>, rt: &Runtime) -> Result<AdminScope, HttpResponse> {
    match bearer(req).and_then(|t| rt.snap().admin_scope(t).cloned()) {
        Some(scope) => Ok(scope),
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

/// Free bytes on the filesystem holding `path` (its directory), if it can be told.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Ready when an accepted action can be made durable: the job store commits a write, and the
/// disk of the local files has room.
async fn ready(rt: &Runtime) -> HttpResponse {
    let storage = &rt.snap().config.storage;
    if let Some(free) = free_bytes(&storage.path)
        && free < storage.min_free_bytes
    {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            &format!(
                "the disk of the store has {} MiB free, under storage.min_free_mb ({} MiB): new actions could not be made durable",
                free >> 20,
                storage.min_free_bytes >> 20
            ),
        );
    }
    let writable = match rt.jobs.ping().await {
        Ok(()) => rt.jobs.writable().await,
        Err(e) => Err(e),
    };
    match writable {
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
            &format!("the job store cannot make an action durable: {e}"),
        ),
    }
}

async fn metrics(rt: &Runtime) -> HttpResponse {
    let handle = telemetry::prometheus();
    if let Ok(counts) = rt.jobs.counts().await {
        telemetry::job_counts(JobState::ALL.map(|state| {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            (state.as_str(), n)
        }));
    }
    for (conn, health) in rt.snap().connections.iter() {
        telemetry::connection_up(&conn.id, health.status() == Status::Connected);
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

/// A connection as the admin API shows it: everything but its credentials.
fn connection_json(conn: &Connection, health: &Health) -> serde_json::Value {
    let now = Instant::now();
    let d = health.detail();
    let in_ms = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
    json!({
        "id": conn.id,
        "org": conn.org,
        "provider": conn.provider().as_str(),
        "status": health.status().as_str(),
        "reason": d.reason,
        "validated_at": d.validated_at,
        "checks": d.checks,
        "circuit": health.breaker.state(now).as_str(),
        "circuit_open_ms": health.breaker.open_until(now).map(in_ms),
        "rate": conn.rate.map(|r| format!("{}/{}ms", r.count, r.per.as_millis())),
        "paused_ms": health.limiter.paused_until(now).map(in_ms),
    })
}

fn list_connections(rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    let snap = rt.snap();
    let list: Vec<_> = snap
        .connections
        .iter()
        .filter(|(c, _)| visible(scope, &c.org))
        .map(|(c, h)| connection_json(c, h))
        .collect();
    json_response(StatusCode::OK, &json!({ "connections": list }))
}

async fn validate_connection(id: &str, rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    let snap = rt.snap();
    let (Some(conn), Some(health)) = (snap.connections.connection(id), snap.connections.health(id))
    else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such connection");
    };
    if !visible(scope, &conn.org) {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such connection");
    }
    crate::connections::validate::run_one(
        &rt.providers,
        &snap.config,
        &snap.connections,
        conn,
        health,
    )
    .await;
    json_response(
        StatusCode::OK,
        &json!({ "connection": connection_json(conn, health) }),
    )
}

async fn reload(rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    if *scope != AdminScope::All {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reloading changes every org: it needs a token from [admin] tokens",
        );
    }
    match rt.reload().await {
        Ok(r) => json_response(
            StatusCode::OK,
            &json!({
                "reloaded": true,
                                "changed_connections": r.changed_connections,
                "at_restart": r.at_restart,
                "warnings": r.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        Err(ReloadError::Invalid(e)) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "error": "bad_config",
                "message": "the new config has problems; the old one keeps serving",
                "problems": e.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        Err(e @ ReloadError::NeedsRestart(_)) => {
            json_error(StatusCode::CONFLICT, "needs_restart", &e.to_string())
        }
        Err(e @ ReloadError::NoFile) => json_error(StatusCode::CONFLICT, "no_file", &e.to_string()),
    }
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
    match rt.jobs.list(state, org_of(scope), limit).await {
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
        Ok(Some(Err(RetryRefused::State(state)))) => json_error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("the job is {state}; only failed or dead jobs can be retried"),
        ),
        Ok(Some(Err(RetryRefused::InputsCleared))) => json_error(
            StatusCode::CONFLICT,
            "inputs_cleared",
            "the job's recipient and body were cleared when it ended (workflow.retry_window_ms); \
             there is nothing left to send",
        ),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

fn org_of(scope: &AdminScope) -> Option<String> {
    match scope {
        AdminScope::All => None,
        AdminScope::Org(o) => Some(o.clone()),
    }
}

fn store_error(e: &crate::storage::StoreError) -> HttpResponse {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        &format!("the evidence store failed: {e}"),
    )
}

/// The org whose call to show: an org token's own; for an all-orgs token `?org=` when given
/// (two orgs may use the same call id), else the latest call with that id.
fn call_org(req: &Request<Incoming>, scope: &AdminScope) -> Option<String> {
    org_of(scope).or_else(|| query_param(req, "org").filter(|o| !o.is_empty()))
}

async fn get_call(
    req: &Request<Incoming>,
    call_id: &str,
    rt: &Runtime,
    scope: &AdminScope,
) -> HttpResponse {
    match rt.evidence.call(call_org(req, scope), call_id).await {
        Ok(Some(call)) => json_response(StatusCode::OK, &json!(call)),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", "no such call"),
        Err(e) => store_error(&e),
    }
}

async fn get_invocation(id: &str, rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    match rt.evidence.invocation(id).await {
        Ok(Some(inv)) if visible(scope, &inv.org_id) => {
            json_response(StatusCode::OK, &json!({ "invocation": inv }))
        }
        Ok(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such invocation"),
        Err(e) => store_error(&e),
    }
}

/// Statuses an invocation can end in, for the `status` filter.
const STATUSES: &[&str] = &[
    "succeeded",
    "failed",
    "rejected",
    "deferred",
    "duplicate",
    "cancelled",
    "dead",
];

/// `since`: ms since the epoch, an RFC 3339 time, or a span back from now (`7d`, `24h`).
pub fn parse_since(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        return Some(now_ms() - ago.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

async fn diagnostics(req: &Request<Incoming>, rt: &Runtime, scope: &AdminScope) -> HttpResponse {
    let bad = |m: String| json_error(StatusCode::BAD_REQUEST, "bad_request", &m);
    let since = match query_param(req, "since").filter(|s| !s.is_empty()) {
        None => now_ms() - 7 * 86_400_000,
        Some(s) => match parse_since(&s) {
            Some(ms) => ms,
            None => {
                return bad(format!(
                    "since {s:?} is not ms since the epoch, an RFC 3339 time or a span like 7d"
                ));
            }
        },
    };
    let min_sample = match query_param(req, "min_sample").map(|m| m.parse::<usize>()) {
        None => crate::diagnostics::MIN_SAMPLE,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return bad("min_sample must be a whole number of at least 1".into()),
    };
    let snap = rt.snap();
    let wanted = query_param(req, "agent").filter(|a| !a.is_empty());
    let agents: Vec<_> = snap
        .config
        .agents
        .iter()
        .filter(|a| visible(scope, &a.org))
        .filter(|a| wanted.as_ref().is_none_or(|w| &a.id == w))
        .cloned()
        .collect();
    if let (Some(w), true) = (&wanted, agents.is_empty()) {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no agent {w:?}"),
        );
    }
    let mut reports = Vec::new();
    for agent in agents {
        match crate::diagnostics::diagnose(&rt.evidence, &agent, org_of(scope), since, min_sample)
            .await
        {
            Ok(r) => reports.push(r),
            Err(e) => return store_error(&e),
        }
    }
    json_response(StatusCode::OK, &json!({ "agents": reports }))
}

async fn list_invocations(
    req: &Request<Incoming>,
    rt: &Runtime,
    scope: &AdminScope,
) -> HttpResponse {
    let bad = |m: String| json_error(StatusCode::BAD_REQUEST, "bad_request", &m);
    let status = query_param(req, "status").filter(|s| !s.is_empty());
    if let Some(s) = &status
        && !STATUSES.contains(&s.as_str())
    {
        return bad(format!(
            "status {s:?} is not one of {}",
            STATUSES.join(", ")
        ));
    }
    let since = match query_param(req, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match parse_since(&s) {
            Some(ms) => Some(ms),
            None => {
                return bad(format!(
                    "since {s:?} is neither ms since the epoch nor an RFC 3339 time"
                ));
            }
        },
    };
    let limit = match query_param(req, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return bad(format!("limit must be 1..={MAX_LIMIT}")),
    };
    let cursor = query_param(req, "cursor").filter(|s| !s.is_empty());
    if let Some(c) = &cursor
        && !crate::evidence::store::cursor_is_valid(c)
    {
        return bad("cursor is not one this API gave out".into());
    }
    let q = crate::evidence::store::Query {
        org: org_of(scope),
        call_id: query_param(req, "call_id").filter(|s| !s.is_empty()),
        function: query_param(req, "function").filter(|s| !s.is_empty()),
        status,
        since,
        limit,
        cursor,
    };
    match rt.evidence.invocations(q).await {
        Ok(page) => json_response(StatusCode::OK, &json!(page)),
        Err(e) => store_error(&e),
    }
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header("referrer-policy", "no-referrer")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("static response parts are valid")
}

fn html_message(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    // Fixed texts only: nothing from the request is echoed.
    html(
        status,
        format!(
            "<!doctype html><meta charset=utf-8><title>{title}</title>\
             <body style=\"font:15px system-ui;margin:40px;color:#1f2328\"><h1 style=\"font-size:20px\">{title}</h1><p>{text}</p>"
        ),
    )
}

/// The call detail page. A browser cannot easily send a header, so the admin token may also
/// come as `?access_token=` (RFC 6750 §2.3); the page is never cached and sends no referrer.
async fn call_page(req: &Request<Incoming>, call_id: &str, rt: &Runtime) -> HttpResponse {
    let token = bearer(req)
        .map(str::to_owned)
        .or_else(|| query_param(req, "access_token"));
    let Some(scope) = token.and_then(|t| rt.snap().admin_scope(&t).cloned()) else {
        let mut resp = html_message(
            StatusCode::UNAUTHORIZED,
            "Sign-in needed",
            "Open this page with an admin token: <code>?access_token=TOKEN</code> or an <code>Authorization: Bearer</code> header.",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    match rt.evidence.call(call_org(req, &scope), call_id).await {
        Ok(Some(call)) => html(StatusCode::OK, crate::evidence::page::render(&call)),
        Ok(None) => html_message(
            StatusCode::NOT_FOUND,
            "No such call",
            "No call with this id is recorded (or it is past its retention).",
        ),
        Err(_) => html_message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The evidence store failed",
            "See toolgate's logs.",
        ),
    }
}
