//! `toolgate-floor` is driven by the generator exactly as toolgate is: a short run against the
//! built floor (a child process) must answer every tool call once, through the mock.

use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_drives_the_floor_like_a_sidecar() {
    let (listen, mock) = (free_port(), free_port());
    let mut floor = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate-floor"))
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--provider", &format!("http://127.0.0.1:{mock}/hook")])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the floor never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let json = dir.join(format!("floor-{}.json", std::process::id()));
    let pid = floor.id().unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate-loadtest"))
        .args(["--url", &format!("ws://127.0.0.1:{listen}/v1/session")])
        .args(["--mock-listen", &format!("127.0.0.1:{mock}")])
        .args(["--sessions", "4", "--rate", "200", "--duration", "1s"])
        .args(["--arrivals", "fixed", "--mock-latency", "fixed:5ms"])
        .args(["--threads", "2", "--sidecar-pid", &pid])
        .arg("--json")
        .arg(&json)
        .env("LOADTEST_SESSION_TOKEN", "any-token-will-do")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the run ends within a minute")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    floor.kill().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{r:#}");
    let s = &r["sidecar"];
    assert_eq!(r["verdict"]["passed"], true, "{stderr}\n{r:#}");
    assert_eq!(
        (s["scheduled"].as_u64(), s["answered"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(
        (s["lost"].as_u64(), s["doubled"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        s["statuses"],
        serde_json::json!({"succeeded": 200}),
        "{s:#}"
    );
    assert_eq!(
        s["provider_matched"], 200,
        "every call reached the mock, once"
    );
    assert_eq!(r["sessions"]["ended"], 4, "{:#}", r["sessions"]);
}
