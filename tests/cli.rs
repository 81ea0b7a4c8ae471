//! The `toolgate` binary as an operator runs it: check-config output and exit codes, a bad
//! config that never starts a server, and `serve` that answers health checks and exits 0 on
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn toolgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toolgate"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[orgs]]
id = "acme"
session_tokens = [{ file = "session.token" }]

[[connections]]
id = "acme-hooks"
org = "acme"
provider = "webhook"
url = "http://127.0.0.1:9/hook"
secret = { file = "webhook.secret" }

[[agents]]
id = "support-bot"
org = "acme"

[[agents.functions]]
name = "request_callback"
action = "webhook.post"
connection = "acme-hooks"
description = "Ask a colleague to call back."

[agents.functions.inputs]
reason = { arg = "reason", required = true }
"#;

fn good_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "session.token", "tok-123\n");
    write(
        dir.path(),
        "webhook.secret",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n",
    );
    dir
}

#[test]
fn check_config_prints_tools_for_a_good_config() {
    let dir = good_dir();
    let cfg = write(dir.path(), "toolgate.toml", GOOD);
    let out = toolgate().arg("check-config").arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("OK (1 org, 1 connection, 1 agent)"),
        "{stdout}"
    );
    assert!(stdout.contains("agent support-bot (org acme) exposes 1 tool:"));
    assert!(stdout.contains("\"name\": \"request_callback\""));
    assert!(!stdout.contains("tok-123"), "secrets never printed");
}

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let dir = good_dir();
    let bad = GOOD
        .replace("connection = \"acme-hooks\"", "connection = \"acme-hook\"")
        .replace("[server]", "[sever]");
    let cfg = write(dir.path(), "bad.toml", &bad);
    let out = toolgate().arg("check-config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(
        stderr.contains("sever: unknown key (did you mean \"server\"?)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "agents[0].functions[0].connection: no connection \"acme-hook\" (did you mean \"acme-hooks\"?)"
        ),
        "{stderr}"
    );
}

#[test]
fn serve_with_a_bad_config_never_starts() {
    let dir = good_dir();
    let bad = GOOD.replace("[server]", "[server]\nmax_frame_bytes = \"big\"");
    let cfg = write(dir.path(), "bad.toml", &bad);
    let out = toolgate()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("server.max_frame_bytes: expected an integer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not starting with a bad config"),
        "{stderr}"
    );
}

/// `toolgate serve` at `info`, its log (`format`: `TOOLGATE_LOG_FORMAT`, or the default text)
/// on a pipe.
fn serve_logging_to_a_pipe(cfg: &std::path::Path, format: Option<&str>) -> std::process::Child {
    let mut cmd = toolgate();
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .env("TOOLGATE_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match format {
        Some(f) => cmd.env("TOOLGATE_LOG_FORMAT", f),
        None => cmd.env_remove("TOOLGATE_LOG_FORMAT"),
    };
    cmd.spawn().unwrap()
}

#[cfg(unix)]
#[test]
fn serve_answers_health_checks_and_exits_cleanly_on_sigterm() {
    let dir = good_dir();
    let cfg = write(dir.path(), "toolgate.toml", GOOD);
    let mut child = serve_logging_to_a_pipe(&cfg, Some("json"));
    // The first log line names the bound addresses.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut admin = None;
    while admin.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "toolgate serving" {
            admin = v["admin"].as_str().map(str::to_owned);
        }
    }
    let admin = admin.expect("serve logged its addresses");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = rt.block_on(async {
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(body, r#"{"status":"ok"}"#);
    // SIGTERM: stop accepting, drain, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        #[allow(
            clippy::disallowed_methods,
            reason = "a test waiting for a child process"
        )]
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log read through a pipe (a file, the journal, a collector) is plain text: no terminal
/// colour codes around the level or the fields.
#[cfg(unix)]
#[test]
fn a_log_written_to_a_pipe_has_no_colour_codes() {
    let dir = good_dir();
    let cfg = write(dir.path(), "toolgate.toml", GOOD);
    let mut child = serve_logging_to_a_pipe(&cfg, None);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    let mut serving = None;
    while serving.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("toolgate serving") {
            serving = Some(line.clone());
        }
        log.push_str(&line);
        log.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    let serving = serving.unwrap_or_else(|| panic!("serve did not log its addresses: {log}"));
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(serving.contains(" INFO "), "{serving}");
    assert!(
        serving.contains(" admin="),
        "fields as key=value: {serving}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_prints_one_line_per_connection_and_fails_when_one_does() {
    use toolgate::tooling::mock::MockProvider;
    let resend = MockProvider::resend("re_cli_key").await.unwrap();
    let wati = MockProvider::wati("wati-cli-token").await.unwrap();
    let dir = good_dir();
    write(dir.path(), "resend.key", "re_cli_key");
    write(dir.path(), "wati.token", "Bearer wati-cli-token");
    let text = GOOD.to_owned()
        + &format!(
            r#"
[[connections]]
id = "acme-resend"
org = "acme"
provider = "resend"
api_key = {{ file = "resend.key" }}
from = "Acme <support@acme.test>"
base_url = "{}"

[[connections]]
id = "acme-wati"
org = "acme"
provider = "wati"
endpoint = "{}"
token = {{ file = "wati.token" }}
"#,
            resend.url(),
            wati.url()
        );
    let cfg = write(dir.path(), "toolgate.toml", &text);
    let run = |args: &[&str]| {
        let out = toolgate()
            .arg("validate")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("acme-hooks   webhook  connected"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("acme-resend  resend   connected    the API key is valid"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("acme-wati    wati     connected"),
        "{out}"
    );
    assert!(!out.contains("re_cli_key") && !out.contains("wati-cli-token"));

    resend.set_revoked(true);
    let (code, out) = tokio::task::block_in_place(|| run(&["--connection", "acme-resend"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.trim(),
        "acme-resend  resend   error        Resend refused the API key (invalid_api_key)"
    );
    let (code, _) = tokio::task::block_in_place(|| run(&["--connection", "acme-resnd"]));
    assert_eq!(code, Some(1));

    // A template the config sends that Wati has not approved fails the check, on one line.
    let with_template = text
        + r#"
[[agents]]
id = "wati-bot"
org = "acme"

[[agents.functions]]
name = "confirm_order"
action = "wati.send_template_message"
connection = "acme-wati"
description = "Confirm the order on WhatsApp."

[agents.functions.inputs]
whatsapp_number = { from = "caller.number" }
template_name = { value = "order_confirmed" }
broadcast_name = { value = "confirmations" }
"#;
    write(dir.path(), "toolgate.toml", &with_template);
    wati.set_templates(&[("order_confirmed", "PENDING")]);
    let (code, out) = tokio::task::block_in_place(|| run(&["--connection", "acme-wati"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.trim(),
        "acme-wati  wati     connected    the token is valid, but template \"order_confirmed\" is not approved (PENDING)"
    );
    wati.set_templates(&[("order_confirmed", "APPROVED")]);
    let (code, out) = tokio::task::block_in_place(|| run(&["--connection", "acme-wati"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.trim(),
        "acme-wati  wati     connected    the token is valid (template \"order_confirmed\" is approved)"
    );
}

#[test]
fn tools_prints_each_platforms_definitions_and_refuses_an_unknown_format() {
    let dir = good_dir();
    let text = format!(
        "{GOOD}\n[[webhooks]]\nid = \"vapi-support\"\norg = \"acme\"\nplatform = \"vapi\"\nagent = \"support-bot\"\nsecret = {{ file = \"session.token\" }}\n"
    );
    let cfg = write(dir.path(), "toolgate.toml", &text);
    let run = |format: &str| {
        toolgate()
            .args([
                "tools",
                "--agent",
                "support-bot",
                "--format",
                format,
                "--url",
                "https://tg.example.com",
                "--config",
            ])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run("vapi");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["function"]["name"], "request_callback");
    assert_eq!(
        v[0]["function"]["parameters"]["required"],
        serde_json::json!(["reason"])
    );
    assert_eq!(
        v[0]["server"]["url"],
        "https://tg.example.com/v1/hooks/vapi-support"
    );
    assert_eq!(v[0]["messages"][0]["type"], "request-start");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("tok-123"),
        "no secret printed"
    );
    let out = run("openai");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["type"], "function");
    assert_eq!(v[0]["name"], "request_callback");
    let out = run("elevenlabs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["api_schema"]["request_body_schema"]["properties"]["system__conversation_id"]["dynamic_variable"],
        "system__conversation_id"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no [[webhooks]] entry"), "{stderr}");
    for f in ["retell", "deepgram"] {
        assert!(run(f).status.success());
    }
    let out = run("teams");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));
}
