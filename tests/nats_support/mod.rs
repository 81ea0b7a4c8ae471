//! A nats-server with JetStream for tests: the one `.ci/run` starts for the whole run
//! (`TOOLGATE_NATS_URL`, shared by tests that never stop it, each on stream prefixes of its
//! own), or one per test on a free loopback port with its own store directory, killed at the
//! end (tests that crash or restart it). Missing nats-server: `start` returns `None` after a
//! note, or panics when `TOOLGATE_REQUIRE_NATS=1` (CI).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary, if there is one.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream: this test's own (a loopback port and a store directory of
/// its own, killed when dropped), or the one `.ci/run` started for all tests
/// (`TOOLGATE_NATS_URL`), which a test may use but never stops.
pub struct NatsServer {
    url: String,
    own: Option<Own>,
}

/// A server this test started.
struct Own {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A stream prefix no other test uses: tests that share a server keep their streams apart.
pub fn unique_prefix(base: &str) -> String {
    let nanos = toolgate::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{base}_{:x}{:x}", std::process::id(), nanos)
}

impl NatsServer {
    /// The shared server when there is one (`TOOLGATE_NATS_URL`), else one of this test's
    /// own. For tests that never stop or restart it; use stream prefixes from
    /// [`unique_prefix`].
    pub fn shared() -> Option<NatsServer> {
        match std::env::var("TOOLGATE_NATS_URL") {
            Ok(url) if !url.trim().is_empty() => Some(NatsServer {
                url: url.trim().to_owned(),
                own: None,
            }),
            _ => NatsServer::start(&[]),
        }
    }

    /// A running server of this test's own, or `None` (with a note) when nats-server is not
    /// installed and not required.
    pub fn start(extra: &[&str]) -> Option<NatsServer> {
        let Some(bin) = nats_server_bin() else {
            if std::env::var("TOOLGATE_REQUIRE_NATS").as_deref() == Ok("1") {
                panic!(
                    "TOOLGATE_REQUIRE_NATS=1 but nats-server is not installed (apt-get install nats-server, or set NATS_SERVER_BIN)"
                );
            }
            eprintln!(
                "note: nats-server is not installed; skipping this NATS conformance case (set TOOLGATE_REQUIRE_NATS=1 to fail instead)"
            );
            return None;
        };
        let port = free_port();
        let mut s = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            own: Some(Own {
                bin,
                port,
                dir: tempfile::tempdir().unwrap(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            }),
        };
        s.spawn();
        Some(s)
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn own(&mut self) -> &mut Own {
        self.own
            .as_mut()
            .expect("this test stops nats-server: it must start its own (NatsServer::start)")
    }

    /// Start it (again, on the same port and store).
    pub fn spawn(&mut self) {
        let own = self.own();
        let log = std::fs::File::create(own.dir.path().join("server.log")).unwrap();
        let child = Command::new(&own.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &own.port.to_string(), "-sd"])
            .arg(own.dir.path().join("store"))
            .args(&own.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", own.bin.display()));
        own.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", own.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} (log: {})",
                own.port,
                std::fs::read_to_string(own.dir.path().join("server.log")).unwrap_or_default()
            );
            #[allow(
                clippy::disallowed_methods,
                reason = "a test waiting for a child process"
            )]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server without warning (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.own().child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop it gracefully (SIGTERM): what a restart by an operator does.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.own().child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                #[allow(
                    clippy::disallowed_methods,
                    reason = "a test waiting for a child process"
                )]
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(own) = &mut self.own
            && let Some(mut c) = own.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// the conformance harness: one case, two backends

/// Which backend a conformance case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Nats,
}

/// The hosts of one conformance case (`tests/jobs_conformance.rs`,
/// `tests/evidence_conformance.rs`): a temporary directory for SQLite files and, for NATS, a
/// server and a stream prefix of the case's own. "Hosts" are separate store instances: for
/// NATS, separate connections, as two sidecars or workers would have; for SQLite, separate
/// stores on one directory. Each suite opens its own store on it.
pub struct Hosts {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub nats: Option<NatsServer>,
    /// This case's stream prefix (cases may share a server).
    pub prefix: String,
}

impl Hosts {
    /// Hosts on the shared nats-server, when there is one; streams under `base`.
    pub fn new(kind: Kind, base: &str) -> Option<Hosts> {
        Hosts::on(kind, base, NatsServer::shared)
    }

    /// Hosts on a nats-server of their own, which the case may stop and start.
    pub fn new_own(kind: Kind, base: &str) -> Option<Hosts> {
        Hosts::on(kind, base, || NatsServer::start(&[]))
    }

    fn on(kind: Kind, base: &str, server: impl FnOnce() -> Option<NatsServer>) -> Option<Hosts> {
        let nats = match kind {
            Kind::Sqlite => None,
            Kind::Nats => Some(server()?),
        };
        Some(Hosts {
            kind,
            dir: tempfile::tempdir().unwrap(),
            nats,
            prefix: unique_prefix(base),
        })
    }

    /// Options for this case's server and prefix, the defaults for the rest.
    pub fn nats_options(&self) -> toolgate::storage::nats::NatsOptions {
        let server = self.nats.as_ref().expect("a NATS case");
        toolgate::storage::nats::NatsOptions::new(vec![server.url()], self.prefix.as_str())
    }

    /// The server (NATS cases only).
    pub fn server(&mut self) -> &mut NatsServer {
        self.nats.as_mut().expect("a NATS case")
    }
}

/// Open a store with `open` until it opens: the server may still be starting JetStream. Tries
/// for 15 s, then panics naming `what`.
pub async fn open_until_up<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    what: &str,
    mut open: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match open().await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for nats-server: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot open the NATS {what}: {e}"),
        }
    }
}

/// Run `scenario` against both backends, as `<name>::sqlite` and `<name>::nats`, on hosts with
/// streams under the suite's `PREFIX`; with `own`, the NATS case gets a server of its own (it
/// stops and starts it).
#[allow(unused_macros)]
macro_rules! both {
    ($name:ident, $scenario:ident) => {
        both!($name, $scenario, new);
    };
    ($name:ident, $scenario:ident, own) => {
        both!($name, $scenario, new_own);
    };
    ($name:ident, $scenario:ident, $hosts:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(h) = Hosts::new(Kind::Sqlite, PREFIX) {
                    $scenario(h).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                if let Some(h) = Hosts::$hosts(Kind::Nats, PREFIX) {
                    $scenario(h).await;
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both;
