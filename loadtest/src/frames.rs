//! Relay mode's frames and their ledger.
//!
//! Every frame carries its number: a text frame in its `event_id` (`ltr-<n>` through the relay,
//! `ltd-<n>` straight to the upstream), placed before the audio so it is found in the first
//! bytes; a binary frame in its first eight bytes (`ltr-` or `ltd-`, then `n` as a little-endian
//! `u32`), followed by the PCM. The fake upstream (in this process, on the same clock) files
//! when it read each frame and when it handed the echo back for writing, and the call that sent
//! the frame files when the echo arrived. So a round trip splits into its two pass-through legs,
//! each measured, not halved: the *up leg* (the client's write -> the upstream has the frame)
//! and the *down leg* (the upstream writes the echo -> the client has it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::calls::histogram;
use crate::schedule::Schedule;

/// Which relay the calls go through, and which dialect the fake upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// OpenAI Realtime: `/v1/relay/openai/{ticket}/realtime?model=...`.
    Openai,
    /// Deepgram Voice Agent: `/v1/relay/deepgram/{ticket}/v1/agent/converse`.
    Deepgram,
}

impl Api {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Deepgram => "deepgram",
        }
    }

    /// What the SDK appends to the relay's base URL (and the fake upstream's path).
    pub fn suffix(self) -> &'static str {
        match self {
            Api::Openai => "/realtime?model=loadtest",
            Api::Deepgram => "/v1/agent/converse",
        }
    }

    /// The path on the fake upstream (what `[relay] *_upstream` should end in).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Api::Openai => "/v1/realtime?model=loadtest",
            Api::Deepgram => "/v1/agent/converse",
        }
    }

    /// The `Authorization` value a client of this API sends (the model provider's key).
    pub fn authorization(self, key: &str) -> String {
        match self {
            Api::Openai => format!("Bearer {key}"),
            Api::Deepgram => format!("Token {key}"),
        }
    }

    /// The client's session configuration, as the SDK sends it first; `marker` comes back in
    /// the echo.
    pub fn configure(self, marker: &str) -> String {
        match self {
            Api::Openai => serde_json::json!({
                "type": "session.update",
                "event_id": marker,
                "session": {
                    "type": "realtime",
                    "instructions": "You are a load test.",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}},
                },
            })
            .to_string(),
            Api::Deepgram => serde_json::json!({
                "type": "Settings",
                "tags": [marker],
                "audio": {"input": {"encoding": "linear16", "sample_rate": 24000}},
                "agent": {"think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"},
                                    "prompt": "You are a load test."}},
            })
            .to_string(),
        }
    }
}

/// What the frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FrameKind {
    /// An OpenAI `input_audio_buffer.append` event: base64 PCM16 in JSON.
    Text,
    /// Raw PCM16 in a binary frame.
    Binary,
}

impl FrameKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Text => "text",
            FrameKind::Binary => "binary",
        }
    }
}

/// Which phase a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePhase {
    /// Through the relay.
    Relay,
    /// Straight to the fake upstream (`--baseline`).
    Direct,
}

impl FramePhase {
    fn tag(self) -> u8 {
        match self {
            FramePhase::Relay => b'r',
            FramePhase::Direct => b'd',
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            FramePhase::Relay => "relay",
            FramePhase::Direct => "direct",
        }
    }
}

/// PCM16 little-endian mono: a 440 Hz tone at a tenth of full scale, `ms` long.
fn pcm(ms: u32, sample_rate: u32) -> Vec<u8> {
    let samples = (sample_rate as u64 * ms as u64 / 1000) as usize;
    let mut out = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let t = i as f64 / sample_rate as f64;
        let v = (f64::sin(t * 440.0 * std::f64::consts::TAU) * 3276.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Base64 (standard alphabet, padded), as OpenAI Realtime carries audio.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Builds a phase's frames.
#[derive(Debug, Clone)]
pub struct FrameMaker {
    kind: FrameKind,
    phase: FramePhase,
    /// Text: the event around the audio, split where the number goes.
    head: String,
    tail: String,
    /// Binary: the PCM.
    pcm: Vec<u8>,
}

impl FrameMaker {
    /// Frames of `audio_ms` of PCM16 at `sample_rate`.
    pub fn new(kind: FrameKind, phase: FramePhase, audio_ms: u32, sample_rate: u32) -> FrameMaker {
        let pcm = pcm(audio_ms, sample_rate);
        let tag = phase.tag() as char;
        FrameMaker {
            kind,
            phase,
            head: format!(r#"{{"type":"input_audio_buffer.append","event_id":"lt{tag}-"#),
            tail: format!(r#"","audio":"{}"}}"#, base64(&pcm)),
            pcm,
        }
    }

    /// Frame `n`.
    pub fn frame(&self, n: u32) -> Message {
        match self.kind {
            FrameKind::Text => {
                let mut s = String::with_capacity(self.head.len() + 10 + self.tail.len());
                s.push_str(&self.head);
                s.push_str(&n.to_string());
                s.push_str(&self.tail);
                Message::text(s)
            }
            FrameKind::Binary => {
                let mut b = Vec::with_capacity(8 + self.pcm.len());
                b.extend_from_slice(&[b'l', b't', self.phase.tag(), b'-']);
                b.extend_from_slice(&n.to_le_bytes());
                b.extend_from_slice(&self.pcm);
                Message::binary(b)
            }
        }
    }

    /// A frame's payload size in bytes.
    pub fn size(&self) -> usize {
        match self.kind {
            FrameKind::Text => self.head.len() + 5 + self.tail.len(),
            FrameKind::Binary => 8 + self.pcm.len(),
        }
    }
}

/// The phase and number of a frame this tool made, from its payload.
pub fn frame_id(payload: &[u8], binary: bool) -> Option<(FramePhase, u32)> {
    let phase = |tag: u8| match tag {
        b'r' => Some(FramePhase::Relay),
        b'd' => Some(FramePhase::Direct),
        _ => None,
    };
    if binary {
        if payload.len() < 8 || payload[0] != b'l' || payload[1] != b't' || payload[3] != b'-' {
            return None;
        }
        let n = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
        return Some((phase(payload[2])?, n));
    }
    const KEY: &[u8] = br#""event_id":"lt"#;
    let head = &payload[..payload.len().min(96)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &payload[at..];
    if rest.len() < 3 || rest[1] != b'-' {
        return None;
    }
    let digits = &rest[2..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 10 {
        return None;
    }
    let n = std::str::from_utf8(&digits[..len]).ok()?.parse().ok()?;
    Some((phase(rest[0])?, n))
}

/// Everything observed about one frame. Times are [`crate::calls::now_ns`] readings; 0 means
/// "not seen".
#[derive(Debug, Default)]
struct FrameRecord {
    sent: AtomicU64,
    upstream_in: AtomicU64,
    upstream_out: AtomicU64,
    echoed: AtomicU64,
    echoes: AtomicU32,
    upstream_seen: AtomicU32,
}

/// A plain copy of a frame's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameView {
    /// When it was due.
    pub scheduled: u64,
    /// Its offset from the start of the clock.
    pub offset: u64,
    /// When its call took it up to write (0: never).
    pub sent: u64,
    /// When the upstream read it.
    pub upstream_in: u64,
    /// When the upstream handed its echo over for writing.
    pub upstream_out: u64,
    /// When the first echo arrived.
    pub echoed: u64,
    /// How many echoes arrived.
    pub echoes: u32,
    /// How many times the upstream read it.
    pub upstream_seen: u32,
}

/// One phase's frames.
pub struct FrameTable {
    /// Which phase.
    pub phase: FramePhase,
    schedule: Arc<Schedule>,
    t0: OnceLock<u64>,
    records: Box<[FrameRecord]>,
    sent: AtomicU64,
    echoed: AtomicU64,
    unknown: AtomicU64,
    recent: Mutex<Histogram<u64>>,
}

impl FrameTable {
    /// A table for every frame of `schedule`.
    pub fn new(phase: FramePhase, schedule: Arc<Schedule>) -> FrameTable {
        FrameTable {
            phase,
            records: (0..schedule.len())
                .map(|_| FrameRecord::default())
                .collect(),
            schedule,
            t0: OnceLock::new(),
            sent: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            recent: Mutex::new(histogram()),
        }
    }

    /// How many frames are scheduled.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Start the clock: frame `n` is due at `t0 + offset(n)`.
    pub fn start_clock(&self, t0: u64) {
        let _ = self.t0.set(t0);
    }

    /// When frame `n` is due.
    pub fn scheduled(&self, n: u32) -> u64 {
        self.t0.get().copied().unwrap_or(0) + self.schedule.offset(n as usize)
    }

    fn record(&self, n: u32) -> Option<&FrameRecord> {
        let r = self.records.get(n as usize);
        if r.is_none() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Frame `n` was taken up to write.
    pub fn mark_sent(&self, n: u32, at: u64) {
        if let Some(r) = self.record(n) {
            r.sent.store(at, Ordering::Relaxed);
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The upstream read frame `n` at `arrival` and handed its echo over at `echo`.
    pub fn mark_upstream(&self, n: u32, arrival: u64, echo: u64) {
        if let Some(r) = self.record(n)
            && r.upstream_seen.fetch_add(1, Ordering::Relaxed) == 0
        {
            r.upstream_in.store(arrival, Ordering::Relaxed);
            r.upstream_out.store(echo, Ordering::Relaxed);
        }
    }

    /// Frame `n`'s echo arrived.
    pub fn mark_echo(&self, n: u32, at: u64) {
        if let Some(r) = self.record(n)
            && r.echoes.fetch_add(1, Ordering::Relaxed) == 0
        {
            r.echoed.store(at, Ordering::Relaxed);
            self.echoed.fetch_add(1, Ordering::Relaxed);
            let rtt_us = at.saturating_sub(self.scheduled(n)) / 1000;
            if let Ok(mut h) = self.recent.lock() {
                h.saturating_record(rtt_us.max(1));
            }
        }
    }

    /// Frames taken up to write so far.
    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Frames echoed so far.
    pub fn echoed_count(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Frames with numbers outside this phase's schedule.
    pub fn unknown_count(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Round trips (from the scheduled time) recorded since the last call, emptied.
    pub fn take_recent(&self) -> Histogram<u64> {
        let mut fresh = histogram();
        if let Ok(mut h) = self.recent.lock() {
            std::mem::swap(&mut *h, &mut fresh);
        }
        fresh
    }

    /// A copy of frame `n`'s record.
    pub fn view(&self, n: u32) -> FrameView {
        let r = &self.records[n as usize];
        FrameView {
            scheduled: self.scheduled(n),
            offset: self.schedule.offset(n as usize),
            sent: r.sent.load(Ordering::Relaxed),
            upstream_in: r.upstream_in.load(Ordering::Relaxed),
            upstream_out: r.upstream_out.load(Ordering::Relaxed),
            echoed: r.echoed.load(Ordering::Relaxed),
            echoes: r.echoes.load(Ordering::Relaxed),
            upstream_seen: r.upstream_seen.load(Ordering::Relaxed),
        }
    }

    /// Every frame's record, in order.
    pub fn views(&self) -> impl Iterator<Item = FrameView> + '_ {
        (0..self.records.len() as u32).map(|n| self.view(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Arrivals;
    use std::time::Duration;

    fn payload(m: &Message) -> (&[u8], bool) {
        match m {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b, true),
            _ => panic!("not a data frame"),
        }
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn text_frames_are_append_events_with_their_number() {
        // 20 ms at 24 kHz: 480 samples, 960 bytes, 1,280 base64 characters.
        let m = FrameMaker::new(FrameKind::Text, FramePhase::Relay, 20, 24_000);
        let f = m.frame(4711);
        let (bytes, binary) = payload(&f);
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.append");
        assert_eq!(v["event_id"], "ltr-4711");
        assert_eq!(v["audio"].as_str().unwrap().len(), 1280);
        assert_eq!(frame_id(bytes, binary), Some((FramePhase::Relay, 4711)));
        assert!((m.size() as i64 - bytes.len() as i64).abs() <= 5);
        let d = FrameMaker::new(FrameKind::Text, FramePhase::Direct, 20, 24_000).frame(0);
        let (bytes, binary) = payload(&d);
        assert_eq!(frame_id(bytes, binary), Some((FramePhase::Direct, 0)));
    }

    #[test]
    fn binary_frames_lead_with_their_number() {
        let m = FrameMaker::new(FrameKind::Binary, FramePhase::Direct, 20, 16_000);
        let f = m.frame(70_000);
        let (bytes, binary) = payload(&f);
        assert_eq!(bytes.len(), 8 + 640);
        assert_eq!(m.size(), bytes.len());
        assert_eq!(frame_id(bytes, binary), Some((FramePhase::Direct, 70_000)));
    }

    #[test]
    fn foreign_frames_have_no_id() {
        assert_eq!(frame_id(br#"{"type":"session.created"}"#, false), None);
        assert_eq!(frame_id(br#"{"type":"x","event_id":"ltx-1"}"#, false), None);
        assert_eq!(frame_id(br#"{"type":"x","event_id":"ltr-"}"#, false), None);
        assert_eq!(frame_id(b"RIFF....", true), None);
        assert_eq!(frame_id(b"ltr", true), None);
    }

    #[test]
    fn the_ledger_keeps_the_first_echo() {
        let s = Schedule::build(1000.0, Duration::from_millis(3), Arrivals::Fixed, 0).unwrap();
        let t = FrameTable::new(FramePhase::Relay, Arc::new(s));
        t.start_clock(1_000_000);
        t.mark_sent(1, 2_000_000);
        t.mark_upstream(1, 2_050_000, 2_060_000);
        t.mark_echo(1, 2_100_000);
        t.mark_echo(1, 2_200_000);
        t.mark_echo(9, 2_200_000);
        let v = t.view(1);
        assert_eq!(v.scheduled, 2_000_000);
        assert_eq!(
            (v.sent, v.upstream_in, v.upstream_out),
            (2_000_000, 2_050_000, 2_060_000)
        );
        assert_eq!((v.echoed, v.echoes, v.upstream_seen), (2_100_000, 2, 1));
        assert_eq!(
            (t.sent_count(), t.echoed_count(), t.unknown_count()),
            (1, 1, 1)
        );
        assert_eq!(t.take_recent().len(), 1);
    }
}
