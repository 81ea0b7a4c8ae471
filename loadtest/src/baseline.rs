//! The baseline: the same provider requests, on the same open-loop schedule, sent straight to
//! the mock with a pooled HTTP/1.1 client. What it measures is the floor any sidecar stands
//! on (this machine, this generator, loopback HTTP and the mock), so the sidecar's figures
//! can be read as a ratio to it, measured in the same run.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::calls::{CallTable, Status, now_ns};
use crate::script::Template;

/// Sends baseline requests.
#[derive(Clone)]
pub struct Baseline {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    body: Arc<Template>,
    table: Arc<CallTable>,
}

impl Baseline {
    /// Requests to `url` with a webhook-shaped body around `arguments` (holes as in
    /// [`Template`], tokens `ltb-<n>`), filed in `table`.
    pub fn new(
        url: &str,
        function: &str,
        arguments: &serde_json::Value,
        table: Arc<CallTable>,
    ) -> Result<Baseline, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("the mock's URL {url:?}: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        // The shape of a `webhook.post` delivery (SPEC §5), with the run's arguments as inputs.
        let body = serde_json::json!({
            "type": "toolgate.action",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "data": {
                "call_id": "loadtest-baseline",
                "function": function,
                "inputs": arguments,
            },
        });
        Ok(Baseline {
            client,
            uri,
            body: Arc::new(Template::new(
                &body.to_string(),
                crate::calls::Phase::Baseline.prefix(),
            )),
            table,
        })
    }

    /// Send request `n` on `handle`'s runtime; it is filed when its answer has been read.
    pub fn fire(&self, handle: &tokio::runtime::Handle, n: u32) {
        let this = self.clone();
        handle.spawn(async move {
            this.table.mark_sent(n, now_ns());
            let body = this.body.render(n);
            let req = Request::post(this.uri.clone())
                .header("content-type", "application/json")
                .header("webhook-id", "msg_loadtest_baseline_0000000000000000")
                .header("webhook-timestamp", "1767225600")
                .header(
                    "webhook-signature",
                    "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                )
                .body(Full::new(Bytes::from(body)));
            let status = match req {
                Ok(req) => match this.client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        match resp.into_body().collect().await {
                            Ok(_) if ok => Status::HttpOk,
                            Ok(_) => Status::HttpError,
                            Err(_) => Status::Transport,
                        }
                    }
                    Err(_) => Status::Transport,
                },
                Err(_) => Status::Transport,
            };
            this.table.mark_result(n, now_ns(), status);
        });
    }
}
