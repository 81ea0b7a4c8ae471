//! The generator against a real sidecar: toolgate in-process with `loadtest/loadtest.toml` (its
//! listeners on ephemeral ports, its store in a scratch directory, its connections pointed at
//! the generator's mock on a free port), and the built `toolgate-loadtest` as a child process,
//! for short runs of the tool-call modes. What the runs report is read from their `--json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use toolgate::config::{Config, LoadOptions};
use toolgate::server::Server;

const SESSION_TOKEN: &str = "loadtest-test-session-token-5d1e";
const HOOK_SECRET: &str = "loadtest-test-hook-secret-8c2f";

struct Sidecar {
    server: Server,
    /// Where the sidecar expects the generator's mock provider.
    mock_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// loadtest.toml, moved out of the way of a sidecar someone may be running with it.
async fn sidecar(name: &str) -> Sidecar {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(manifest.join("loadtest.toml")).unwrap();
    let mock_port = free_port();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("loadtest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("toolgate.db");
    let edits = [
        (
            "listen = \"127.0.0.1:8787\"",
            "listen = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "path = \"../target/loadtest-data/toolgate.db\"",
            format!("path = {:?}", db.display().to_string()),
        ),
        ("127.0.0.1:9999", format!("127.0.0.1:{mock_port}")),
        // Tests share busy machines: a slow moment must not shed their calls.
        (
            "[server]\n",
            "[server]\nshed_after_delay_ms = 0\n".to_owned(),
        ),
    ];
    for (from, to) in edits {
        assert!(text.contains(from), "loadtest.toml no longer has {from}");
        text = text.replace(from, &to);
    }
    let env = |name: &str| {
        Some(
            match name {
                "LOADTEST_SESSION_TOKEN" => SESSION_TOKEN,
                "LOADTEST_HOOK_SECRET" => HOOK_SECRET,
                "LOADTEST_WEBHOOK_SECRET" => "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "LOADTEST_RESEND_KEY" => "re_loadtest",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let config = Config::from_toml(&text, &LoadOptions::new(manifest).with_env(env))
        .unwrap_or_else(|e| panic!("loadtest.toml: {e}"));
    let server = Server::start(config).await.unwrap();
    Sidecar {
        server,
        mock_port,
        dir,
    }
}

impl Sidecar {
    /// Run the generator with `args` (and the mock on the port the sidecar expects); its exit
    /// code, stderr, and the JSON report when it wrote one.
    async fn loadtest(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, Value) {
        let json = self.dir.join("report.json");
        let _ = std::fs::remove_file(&json);
        let mock = format!("127.0.0.1:{}", self.mock_port);
        let pid = std::process::id().to_string();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate-loadtest"));
        cmd.args(args)
            .args([
                "--mock-listen",
                &mock,
                "--threads",
                "2",
                "--sidecar-pid",
                &pid,
            ])
            .arg("--json")
            .arg(&json)
            .env_remove("LOADTEST_SESSION_TOKEN")
            .env_remove("LOADTEST_HOOK_SECRET")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("the run ends within a minute")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), stderr, report)
    }

    fn hook_url(&self) -> String {
        format!("http://{}/v1/hooks/loadtest-vapi", self.server.ws_addr)
    }

    /// A webhook-mode run of [`LOAD`] against `url` with `extra` flags and `secret`.
    async fn webhook(
        &self,
        url: &str,
        extra: &[&str],
        secret: Option<&str>,
    ) -> (i32, String, Value) {
        let mut args = vec!["--webhook", "--hook-url", url];
        args.extend(extra);
        args.extend(LOAD);
        let env: Vec<(&str, &str)> = secret
            .map(|s| ("LOADTEST_HOOK_SECRET", s))
            .into_iter()
            .collect();
        self.loadtest(&args, &env).await
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(2)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 200 tool calls in one second over 4 calls, each answered once, succeeded, with a provider
/// request of its own; what every clean run of either mode shows.
fn assert_clean(r: &Value, stderr: &str) {
    let s = &r["sidecar"];
    assert_eq!(r["verdict"]["passed"], true, "{stderr}\n{r:#}");
    assert_eq!(s["scheduled"], 200, "{s:#}");
    assert_eq!(s["sent"], 200);
    assert_eq!(s["answered"], 200);
    assert_eq!(
        (s["lost"].as_u64(), s["doubled"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        s["statuses"],
        serde_json::json!({"succeeded": 200}),
        "{s:#}"
    );
    assert_eq!(s["provider_matched"], 200);
    assert_eq!(s["provider_repeated"], 0);
    assert_eq!(s["latency"]["added"]["count"], 200);
    assert!(s["latency"]["added"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["mock"]["unmatched"], 0,
        "no provider request without its call"
    );
    assert_eq!(r["sessions"]["opened"], 4);
    assert_eq!(r["sessions"]["ended"], 4, "{:#}", r["sessions"]);
    assert!(
        r["resources"]["sidecar_cpu_us_per_call"].is_f64(),
        "{:#}",
        r["resources"]
    );
}

const LOAD: [&str; 10] = [
    "--sessions",
    "4",
    "--rate",
    "200",
    "--duration",
    "1s",
    "--arrivals",
    "fixed",
    "--mock-latency",
    "fixed:5ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_runs_clean_against_a_real_sidecar() {
    let sc = sidecar("webhook").await;
    let url = sc.hook_url();
    let (code, stderr, r) = sc.webhook(&url, &["--baseline"], Some(HOOK_SECRET)).await;
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_clean(&r, &stderr);
    assert_eq!(r["run"]["mode"], "webhook");
    assert_eq!(r["run"]["url"], url.as_str());
    let w = &r["webhook"];
    assert_eq!(w["platform"], "vapi");
    assert_eq!(w["auth"], "X-Vapi-Secret");
    assert!(w["body_bytes"].as_u64().unwrap() > 1000, "{w}");
    // Keep-alive: far fewer connections than the 208 requests (set-up and ends besides).
    let conns = w["connections"].as_u64().unwrap();
    assert!((1..100).contains(&conns), "{conns} connections");
    assert_eq!(r["baseline"]["answered"], 200, "the baseline ran too");
    assert!(r["ratios"]["added"]["p50"].is_f64());

    // The same with the secret as a bearer token.
    let (code, stderr, r) = sc
        .webhook(&url, &["--hook-auth", "bearer"], Some(HOOK_SECRET))
        .await;
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_clean(&r, &stderr);
    assert_eq!(r["webhook"]["auth"], "Authorization: Bearer");
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_mode_runs_clean_with_the_same_config() {
    let sc = sidecar("websocket").await;
    let url = format!("ws://{}/v1/session", sc.server.ws_addr);
    let mut args = vec!["--url", &url];
    args.extend(LOAD);
    let (code, stderr, r) = sc
        .loadtest(&args, &[("LOADTEST_SESSION_TOKEN", SESSION_TOKEN)])
        .await;
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_clean(&r, &stderr);
    assert_eq!(r["run"]["mode"], "websocket");
    assert_eq!(r["webhook"], Value::Null);
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_setup_errors_say_what_is_wrong() {
    let sc = sidecar("webhook-errors").await;
    let url = sc.hook_url();

    let (code, stderr, _) = sc.webhook(&url, &[], Some("not-the-secret")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("answered 401") && stderr.contains("LOADTEST_HOOK_SECRET"),
        "{stderr}"
    );

    let (code, stderr, _) = sc.webhook(&url, &[], None).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no hook secret"), "{stderr}");

    let (code, stderr, _) = sc
        .webhook(&url, &["--function", "request_calback"], Some(HOOK_SECRET))
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("has no function \"request_calback\""),
        "{stderr}"
    );

    let other = format!("http://{}/v1/hooks/nobody", sc.server.ws_addr);
    let (code, stderr, _) = sc.webhook(&other, &[], Some(HOOK_SECRET)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("answered 404"), "{stderr}");
    sc.stop().await;
}
