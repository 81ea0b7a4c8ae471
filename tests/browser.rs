//! The call detail page in a real browser: headless Chromium loads the page of a test call, the
//! test reads the text it rendered, and a screenshot is saved under `target/screenshots/` for
//! reviewers.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). Without it this test says
//! so and passes, unless `TOOLGATE_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a failure.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::process::Command;
use toolgate::tooling::mock::Reply;

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TOOLGATE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Run headless Chromium with `args` against `url`; its stdout.
async fn run_chromium(
    bin: &PathBuf,
    profile: &std::path::Path,
    args: &[&str],
    url: &str,
) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium took over 90 s")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text a reader sees: tags dropped, entities decoded, whitespace collapsed.
fn visible_text(dom: &str) -> String {
    let body = dom.split("<body").nth(1).unwrap_or(dom);
    let body = body.split("<style").next().unwrap_or(body);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&#39;", "'")
        .replace("&quot;", "\"");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn chromium_renders_the_call_page_with_the_transcript_and_every_status() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var("TOOLGATE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "no chromium on PATH: install Debian's chromium package (or set TOOLGATE_CHROMIUM)"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium); .ci/run requires it");
        return;
    };
    let env = Env::start().await;
    let mut s = env.session("c-browser", order_vars()).await;
    s.agent_says("Thanks for calling Acme, how can I help?")
        .await;
    s.say("Where is my order A-1042? Please email me the details.")
        .await;
    s.agent_says("It ships Friday. I'll email you a summary.")
        .await;
    s.consent("email", true).await;
    let ok = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": "Ships Friday"}),
        )
        .await;
    assert_eq!(ok.status(), "succeeded");
    let rejected = s
        .call("call_02", "send_whatsapp_confirmation", json!({}))
        .await;
    assert_eq!(rejected.status(), "rejected");
    env.resend.push(Reply::slow(700));
    let later = s
        .call(
            "call_03",
            "email_later",
            json!({"summary": "Tracking link"}),
        )
        .await;
    assert_eq!(later.status(), "deferred");
    s.say("Great, thank you, bye.").await;
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    s.client.recv(WAIT).await.unwrap();
    // Wait for the deferred email to settle, so the page shows its final status.
    let job = later.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let settled = env.job_settled(&job, Duration::from_secs(15)).await;
    assert_eq!(settled["state"], "succeeded");
    env.server.runtime().evidence.flush().await;

    let url = format!(
        "http://{}/calls/c-browser?access_token={ACME_ADMIN}",
        env.server.admin_addr
    );
    let profile = tempfile::tempdir().unwrap();
    let dom = run_chromium(&bin, profile.path(), &["--dump-dom"], &url).await;
    let text = visible_text(&dom);
    for expected in [
        "Call c-browser",
        "Thanks for calling Acme, how can I help?",
        "Where is my order A-1042? Please email me the details.",
        "Great, thank you, bye.",
        "Consent email: granted (dtmf)",
        "send_email_summary succeeded",
        "send_whatsapp_confirmation rejected",
        "missing_fields",
        "Missing: order_id",
        "email_later succeeded the model was told: deferred",
        "Filler spoken at",
        "Provider took",
        "Call ended (hangup)",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not on the page:\n{text}"
        );
    }
    assert!(!text.contains("ana@example.com") && !text.contains(ACME_ADMIN));

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("call-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &bin,
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
