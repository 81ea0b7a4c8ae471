//! `GET /metrics` after real calls: every SPEC §12 metric is there with its help text,
//! latency histograms have explicit buckets (1 ms to 10 s; toolgate's own time down to 10 µs),
//! the silence the caller hears is measured apart from the whole tool call, and labels stay
//! bounded (no call ids, no names a model made up).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use toolgate::tooling::mock::Reply;

async fn scrape(env: &Env) -> String {
    reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series, if it is there (the whole line up to the value must match).
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
}

/// The value of one series (the whole line up to the value must match).
fn value(text: &str, name: &str) -> f64 {
    series(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn every_spec_metric_is_exported_with_buckets_and_bounded_labels() {
    let env = Env::start().await;
    let mut s = env.session("c-metrics-7f2", order_vars()).await;
    s.say("Yes please, email me the summary.").await;
    s.consent("email", true).await;
    // A slow provider: a filler at 200 ms, the result at about 350 ms, midway between the
    // first filler and the repeat at 500 ms (a loaded machine has 150 ms either way).
    env.resend.push(Reply::slow(350));
    let slow = s
        .call(
            "call_1",
            "send_email_summary",
            json!({"summary": "Ships Friday"}),
        )
        .await;
    assert_eq!(slow.status(), "succeeded");
    assert_eq!(slow.fillers().len(), 1);
    // A guard rejection, a name the agent does not have, a malformed frame.
    let missing = s.call("call_2", "whatsapp_note", json!({})).await;
    assert_eq!(missing.error().as_deref(), Some("missing_fields"));
    let made_up = s.call("call_3", "totally_made_up_fn_8731", json!({})).await;
    assert_eq!(made_up.error().as_deref(), Some("unknown_function"));
    s.client.send_text("{not json").await.unwrap();
    s.expect_error("bad_json").await;
    // A retryable failure handed to the worker, which then succeeds.
    env.webhook.push(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let deferred = s
        .call("call_4", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(deferred.status(), "deferred");
    let job = deferred.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        env.job_settled(&job, Duration::from_secs(10)).await["state"],
        "succeeded"
    );
    s.client
        .send(&json!({"type": "session.end", "reason": "caller hung up at 14:02"}))
        .await
        .unwrap();
    s.client.recv(WAIT).await.unwrap();

    // The session is counted as ended once it has let go of its call.
    let text = wait_until("the ended session in the metrics", EVENT_WAIT, || async {
        let text = scrape(&env).await;
        let ended = series(&text, "toolgate_sessions_total{end=\"ended\"}").unwrap_or(0.0);
        let active = series(&text, "toolgate_sessions_active").unwrap_or(1.0);
        (ended >= 1.0 && active == 0.0).then_some(text)
    })
    .await;
    for name in [
        "toolgate_sessions_active",
        "toolgate_sessions_total",
        "toolgate_tool_calls_total",
        "toolgate_tool_call_duration_seconds",
        "toolgate_first_signal_seconds",
        "toolgate_overhead_seconds",
        "toolgate_provider_request_duration_seconds",
        "toolgate_fillers_total",
        "toolgate_deferrals_total",
        "toolgate_guard_rejections_total",
        "toolgate_jobs",
        "toolgate_job_attempts_total",
        "toolgate_connection_up",
        "toolgate_protocol_errors_total",
    ] {
        let help = format!("# HELP {name} ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&help) && l.len() > help.len() + 10),
            "{name} has no help text:\n{text}"
        );
        assert_eq!(text.matches(&help).count(), 1, "{name} is described once");
    }

    // Counters.
    assert_eq!(value(&text, "toolgate_sessions_active"), 0.0);
    assert_eq!(value(&text, "toolgate_sessions_total{end=\"ended\"}"), 1.0);
    assert_eq!(value(&text, "toolgate_fillers_total"), 1.0);
    assert_eq!(
        value(
            &text,
            "toolgate_tool_calls_total{function=\"send_email_summary\",status=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "toolgate_tool_calls_total{function=\"unknown\",status=\"rejected\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "toolgate_guard_rejections_total{guard=\"required_values\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "toolgate_guard_rejections_total{guard=\"function_exposed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "toolgate_protocol_errors_total{code=\"bad_json\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "toolgate_deferrals_total{reason=\"retryable_failure\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "toolgate_job_attempts_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(value(&text, "toolgate_jobs{state=\"succeeded\"}"), 1.0);

    // Histograms with explicit buckets: 1 ms to 10 s, and 10 µs for toolgate's own time.
    let dur = "toolgate_tool_call_duration_seconds_bucket{status=\"succeeded\",le=";
    assert!(text.contains(&format!("{dur}\"0.001\"}}")), "{text}");
    assert!(text.contains(&format!("{dur}\"10\"}}")), "{text}");
    assert!(
        text.contains("toolgate_overhead_seconds_bucket{le=\"0.00001\"}"),
        "{text}"
    );
    assert!(text.contains("toolgate_provider_request_duration_seconds_bucket{provider=\"resend\",action=\"resend.send_email\",outcome=\"succeeded\",le=\"0.5\"}"), "{text}");
    assert!(text.contains("toolgate_provider_request_duration_seconds_count{provider=\"webhook\",action=\"webhook.post\",outcome=\"provider_unavailable\"} 1"), "{text}");

    // The silence the caller heard is not the tool call's duration: the filler at 200 ms
    // ended it, though the result took about 400 ms.
    let first_under_quarter = value(&text, "toolgate_first_signal_seconds_bucket{le=\"0.25\"}");
    let first_count = value(&text, "toolgate_first_signal_seconds_count");
    let slow_under_quarter = value(&text, &format!("{dur}\"0.25\"}}"));
    let slow_count = value(
        &text,
        "toolgate_tool_call_duration_seconds_count{status=\"succeeded\"}",
    );
    assert_eq!(slow_count, 1.0);
    assert_eq!(
        slow_under_quarter, 0.0,
        "the slow call took longer than 250 ms"
    );
    assert_eq!(
        first_under_quarter, first_count,
        "every call, the slow one included, was heard from within 250 ms"
    );
    // toolgate's own time excludes the provider's 400 ms.
    let overhead_count = value(&text, "toolgate_overhead_seconds_count");
    assert!(overhead_count >= 4.0);
    assert_eq!(
        value(&text, "toolgate_overhead_seconds_bucket{le=\"0.1\"}"),
        overhead_count,
        "{text}"
    );

    // Bounded labels: no call id, no made-up function name, no session.end reason text.
    for unbounded in [
        "c-metrics-7f2",
        "totally_made_up_fn_8731",
        "14:02",
        "call_1",
    ] {
        assert!(!text.contains(unbounded), "{unbounded} is a label:\n{text}");
    }
    promtool_check(&text);
}

/// The exposition passes `promtool check metrics` (Prometheus's own linter: names, help,
/// units, counter suffixes). Skipped when promtool is not installed, unless
/// `TOOLGATE_REQUIRE_PROMTOOL=1` (set by `.ci/run`, which installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("TOOLGATE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required but cannot run: {e}"
            );
            eprintln!("promtool not installed ({e}); skipping `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_grafana_dashboard_reads_only_metrics_toolgate_exports() {
    let text = include_str!("../docs/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(text).unwrap();
    let exported = [
        "toolgate_sessions_active",
        "toolgate_tool_calls_total",
        "toolgate_tool_call_duration_seconds_bucket",
        "toolgate_first_signal_seconds_bucket",
        "toolgate_overhead_seconds_bucket",
        "toolgate_provider_request_duration_seconds_bucket",
        "toolgate_provider_request_duration_seconds_count",
        "toolgate_fillers_total",
        "toolgate_deferrals_total",
        "toolgate_guard_rejections_total",
        "toolgate_jobs",
        "toolgate_connection_up",
        "toolgate_protocol_errors_total",
        "toolgate_evidence_dropped_total",
    ];
    let mut titles = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_owned());
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("toolgate_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(exported.contains(&n), "{n} in {expr:?} is not exported");
            }
        }
    }
    for wanted in [
        "First signal (silence the caller hears)",
        "Tool-call duration by status (p99)",
        "Provider latency by provider (p90 / p99)",
        "Deferrals and fillers",
        "Active sessions",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no {wanted:?} panel");
    }
}

#[tokio::test]
async fn counters_are_exported_at_zero_before_anything_happens() {
    let env = Env::start().await;
    let text = scrape(&env).await;
    for series in [
        r#"toolgate_job_attempts_total{outcome="succeeded"} 0"#,
        r#"toolgate_job_attempts_total{outcome="dead"} 0"#,
        r#"toolgate_sessions_total{end="disconnected"} 0"#,
        r#"toolgate_deferrals_total{reason="budget"} 0"#,
        r#"toolgate_guard_rejections_total{guard="consent"} 0"#,
        r#"toolgate_protocol_errors_total{code="bad_json"} 0"#,
        r#"toolgate_tool_calls_total{function="notify_team",status="succeeded"} 0"#,
        "toolgate_fillers_total 0",
        "toolgate_sessions_active 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}
