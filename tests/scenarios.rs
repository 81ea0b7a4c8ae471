//! `toolgate test`: the shipped example scenarios pass through the real sidecar; a wrong
//! expectation fails naming what was expected and what happened; JUnit XML for CI; broken
//! scenario files are reported clearly.

use std::path::{Path, PathBuf};
use std::process::Command;

use toolgate::tooling::scenario;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_scenarios_pass() {
    let files = scenario::expand(&[examples()]).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "direct-request",
        "vague-request",
        "no-consent",
        "missing-field",
        "slow-provider",
        "duplicate-request",
    ] {
        assert!(names.iter().any(|n| n == wanted), "no {wanted} scenario");
    }
    let reports = scenario::run_all(&files).await;
    let text = scenario::render(&reports);
    for r in &reports {
        assert!(r.passed(), "{text}");
        assert!(!r.checks.is_empty(), "{} checks nothing", r.name);
    }
    let slow = reports.iter().find(|r| r.name == "slow provider").unwrap();
    let actual = |what: &str| {
        slow.checks
            .iter()
            .find(|c| c.name.ends_with(what))
            .unwrap_or_else(|| panic!("no {what} check"))
            .actual
            .clone()
    };
    assert_eq!(actual("status"), "\"deferred\"");
    assert_eq!(actual("filler"), "a filler");
    assert_eq!(actual("job"), "\"succeeded\"");
    assert_eq!(actual("provider requests"), "1 to acme-resend");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn wrong_scenario(dir: &Path) -> PathBuf {
    let config = examples().join("../toolgate.toml");
    write(
        dir,
        "wrong.toml",
        &format!(
            r#"
name = "a wrong expectation"
config = "{}"
agent = "support-bot"
caller = {{ number = "+14155550100" }}

[[steps]]
caller = "No thanks, I don't want anything on WhatsApp."

[[steps]]
call = "send_whatsapp_confirmation"
args = {{ order_id = "A-1042" }}
expect = {{ status = "succeeded", error = "", provider_requests = 1 }}
"#,
            config.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_fails_with_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let file = wrong_scenario(dir.path());
    let report = scenario::run(&file).await;
    assert!(!report.passed());
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(scenario::Check::detail)
        .collect();
    assert_eq!(
        failed,
        [
            "expected \"succeeded\", got \"rejected\"",
            "expected no error, got \"consent_required\"",
            "expected 1 to acme-wati, got 0 to acme-wati",
        ]
    );
}

#[test]
fn the_cli_exits_non_zero_names_the_difference_and_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_scenario(dir.path());
    let junit = dir.path().join("results.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("test")
        .arg("--junit")
        .arg(&junit)
        .arg(&wrong)
        .arg(examples().join("direct-request.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("FAIL a wrong expectation"), "{stdout}");
    assert!(stdout.contains("PASS direct request"), "{stdout}");
    assert!(
        stdout.contains(
            "✗ call_1 send_whatsapp_confirmation: status: expected \"succeeded\", got \"rejected\""
        ),
        "{stdout}"
    );
    assert!(stdout.contains("3 failed"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testsuite name=\"a wrong expectation\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"3\""), "{xml}");
    assert!(
        xml.contains(
            "<failure message=\"expected &quot;succeeded&quot;, got &quot;rejected&quot;\"/>"
        ),
        "{xml}"
    );

    // Passing scenarios exit 0.
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("test")
        .arg(examples().join("missing-field.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_scenarios_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = examples().join("../toolgate.toml");
    let typo = write(
        dir.path(),
        "typo.toml",
        &format!(
            "config = \"{}\"\nagent = \"support-bot\"\n[[steps]]\ncaller = \"hi\"\nexpct = {{ status = \"x\" }}\n",
            config.display()
        ),
    );
    let r = scenario::run(&typo).await;
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("unknown field `expct`"),
        "{:?}",
        r.error
    );

    let agent = write(
        dir.path(),
        "agent.toml",
        &format!(
            "config = \"{}\"\nagent = \"suport-bot\"\nsteps = []\n",
            config.display()
        ),
    );
    let r = scenario::run(&agent).await;
    assert_eq!(
        r.error.as_deref(),
        Some("the config has no agent \"suport-bot\"")
    );

    let two = write(
        dir.path(),
        "two.toml",
        &format!(
            "config = \"{}\"\nagent = \"support-bot\"\n[[steps]]\ncaller = \"hi\"\nagent = \"hello\"\n",
            config.display()
        ),
    );
    let r = scenario::run(&two).await;
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("step 1: give exactly one of"),
        "{:?}",
        r.error
    );
    let missing = scenario::run(&dir.path().join("nope.toml")).await;
    assert!(missing.error.as_deref().unwrap().starts_with("cannot read"));
}
