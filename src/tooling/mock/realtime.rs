//! A loopback stand-in for the OpenAI Realtime API, for `toolgate demo`: a scripted model that
//! speaks the GA event shapes. It hears the caller as text (`conversation.item.create` with an
//! `input_text` message), reports that as the caller's transcript, calls `send_email_summary`
//! when the caller asks for an email, and answers every `response.create` with one spoken line.
//! It records what it received, so the demo can show what reached the model.

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The fake Realtime API.
pub struct FakeRealtime {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
}

struct Model {
    events: u64,
    responses: u64,
    last_output: Option<Value>,
}

impl Model {
    fn event(&mut self, mut v: Value) -> Message {
        self.events += 1;
        v["event_id"] = json!(format!("evt_{}", self.events));
        Message::text(v.to_string())
    }

    /// A response with one spoken line.
    fn say(&mut self, line: &str, out_of_band: bool) -> Vec<Message> {
        self.responses += 1;
        let id = format!("resp_{}", self.responses);
        let conversation = if out_of_band {
            Value::Null
        } else {
            json!("conv_1")
        };
        vec![
            self.event(json!({"type": "response.created", "response": {"id": id, "object": "realtime.response", "status": "in_progress", "conversation_id": conversation, "output": []}})),
            self.event(json!({"type": "response.output_audio_transcript.done", "response_id": id, "item_id": format!("item_{id}"), "output_index": 0, "content_index": 0, "transcript": line})),
            self.event(json!({"type": "response.done", "response": {"id": id, "object": "realtime.response", "status": "completed", "conversation_id": conversation, "output": []}})),
        ]
    }

    /// The model decides to call `name` with `args`.
    fn call(&mut self, name: &str, args: Value) -> Vec<Message> {
        self.responses += 1;
        let id = format!("resp_{}", self.responses);
        let item = format!("item_fc_{}", self.responses);
        let call_id = format!("call_{}", self.responses);
        let added = json!({"id": item, "object": "realtime.item", "type": "function_call", "status": "in_progress", "name": name, "call_id": call_id, "arguments": ""});
        let mut done = added.clone();
        done["status"] = json!("completed");
        done["arguments"] = json!(args.to_string());
        vec![
            self.event(json!({"type": "response.created", "response": {"id": id, "object": "realtime.response", "status": "in_progress", "conversation_id": "conv_1", "output": []}})),
            self.event(json!({"type": "response.output_item.added", "response_id": id, "output_index": 0, "item": added})),
            self.event(json!({"type": "response.function_call_arguments.done", "response_id": id, "item_id": item, "output_index": 0, "call_id": call_id, "name": name, "arguments": args.to_string()})),
            self.event(json!({"type": "response.output_item.done", "response_id": id, "output_index": 0, "item": done})),
            self.event(json!({"type": "response.done", "response": {"id": id, "object": "realtime.response", "status": "completed", "conversation_id": "conv_1", "output": [done]}})),
        ]
    }

    fn on(&mut self, v: &Value) -> Vec<Message> {
        match v["type"].as_str().unwrap_or("") {
            "conversation.item.create" => {
                let item = &v["item"];
                if item["type"] == "function_call_output" {
                    self.last_output =
                        serde_json::from_str(item["output"].as_str().unwrap_or("")).ok();
                    return Vec::new();
                }
                let text = item["content"][0]["text"].as_str().unwrap_or("").to_owned();
                let mut out = vec![self.event(
                    json!({"type": "conversation.item.input_audio_transcription.completed",
                    "item_id": "item_user", "content_index": 0, "transcript": text,
                    "usage": {"type": "duration", "seconds": 1.5}}),
                )];
                if text.to_lowercase().contains("email") {
                    out.extend(self.call(
                        "send_email_summary",
                        json!({"summary": "Order A-1042 ships Friday."}),
                    ));
                }
                out
            }
            "response.create" => {
                let out_of_band = v["response"]["conversation"] == "none";
                if out_of_band {
                    let line = v["response"]["instructions"]
                        .as_str()
                        .and_then(|i| i.rsplit_once(": "))
                        .map_or("One moment.", |(_, l)| l)
                        .to_owned();
                    return self.say(&line, true);
                }
                let line = match self.last_output.take() {
                    Some(o) if o["ok"] == true => "Done: the summary is on its way to your inbox.",
                    Some(_) => "Sorry, I could not send that just now.",
                    None => "How else can I help?",
                };
                self.say(line, false)
            }
            _ => Vec::new(),
        }
    }
}

impl FakeRealtime {
    /// Listen on loopback.
    pub async fn start() -> std::io::Result<FakeRealtime> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let mut model = Model {
                        events: 0,
                        responses: 0,
                        last_output: None,
                    };
                    let created = model.event(json!({"type": "session.created", "session": {"type": "realtime", "id": "sess_demo"}}));
                    if ws.send(created).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(t) = msg else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(&t) else {
                            continue;
                        };
                        log.lock().expect("log lock").push(v.clone());
                        for m in model.on(&v) {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok(FakeRealtime { addr, received })
    }

    /// The WebSocket URL of its Realtime endpoint.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Every client event it received, in order.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().expect("log lock").clone()
    }
}
