//! The sidecar's own cost per tool call.
//!
//! - `decode/*`: one inbound frame, on real frame sizes (serde_json, and simd-json beside it
//!   with `--features simd-json`).
//! - `guards/*`: the whole guard chain for a typical tool call.
//! - `per_call/decode_and_guards`: both, as a tool call pays them.
//! - `redaction/*`: masking a transcript turn, a provider request body and a URL.
//! - `evidence/*`: building one invocation record from a tool call (redacted inputs, request
//!   and context) and encoding it as the store writes it.
//! - `end_to_end/tool_call`: a whole tool call through an in-process sidecar, over a real
//!   WebSocket, to a loopback mock provider that answers at once.
//!
//! Run: `cargo bench --bench tool_call --features simd-json`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use toolgate::bindings::CallContext;
use toolgate::call_state::{Entry, History, Ledger};
use toolgate::config::{Config, LoadOptions};
use toolgate::connections::Registry;
use toolgate::guards::{self, CallView};
use toolgate::protocol::{self, Caller, Inbound, Role, VarValue};

const TOOL_CALL: &str = r#"{"type":"tool.call","id":"call_8TcbzqI1tlLXvbX2aJbV3V9q","name":"send_whatsapp_confirmation","arguments":"{\"order_id\":\"A-1042\"}"}"#;
const TRANSCRIPT: &str = r#"{"type":"transcript","role":"caller","text":"Yes please, send it on WhatsApp. And can you also email me the summary of what we agreed?","final":true}"#;
const SESSION_START: &str = r#"{"type":"session.start","call_id":"c-8f2e-4b1d-9e3a-7c51","agent":"support-bot","caller":{"number":"+14155550100","name":"Ana"},"variables":{"email":"ana@example.com","order_id":"A-1042","plan":"premium","visits":3,"vip":true}}"#;

fn frames() -> [(&'static str, &'static str); 3] {
    [
        ("tool_call", TOOL_CALL),
        ("transcript", TRANSCRIPT),
        ("session_start", SESSION_START),
    ]
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, frame) in frames() {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::new("serde_json", name), frame, |b, f| {
            b.iter(|| protocol::decode(black_box(f)).unwrap())
        });
        #[cfg(feature = "simd-json")]
        g.bench_with_input(BenchmarkId::new("simd_json", name), frame, |b, f| {
            // simd-json parses in place: the copy is part of its cost on our path, because
            // tungstenite hands us an immutable buffer.
            b.iter(|| {
                let mut buf = black_box(f).as_bytes().to_vec();
                protocol::decode_simd(&mut buf).unwrap()
            })
        });
    }
    g.finish();
}

struct Fixture {
    config: Config,
    registry: Registry,
    ctx: CallContext,
    history: History,
    ledger: Ledger,
}

fn fixture() -> Fixture {
    let text = toolgate::tooling::demo::DEMO_CONFIG
        .replace("{db}", "unused.db")
        .replace("{resend}", "http://127.0.0.1:9")
        .replace("{wati}", "http://127.0.0.1:9/123456")
        .replace("{webhook}", "http://127.0.0.1:9/hook");
    let env = |name: &str| {
        Some(if name.contains("WEBHOOK") {
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_owned()
        } else {
            "bench-secret".to_owned()
        })
    };
    let config = Config::from_toml(&text, &LoadOptions::new(".").with_env(env)).unwrap();
    let registry = Registry::new(&config);
    let mut variables = indexmap::IndexMap::new();
    variables.insert("email".into(), VarValue::Str("ana@example.com".into()));
    variables.insert("order_id".into(), VarValue::Str("A-1042".into()));
    let ctx = CallContext {
        call_id: "c-8f2e".into(),
        agent_id: "support-bot".into(),
        caller: Caller {
            number: Some("+14155550100".into()),
            name: Some("Ana".into()),
        },
        variables,
    };
    let mut history = History::default();
    for (role, text) in [
        (Role::Agent, "Thanks for calling Acme, how can I help?"),
        (Role::Caller, "Hi, I wanted to check on my order A-1042."),
        (
            Role::Agent,
            "It ships Friday. Would you like a WhatsApp confirmation?",
        ),
        (Role::Caller, "Yes please, send it on WhatsApp."),
    ] {
        history.push(Entry::Turn {
            role,
            text: text.into(),
            is_final: true,
            at_ms: 0,
        });
    }
    Fixture {
        config,
        registry,
        ctx,
        history,
        ledger: Ledger::default(),
    }
}

fn guard_chain(c: &mut Criterion) {
    let fx = fixture();
    let agent = fx.config.agent("support-bot").unwrap().clone();
    let Inbound::ToolCall(call) = protocol::decode(TOOL_CALL).unwrap() else {
        unreachable!()
    };
    let view = CallView {
        ctx: &fx.ctx,
        history: &fx.history,
        ledger: &fx.ledger,
        connections: &fx.registry,
    };
    let checked = guards::check(&agent, &call, &view);
    assert!(
        matches!(checked.decision, guards::Decision::Proceed),
        "{:?}",
        checked.verdicts
    );

    let mut g = c.benchmark_group("guards");
    g.bench_function("whatsapp_confirmation_passes", |b| {
        b.iter(|| guards::check(black_box(&agent), black_box(&call), &view))
    });
    let Inbound::ToolCall(missing) = protocol::decode(
        r#"{"type":"tool.call","id":"call_2","name":"send_whatsapp_confirmation","arguments":"{}"}"#,
    )
    .unwrap() else {
        unreachable!()
    };
    g.bench_function("whatsapp_confirmation_missing_field", |b| {
        b.iter(|| guards::check(black_box(&agent), black_box(&missing), &view))
    });
    g.finish();

    let mut g = c.benchmark_group("per_call");
    g.bench_function("decode_and_guards", |b| {
        b.iter(|| {
            let Ok(Inbound::ToolCall(call)) = protocol::decode(black_box(TOOL_CALL)) else {
                unreachable!()
            };
            guards::check(&agent, &call, &view)
        })
    });
    g.finish();
}

fn redaction(c: &mut Criterion) {
    use toolgate::redact;
    let mut g = c.benchmark_group("redaction");
    let turn = "Yes please, send it to ana.b@example.com or text me on +1 415 555 0100 after six.";
    g.bench_function("transcript_turn", |b| {
        b.iter(|| redact::text(black_box(turn), &["bench-secret"]))
    });
    let clean = "Thanks, that is all I needed for today.";
    g.bench_function("transcript_turn_nothing_to_mask", |b| {
        b.iter(|| redact::text(black_box(clean), &["bench-secret"]))
    });
    let body = json!({"from": "Acme Support <support@acme.test>", "to": "ana@example.com",
                      "subject": "Your call with Acme", "text": "Order A-1042 ships Friday; refund of $12 approved. Call +14155550100 with questions."});
    g.bench_function("email_request_body", |b| {
        b.iter(|| redact::json(black_box(body.clone()), false, &["bench-secret"]))
    });
    let url = reqwest::Url::parse(
        "https://live-server-1234.wati.io/123456/api/v1/sendSessionMessage/14155550100?messageText=Hello%20Ana",
    )
    .unwrap();
    g.bench_function("wati_url", |b| {
        b.iter(|| redact::url(black_box(&url), false, &["bench-secret"]))
    });
    g.finish();
}

fn evidence_encoding(c: &mut Criterion) {
    use toolgate::evidence;
    let fx = fixture();
    let agent = fx.config.agent("support-bot").unwrap().clone();
    let Inbound::ToolCall(call) = protocol::decode(TOOL_CALL).unwrap() else {
        unreachable!()
    };
    let view = CallView {
        ctx: &fx.ctx,
        history: &fx.history,
        ledger: &fx.ledger,
        connections: &fx.registry,
    };
    let checked = guards::check(&agent, &call, &view);
    let function = &agent.functions[checked.function.unwrap()];
    let conn = fx.registry.connection(&function.connection.id).unwrap();
    let ctx = toolgate::providers::ActionContext {
        call_id: "c-8f2e",
        function: &function.name,
        idempotency_key: "tg_0123456789abcdef0123456789abcdef",
        now: toolgate::clock::now(),
    };
    let req =
        toolgate::providers::prepare(conn, function.action, &checked.resolution, &ctx).unwrap();
    let secrets = conn.secret_texts();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let build = || evidence::Invocation {
        invocation_id: "inv_01M8K4AMAJXC90C5F5TZTYCA04".into(),
        source_type: evidence::SourceType::Agent,
        parent_invocation_id: None,
        org_id: "acme".into(),
        call_id: "c-8f2e".into(),
        agent_id: "support-bot".into(),
        function: function.name.clone(),
        action: Some(function.action.as_str().into()),
        connection_id: Some(conn.id.clone()),
        channel: None,
        received_at: 1_795_000_000_000,
        status: "succeeded".into(),
        answered_status: "succeeded".into(),
        is_final: true,
        final_at: Some(1_795_000_000_212),
        error_code: None,
        error_message: None,
        missing_fields: Vec::new(),
        guards: evidence::guards(&checked.verdicts),
        inputs_redacted: evidence::inputs(Some(function), &checked.resolution, false),
        request_payload_redacted: Some(evidence::request(&req, false, &secrets)),
        response_payload_redacted: Some(evidence::response(
            Some(200),
            Some(br#"{"result":true,"info":"ok","validWhatsAppNumber":true}"#),
            false,
            &secrets,
        )),
        provider_message_id: None,
        latency_ms: Some(212),
        timeline: evidence::Timeline {
            filler_ms: Vec::new(),
            answered_ms: Some(213),
            provider_sent_ms: Some(0),
            provider_done_ms: Some(212),
        },
        workflow_job_id: None,
        deferral_reason: None,
        at_least_once: false,
        cancelled: None,
        transcript_context: evidence::context(fx.history.entries()),
        arguments_redacted: None,
        session_redacted: None,
    };
    let mut g = c.benchmark_group("evidence");
    g.bench_function("build_record", |b| b.iter(|| black_box(build())));
    let record = build();
    g.bench_function("encode_record", |b| {
        b.iter(|| serde_json::to_string(black_box(&record)).unwrap())
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, mut client, mocks) = rt.block_on(async {
        let mocks = toolgate::tooling::demo::Mocks::start().await.unwrap();
        // One session sends thousands of calls per second here; a real call sends a few.
        let config = mocks
            .config_with(|t| t.replace("[server]", "[server]\nmax_frames_per_second = 100000"));
        let server = toolgate::server::Server::start(config).await.unwrap();
        let mut client = toolgate::tooling::client::CallClient::connect(
            &server.session_url(),
            Some("demo-session-token"),
        )
        .await
        .unwrap();
        client
            .send(
                &json!({"type": "session.start", "call_id": "bench", "agent": "support-bot",
                          "caller": {"number": "+14155550100"}}),
            )
            .await
            .unwrap();
        client.recv(Duration::from_secs(5)).await.unwrap();
        (server, client, mocks)
    });
    let mut n = 0u64;
    let mut g = c.benchmark_group("end_to_end");
    g.bench_function("tool_call_instant_webhook", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("call_{n}");
            rt.block_on(async {
                // A different reason each time, so the duplicate guard lets it through.
                client
                    .send(
                        &json!({"type": "tool.call", "id": id, "name": "request_callback",
                                  "arguments": {"reason": format!("bench {n}")}}),
                    )
                    .await
                    .unwrap();
                let frames = client
                    .until_result(&id, Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(frames.last().unwrap().frame["status"], "succeeded");
            })
        })
    });
    g.finish();
    mocks.webhook.stop();
    rt.block_on(server.shutdown(Duration::from_millis(100)));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
        targets = decode, guard_chain, redaction, evidence_encoding, end_to_end
}
criterion_main!(benches);
