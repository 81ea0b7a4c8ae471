//! Wire protocol v1 over a real WebSocket: auth, session lifecycle, every error frame, and a
//! session that keeps working after bad input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use toolgate::tooling::client::{CallClient, ClientError};

#[tokio::test]
async fn upgrade_without_a_valid_token_is_refused_with_401() {
    let env = Env::start().await;
    for token in [None, Some("wrong-token"), Some("")] {
        match CallClient::connect(&env.url(), token).await {
            Err(ClientError::Refused(401)) => {}
            Err(other) => panic!("{token:?}: expected 401, got {other}"),
            Ok(_) => panic!("{token:?}: expected 401, got a WebSocket"),
        }
    }
    // A plain HTTP request with a good token but no upgrade gets 426, not a socket.
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/session", env.server.ws_addr))
        .bearer_auth(ACME_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 426);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "upgrade_required");
}

#[tokio::test]
async fn session_start_is_answered_with_the_agents_tools() {
    let env = Env::start().await;
    let s = env.session("c-ready", order_vars()).await;
    let f = &s.ready.frame;
    assert_eq!(f["protocol"], 1);
    assert_eq!(f["call_id"], "c-ready");
    let tools = f["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "send_whatsapp_confirmation",
            "send_email_summary",
            "email_someone",
            "whatsapp_note",
            "notify_team",
            "escalate_now",
            "email_later",
            "wati_later",
            "log_after_call"
        ]
    );
    // Inputs bound to session values are not parameters; `required` lists only what the
    // model must supply in this call.
    assert_eq!(
        tools[0]["parameters"],
        json!({"type": "object",
               "properties": {"order_id": {"type": "string", "description": "The order number the caller gave"}},
               "required": ["order_id"]})
    );
    assert_eq!(tools[1]["parameters"]["required"], json!(["summary"]));
    assert_eq!(
        tools[4]["parameters"]["properties"]["reason"]["enum"],
        json!(["billing", "delivery", "other"])
    );

    // Without the `email` variable the model is told it must supply the address.
    let s2 = env.session("c-ready-2", json!({"order_id": "A-1"})).await;
    assert_eq!(
        s2.ready.frame["tools"][1]["parameters"]["required"],
        json!(["email", "summary"])
    );
}

#[tokio::test]
async fn frames_before_session_start_and_unknown_agents_get_errors() {
    let env = Env::start().await;
    let mut client = env.connect().await;
    client
        .send(&json!({"type": "transcript", "role": "caller", "text": "hi"}))
        .await
        .unwrap();
    let r = client.recv(WAIT).await.unwrap();
    assert_eq!(r.frame["code"], "no_session");
    client.send(&json!({"type": "ping"})).await.unwrap();
    assert_eq!(client.recv(WAIT).await.unwrap().ty(), "pong");

    let r = start(&mut client, "c-1", "support-bott", json!({})).await;
    assert_eq!(r.frame["code"], "unknown_agent");
    assert!(
        r.frame["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"support-bot\"")
    );
    // The connection is still usable: a correct start works.
    let r = start(&mut client, "c-1", "support-bot", json!({})).await;
    assert_eq!(r.ty(), "session.ready");
}

#[tokio::test]
async fn malformed_input_gets_error_frames_and_the_session_keeps_working() {
    let env = Env::start().await;
    let mut s = env.session("c-malformed", order_vars()).await;

    s.client.send_text("{\"type\": ").await.unwrap();
    let e = s.expect_error("bad_json").await;
    assert!(
        e.frame["message"]
            .as_str()
            .unwrap()
            .starts_with("line 1 column")
    );
    assert_eq!(e.frame["ref"], serde_json::Value::Null);

    s.client.send_text("[1, 2]").await.unwrap();
    s.expect_error("bad_frame").await;
    s.client
        .send(&json!({"type": "transcript", "role": "caller", "text": 42}))
        .await
        .unwrap();
    s.expect_error("bad_frame").await;
    s.client
        .send(&json!({"type": "tool.invoke", "id": "x"}))
        .await
        .unwrap();
    s.expect_error("unknown_type").await;
    s.client.send(&json!({"id": "x"})).await.unwrap();
    s.expect_error("missing_field").await;
    s.client
        .send(&json!({"type": "tool.call", "id": "call_x"}))
        .await
        .unwrap();
    let e = s.expect_error("missing_field").await;
    assert_eq!(e.frame["ref"], "call_x");
    s.client
        .send(&json!({"type": "consent", "scope": "email"}))
        .await
        .unwrap();
    s.expect_error("missing_field").await;
    s.client.send_binary(vec![1, 2, 3]).await.unwrap();
    s.expect_error("bad_frame").await;
    let again = json!({"type": "session.start", "call_id": "c-other", "agent": "support-bot"});
    s.client.send(&again).await.unwrap();
    s.expect_error("session_exists").await;
    s.client
        .send(&json!({"type": "tool.cancel", "id": "never-sent"}))
        .await
        .unwrap();
    let e = s.expect_error("unknown_call_id").await;
    assert_eq!(e.frame["ref"], "never-sent");

    // After all that, a tool call still goes through and the provider gets exactly one request.
    s.say("Yes please, email me the summary.").await;
    let a = s
        .call(
            "call_1",
            "send_email_summary",
            json!({"summary": "Ships Friday."}),
        )
        .await;
    assert_eq!(a.status(), "succeeded", "{:?}", a.output());

    // Reusing a tool call id is refused without a second result.
    s.send_call(
        "call_1",
        "send_email_summary",
        json!({"summary": "Ships Friday."}),
    )
    .await;
    let e = s.expect_error("duplicate_call_id").await;
    assert_eq!(e.frame["ref"], "call_1");
    assert_eq!(env.resend.requests().len(), 1);
}

#[tokio::test]
async fn oversized_frames_close_the_connection_with_1009() {
    let env = Env::start_with(|t| {
        t.replace(
            "disconnect_grace_ms = 2000",
            "disconnect_grace_ms = 2000\nmax_frame_bytes = 2048",
        )
    })
    .await;
    let mut s = env.session("c-big", json!({})).await;
    let big = json!({"type": "transcript", "role": "caller", "text": "x".repeat(4096)});
    s.client.send(&big).await.unwrap();
    assert_eq!(s.client.closed(WAIT).await.unwrap(), Some(1009));
}

#[tokio::test]
async fn a_token_of_one_org_cannot_use_another_orgs_agent() {
    let env = Env::start().await;
    let mut client = CallClient::connect(&env.url(), Some(BETA_TOKEN))
        .await
        .unwrap();
    let r = start(&mut client, "c-x", "support-bot", json!({})).await;
    assert_eq!(r.frame["code"], "forbidden");
    assert_eq!(client.closed(WAIT).await.unwrap(), Some(1008));

    // Its own agent works.
    let mut client = CallClient::connect(&env.url(), Some(BETA_TOKEN))
        .await
        .unwrap();
    let r = start(&mut client, "c-x", "beta-bot", json!({})).await;
    assert_eq!(r.ty(), "session.ready");
}

#[tokio::test]
async fn session_end_is_answered_then_the_socket_closes_normally() {
    let env = Env::start().await;
    let mut s = env.session("c-end", order_vars()).await;
    s.client.send(&json!({"type": "ping"})).await.unwrap();
    assert_eq!(s.client.recv(WAIT).await.unwrap().ty(), "pong");
    s.say("Yes, send it please.").await;
    let a = s
        .call(
            "call_1",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    let a = s.call("call_2", "unknown_fn", json!({})).await;
    assert_eq!(a.status(), "rejected");
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    let ended = s.client.recv(WAIT).await.unwrap();
    assert_eq!(
        ended.frame,
        json!({"type": "session.ended", "call_id": "c-end", "invocations": 2, "deferred": 0})
    );
    assert_eq!(s.client.closed(WAIT).await.unwrap(), Some(1000));
}

#[tokio::test]
async fn a_second_connection_cannot_take_over_a_live_session() {
    let env = Env::start().await;
    let _s = env.session("c-live", json!({})).await;
    let mut other = env.connect().await;
    let r = start(&mut other, "c-live", "support-bot", json!({})).await;
    assert_eq!(r.frame["code"], "session_exists");
    // The same call id under another org is a different session.
    let mut beta = CallClient::connect(&env.url(), Some(BETA_TOKEN))
        .await
        .unwrap();
    let r = start(&mut beta, "c-live", "beta-bot", json!({})).await;
    assert_eq!(r.ty(), "session.ready");
}

/// `session.start` on a new socket until the server has noticed the old one is gone.
async fn resume(
    env: &Env,
    call_id: &str,
) -> (
    toolgate::tooling::client::CallClient,
    toolgate::tooling::client::Received,
) {
    for _ in 0..100 {
        let mut client = env.connect().await;
        let ready = start(&mut client, call_id, "support-bot", json!({})).await;
        if ready.frame["code"] != "session_exists" {
            return (client, ready);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the old socket was never noticed gone");
}

#[tokio::test]
async fn a_reconnect_within_the_grace_resumes_and_receives_results() {
    let env = Env::start().await;
    env.resend.push(toolgate::tooling::mock::Reply::slow(300));
    let mut s = env.session("c-resume", order_vars()).await;
    s.say("Yes please, email it.").await;
    s.send_call(
        "call_1",
        "send_email_summary",
        json!({"summary": "Ships Friday."}),
    )
    .await;
    // The media server crashes while the provider works; the result completes while no socket
    // is attached and must wait for the resume.
    let reqs = env.resend.wait_for_requests(1, WAIT).await;
    assert_eq!(reqs.len(), 1);
    s.client.abort();
    env.invocations_when("c-resume", "the call's result to complete", |l| {
        l.iter().any(|i| i["final"] == true)
    })
    .await;

    let (mut client, ready) = resume(&env, "c-resume").await;
    assert_eq!(ready.ty(), "session.ready", "{:?}", ready.frame);
    assert_eq!(ready.frame["resumed"], true);
    let result = client.recv(WAIT).await.unwrap();
    assert_eq!(
        result.ty(),
        "tool.result",
        "the kept result follows session.ready"
    );
    assert_eq!(result.frame["id"], "call_1");
    assert_eq!(result.frame["status"], "succeeded");
    assert_eq!(env.resend.delivered(), 1);

    // The resumed session still remembers its actions: a repeat is a duplicate.
    client
        .send(
            &json!({"type": "tool.call", "id": "call_2", "name": "send_email_summary",
                      "arguments": {"summary": "Ships Friday."}}),
        )
        .await
        .unwrap();
    let frames = client.until_result("call_2", WAIT).await.unwrap();
    assert_eq!(frames.last().unwrap().frame["status"], "duplicate");
    assert_eq!(env.resend.requests().len(), 1);
}

#[tokio::test]
async fn after_the_grace_a_dropped_session_is_gone() {
    let env =
        Env::start_with(|t| t.replace("disconnect_grace_ms = 2000", "disconnect_grace_ms = 100"))
            .await;
    let s = env.session("c-gone", json!({})).await;
    s.client.abort();
    env.no_active_sessions().await;
    let mut client = env.connect().await;
    let ready = start(&mut client, "c-gone", "support-bot", json!({})).await;
    assert_eq!(ready.ty(), "session.ready");
    assert_eq!(
        ready.frame.get("resumed"),
        None,
        "a fresh session, not a resume"
    );
}

#[tokio::test]
async fn frame_floods_are_rate_limited() {
    let env = Env::start_with(|t| {
        t.replace(
            "disconnect_grace_ms = 2000",
            "disconnect_grace_ms = 2000\nmax_frames_per_second = 5",
        )
    })
    .await;
    let mut s = env.session("c-flood", json!({})).await;
    for _ in 0..5 {
        s.client.send(&json!({"type": "ping"})).await.unwrap();
    }
    s.client
        .send(&json!({"type": "ping", "id": "p6"}))
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = s.client.recv(WAIT).await.unwrap();
        codes.push(r.frame["code"].as_str().unwrap_or(r.ty()).to_owned());
    }
    // The limit is per connection: session.start was the first of the five.
    assert_eq!(
        codes.iter().filter(|c| *c == "pong").count(),
        4,
        "{codes:?}"
    );
    assert_eq!(codes.last().unwrap(), "rate_limited");
}

#[tokio::test]
async fn too_many_calls_in_flight_is_overloaded() {
    let env = Env::start_with(|t| {
        t.replace(
            "disconnect_grace_ms = 2000",
            "disconnect_grace_ms = 2000\nmax_inflight_per_session = 1",
        )
    })
    .await;
    env.webhook.push(toolgate::tooling::mock::Reply::slow(500));
    let mut s = env.session("c-busy", json!({})).await;
    s.send_call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    s.send_call("call_2", "notify_team", json!({"reason": "delivery"}))
        .await;
    let e = s.expect_error("overloaded").await;
    assert_eq!(e.frame["ref"], "call_2");
    // The model still gets its one result for the refused call (SPEC §2).
    let refused = s.result_of("call_2").await;
    assert_eq!(refused.status(), "failed");
    assert_eq!(refused.error().as_deref(), Some("overloaded"));
    assert!(
        refused.output()["next"]
            .as_str()
            .unwrap()
            .contains("try again")
    );
    let a = s.result_of("call_1").await;
    assert_eq!(a.status(), "succeeded");
}

/// A saturated runtime sheds new tool calls: each gets its one `tool.result` (`failed`,
/// `overloaded`) at once and is counted; once the runtime has CPU again, calls run.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_saturated_sidecar_sheds_new_calls_with_one_result_each() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env =
        Env::start_with(|t| t.replace("shed_after_delay_ms = 0", "shed_after_delay_ms = 20")).await;
    let mut s = env.session("c-shed", json!({})).await;
    let a = s
        .call("call_0", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.status(), "succeeded", "an idle sidecar admits the call");

    // Something takes the runtime's only worker for 40 ms at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "blocking the runtime is what is tested"
                )]
                std::thread::sleep(Duration::from_millis(40));
                tokio::task::yield_now().await;
            }
        })
    };
    let overload = env.server.runtime().overload.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Every probe waits: the share of calls shed climbs to all of them.
    while overload.shed_share() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never shedding every call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.send_call("call_1", "notify_team", json!({"reason": "delivery"}))
        .await;
    let e = s.expect_error("overloaded").await;
    assert!(
        e.frame["message"].as_str().unwrap().contains("overloaded"),
        "{:?}",
        e.frame
    );
    let shed = s.result_of("call_1").await;
    assert_eq!(shed.status(), "failed");
    assert_eq!(shed.error().as_deref(), Some("overloaded"));
    stop.store(true, Ordering::Relaxed);
    hog.await.unwrap();

    let text = reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shed_count = text
        .lines()
        .find(|l| l.starts_with("toolgate_tool_calls_shed_total{reason=\"scheduling_delay\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(shed_count.is_some_and(|n| n >= 1.0), "{text}");

    // With the worker free again, the share falls back to nothing and calls run.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while overload.shed_share() > 0.0 {
        assert!(std::time::Instant::now() < deadline, "still shedding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = s
        .call("call_2", "notify_team", json!({"reason": "other"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    env.server.runtime().evidence.flush().await;
    let (_, call) = env
        .admin("GET", "/v1/calls/c-shed", Some(ADMIN_TOKEN))
        .await;
    let statuses: Vec<&str> = call["invocations"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["status"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        statuses.contains(&"failed"),
        "the shed call is on record: {call}"
    );
}

#[tokio::test]
async fn no_frame_ever_carries_a_secret() {
    let env = Env::start().await;
    // Misbehaving providers echo what they were sent.
    env.wati.push(toolgate::tooling::mock::Reply::Raw {
        status: 401,
        headers: vec![],
        body: format!("token {WATI_TOKEN} is not valid for +14155550100"),
    });
    env.resend
        .push(toolgate::tooling::mock::Reply::ResendError {
            status: 422,
            name: "invalid_parameter".into(),
            message: format!("Invalid `to` field: ana@example.com (key {RESEND_KEY})"),
            retry_after: None,
        });
    env.webhook.push(toolgate::tooling::mock::Reply::Raw {
        status: 400,
        headers: vec![],
        body: "bad request for +1 415 555 0100".into(),
    });
    let mut s = env.session("c-leak", order_vars()).await;
    s.say("yes").await;
    let mut seen = vec![s.ready.frame.to_string()];
    for (i, (name, args)) in [
        ("send_whatsapp_confirmation", json!({"order_id": "A-1"})),
        ("send_email_summary", json!({"summary": "x"})),
        ("notify_team", json!({"reason": "billing"})),
        ("whatsapp_note", json!({"text": "hi"})),
    ]
    .into_iter()
    .enumerate()
    {
        let a = s.call(&format!("call_{i}"), name, args).await;
        seen.extend(a.before.iter().map(|r| r.frame.to_string()));
        seen.push(a.result.frame.to_string());
    }
    assert!(
        seen.iter().any(|f| f.contains("provider_message")),
        "the provider messages did reach the model: {seen:#?}"
    );
    for frame in &seen {
        for secret in SECRETS {
            assert!(!frame.contains(secret), "secret leaked in {frame}");
        }
        for pii in ["14155550100", "415 555 0100", "ana@example.com"] {
            assert!(!frame.contains(pii), "{pii} leaked in {frame}");
        }
    }
}

#[tokio::test]
async fn unknown_agent_hints_name_only_the_tokens_own_agents() {
    let env = Env::start().await;
    let mut beta = CallClient::connect(&env.url(), Some(BETA_TOKEN))
        .await
        .unwrap();
    let r = start(&mut beta, "c-hint", "support-bott", json!({})).await;
    assert_eq!(r.frame["code"], "unknown_agent");
    assert!(
        !r.frame["message"]
            .as_str()
            .unwrap()
            .contains("support-bot\""),
        "{:?}",
        r.frame
    );
    let r = start(&mut beta, "c-hint", "beta-bott", json!({})).await;
    assert!(
        r.frame["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"beta-bot\"")
    );
}

#[tokio::test]
async fn the_session_limit_refuses_new_calls_with_overloaded() {
    let env = Env::start_with(|t| {
        t.replace(
            "disconnect_grace_ms = 2000",
            "disconnect_grace_ms = 2000\nmax_sessions = 1",
        )
    })
    .await;
    let _first = env.session("c-one", json!({})).await;
    let mut client = env.connect().await;
    let r = start(&mut client, "c-two", "support-bot", json!({})).await;
    assert_eq!(r.frame["code"], "overloaded");
    assert_eq!(client.closed(WAIT).await.unwrap(), Some(1013));
}

#[tokio::test]
async fn a_silent_socket_is_noticed_and_its_session_ends() {
    let env = Env::start_with(|t| {
        t.replace(
            "disconnect_grace_ms = 2000",
            "disconnect_grace_ms = 100\nping_interval_ms = 100\nidle_timeout_ms = 300",
        )
    })
    .await;
    // A media server that hangs: it neither reads (so never answers pings) nor closes.
    let hung = env.session("c-hung", json!({})).await;
    env.no_active_sessions().await;
    let mut client = env.connect().await;
    let ready = start(&mut client, "c-hung", "support-bot", json!({})).await;
    assert_eq!(ready.ty(), "session.ready", "{:?}", ready.frame);
    assert_eq!(
        ready.frame.get("resumed"),
        None,
        "the hung session ended; this one is new"
    );
    let active = env
        .server
        .runtime()
        .active_sessions
        .load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(active, 1);
    drop(hung);
}

#[tokio::test]
async fn a_connection_that_sends_no_session_start_is_closed_after_the_handshake_timeout() {
    let env =
        Env::start_with(|t| t.replacen("[server]\n", "[server]\nhandshake_timeout_ms = 300\n", 1))
            .await;
    let mut client = env.connect().await;
    let started = std::time::Instant::now();
    let r = client.recv(WAIT).await.unwrap();
    assert_eq!(r.frame["code"], "no_session", "{:?}", r.frame);
    assert_eq!(client.closed(WAIT).await.unwrap(), Some(1008));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "closed at the handshake timeout, not the idle timeout: {waited:?}"
    );
}

/// A raw client that can break the WebSocket protocol.
async fn raw_session(
    env: &Env,
    call_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = env.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ACME_TOKEN}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let start = json!({"type": "session.start", "call_id": call_id, "agent": "support-bot"});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        start.to_string(),
    ))
    .await
    .unwrap();
    let ready = ws.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("session.ready"));
    ws
}

async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn protocol_violations_close_with_1007_or_1002_and_end_the_session() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let env = Env::start().await;
    // Invalid UTF-8 in a text frame.
    let mut ws = raw_session(&env, "c-utf8").await;
    let bad = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1007));
    // A continuation frame with no message started.
    let mut ws = raw_session(&env, "c-cont").await;
    let cont = Frame::message(b"x".to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(cont)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1002));
    // Ended, not waiting for a resume: the same call id starts afresh at once.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = env.connect().await;
        let r = start(&mut c, "c-utf8", "support-bot", json!({})).await;
        if r.ty() == "session.ready" {
            assert_ne!(r.frame["resumed"], true, "{:?}", r.frame);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", r.frame);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, call) = env
        .admin("GET", "/v1/calls/c-cont", Some(ADMIN_TOKEN))
        .await;
    assert!(call.is_object());
}

#[tokio::test]
async fn an_orgs_session_quota_leaves_room_for_the_others() {
    let env = Env::start_with(|t| {
        t.replacen(
            "admin_tokens = [{ env = \"ACME_ADMIN_TOKEN\" }]",
            "admin_tokens = [{ env = \"ACME_ADMIN_TOKEN\" }]\nmax_sessions = 2",
            1,
        )
    })
    .await;
    let mut first = env.session("c-q1", json!({})).await;
    let _second = env.session("c-q2", json!({})).await;
    let mut client = env.connect().await;
    let r = start(&mut client, "c-q3", "support-bot", json!({})).await;
    assert_eq!(r.frame["code"], "overloaded", "{:?}", r.frame);
    assert!(r.frame["message"].as_str().unwrap().contains("acme"));
    assert_eq!(client.closed(WAIT).await.unwrap(), Some(1013));
    // Another org is not locked out.
    let mut beta = CallClient::connect(&env.url(), Some(BETA_TOKEN))
        .await
        .unwrap();
    let r = start(&mut beta, "c-beta", "beta-bot", json!({})).await;
    assert_eq!(r.ty(), "session.ready", "{:?}", r.frame);
    // A session that ends frees its place.
    first
        .client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    assert_eq!(first.client.recv(WAIT).await.unwrap().ty(), "session.ended");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = env.connect().await;
        let r = start(&mut c, "c-q4", "support-bot", json!({})).await;
        if r.ty() == "session.ready" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", r.frame);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn long_turns_are_cut_and_a_byte_flood_is_refused() {
    let env = Env::start_with(|t| {
        t.replacen(
            "[server]\n",
            "[server]\nmax_turn_bytes = 1000\nmax_bytes_per_second = 100000\n",
            1,
        )
    })
    .await;
    let mut s = env.session("c-flood", json!({})).await;
    let long = "no ".repeat(20_000);
    let mut refused = 0;
    for _ in 0..5 {
        s.say(&long).await;
    }
    // The next second's budget is fresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.client.send(&json!({"type": "ping"})).await.unwrap();
    loop {
        let r = s.client.recv(WAIT).await.unwrap();
        match r.ty() {
            "pong" => break,
            "error" => {
                assert_eq!(r.frame["code"], "rate_limited", "{:?}", r.frame);
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        refused >= 3,
        "60 KB turns at 100 KB/s: most are refused ({refused})"
    );
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, call) = env
            .admin("GET", "/v1/calls/c-flood", Some(ADMIN_TOKEN))
            .await;
        let turns: Vec<&serde_json::Value> = call["timeline"]
            .as_array()
            .map(|t| t.iter().filter(|e| e["type"] == "turn").collect())
            .unwrap_or_default();
        if !turns.is_empty() {
            for t in &turns {
                let len = t["text"].as_str().unwrap().len();
                assert!(len <= 1000, "cut to max_turn_bytes: {len}");
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{call}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}
