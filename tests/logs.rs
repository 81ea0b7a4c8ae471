//! toolgate's own log lines, at the most verbose level, never carry a secret, a phone number or
//! an email address, even while providers refuse credentials and echo inputs back.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use toolgate::tooling::mock::Reply;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_no_secrets_and_no_caller_pii() {
    let buf = Buf::default();
    let writer = buf.clone();
    tracing_subscriber::fmt()
        .with_env_filter("toolgate=trace")
        .with_writer(move || writer.clone())
        .init();

    let env = Env::start().await;
    env.wati.push(Reply::Raw {
        status: 401,
        headers: vec![],
        body: format!("token {WATI_TOKEN} is not valid for +14155550100"),
    });
    env.resend.push(Reply::ResendError {
        status: 422,
        name: "invalid_parameter".into(),
        message: "Invalid `to` field: ana@example.com".into(),
        retry_after: None,
    });
    let mut s = env.session("c-logs", order_vars()).await;
    s.say("Yes please, my email is ana@example.com").await;
    let a = s
        .call("call_1", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_auth_failed"));
    // What the model and the media server are told counts as shown too.
    let mut frames = vec![a.result.frame.to_string()];
    // The connection is now in error: the next call fails fast with an error frame's kin.
    let a = s
        .call("call_1b", "whatsapp_note", json!({"text": "again"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    frames.push(a.result.frame.to_string());
    let a = s
        .call("call_2", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "failed");
    frames.push(a.result.frame.to_string());
    let a = s
        .call("call_3", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    // Validation that fails, and everything an operator reads.
    env.resend.set_revoked(true);
    let (_, validated) = env
        .admin(
            "POST",
            "/v1/connections/acme-resend/validate",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(validated["connection"]["status"], "error");
    let (_, listed) = env.admin("GET", "/v1/connections", Some(ADMIN_TOKEN)).await;
    let metrics = reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    s.client.abort();
    // The dropped socket is logged too.
    let logged = &buf;
    wait_until(
        "the dropped socket to be logged",
        EVENT_WAIT,
        || async move {
            let logs = String::from_utf8_lossy(&logged.0.lock().unwrap()).into_owned();
            logs.contains("socket gone without session.end")
                .then_some(())
        },
    )
    .await;
    for shown in [validated.to_string(), listed.to_string(), metrics]
        .into_iter()
        .chain(frames)
    {
        for needle in SECRETS {
            assert!(!shown.contains(needle), "{needle} appears in {shown}");
        }
    }

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("session started"), "logging works: {logs}");
    assert!(logs.contains("c-logs"), "call ids are logged");
    for needle in SECRETS
        .iter()
        .copied()
        .chain(["+14155550100", "14155550100", "ana@example.com"])
    {
        assert!(
            !logs.contains(needle),
            "{needle} appears in the logs:\n{logs}"
        );
    }
}
