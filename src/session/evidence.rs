//! What a session tells the evidence store: the call's history as it streams in, and one
//! record per tool call once its answer is settled.
//!
//! The hot path only gathers: a tool call's verdicts, inputs and times go into its [`Notes`].
//! The record is redacted and built after the session has written the `tool.result` to the
//! socket ([`Session::write_evidence`]), and the store's own thread writes it, so evidence never
//! delays an answer.

use std::sync::Arc;

use serde_json::Value;

use crate::answer::{Answer, ProviderOutcome};
use crate::bindings::Resolution;
use crate::clock::{Millis, now_ms};
use crate::dispatch::{Outcome, ProviderTiming};
use crate::evidence::{
    self, CallTurn, CancelRecord, Event, Final, Invocation, SourceType, Timeline,
};
use crate::guards::Verdict;
use crate::protocol::ResultStatus;
use crate::providers::Prepared;

use super::Session;
use crate::call_state::Entry;

/// Evidence gathered about one tool call until its record is written.
#[derive(Debug, Default)]
pub(super) struct Notes {
    /// The function name the model called.
    pub name: String,
    /// When the `tool.call` arrived, ms since the epoch.
    pub received_at: Millis,
    /// Every guard verdict, in order.
    pub verdicts: Vec<Verdict>,
    /// History entries before the call.
    pub history_len: usize,
    /// The resolved inputs (back from the dispatch task for calls that went out).
    pub inputs: Option<Resolution>,
    /// Why a guard stopped it.
    pub rejection: Option<String>,
    /// Filler lines sent, ms after the call.
    pub fillers: Vec<u64>,
    /// What the model was told (or would have been, had the session still been there).
    pub answer: Option<Answer>,
    /// When the answer was written, ms after the call.
    pub answered_ms: Option<u64>,
    /// What the provider request came to.
    pub outcome: Option<Outcome>,
    /// Provider request timing.
    pub timing: ProviderTiming,
    /// The provider request.
    pub request: Option<Arc<Prepared>>,
    /// A barge-in's outcome at the provider.
    pub cancel: Option<ProviderOutcome>,
    /// The model's arguments as they came.
    pub arguments: Option<crate::protocol::Arguments>,
    /// How long the call waited on the provider before it was answered (for the overhead
    /// metric: the rest is toolgate's own time).
    pub provider_wait: std::time::Duration,
}

impl Session {
    /// Record a history entry (redacted by the store's writer, off this task).
    pub(super) fn record_history(&self, entry: &Entry) {
        self.rt.evidence.submit(Event::History(CallTurn {
            org: self.key.0.clone(),
            call_id: self.ctx.call_id.clone(),
            started_at: self.started_at,
            turn: entry.clone(),
        }));
    }

    /// The record of a tool call is due: written after the current frames are flushed.
    /// `last`: nothing more will be learned about the call here (a deferred call's record is
    /// written when it is answered and again when its live request ends).
    pub(super) fn record_due(&mut self, id: &str, last: bool) {
        self.due.push((id.to_owned(), last));
    }

    /// A deferred call's job was cancelled before it was sent: its record ends `cancelled`.
    pub(super) fn record_cancelled_job(
        &self,
        job_id: &str,
        invocation_id: &str,
        reason: Option<String>,
    ) {
        self.rt.evidence.submit(Event::Final(Box::new(Final {
            job_id: job_id.to_owned(),
            invocation_id: invocation_id.to_owned(),
            status: "cancelled".into(),
            error_code: Some("cancelled".into()),
            error_message: Some("cancelled before it was sent".into()),
            provider_message_id: None,
            at_least_once: false,
            cancelled: Some(CancelRecord {
                by: "media_server".into(),
                reason,
                provider_outcome: "not_sent".into(),
            }),
            at: now_ms(),
        })));
    }

    /// A tool call refused before its guards ran (the sidecar is draining or overloaded, or the
    /// id was used before): answered with an `error` frame, and on record as `rejected`.
    pub(super) fn record_refused(
        &self,
        call: &crate::protocol::ToolCall,
        received: tokio::time::Instant,
        code: crate::protocol::ErrorCode,
        message: &str,
    ) -> String {
        let function = self.agent.functions.iter().find(|f| f.name == call.name);
        let received_at = self.clock(received);
        let answered = received.elapsed().as_millis() as u64;
        let invocation_id = crate::evidence::invocation_id();
        self.rt
            .evidence
            .submit(Event::Invocation(Box::new(Invocation {
                invocation_id: invocation_id.clone(),
                source_type: SourceType::Agent,
                parent_invocation_id: None,
                org_id: self.key.0.clone(),
                call_id: self.ctx.call_id.clone(),
                agent_id: self.agent.id.clone(),
                function: call.name.clone(),
                action: function.map(|f| f.action.as_str().to_owned()),
                connection_id: function.map(|f| f.connection.id.clone()),
                channel: Some(self.channel.as_str().to_owned()),
                received_at,
                // An overloaded call was answered `failed` (SPEC §2); a reused id `rejected`.
                status: refused_status(code).into(),
                answered_status: refused_status(code).into(),
                is_final: true,
                final_at: Some(received_at + answered as Millis),
                error_code: Some(code.as_str().to_owned()),
                error_message: Some(crate::redact::text(message, &[]).into_owned()),
                missing_fields: Vec::new(),
                guards: Vec::new(),
                inputs_redacted: Default::default(),
                request_payload_redacted: None,
                response_payload_redacted: None,
                provider_message_id: None,
                latency_ms: None,
                timeline: Timeline {
                    answered_ms: Some(answered),
                    ..Timeline::default()
                },
                workflow_job_id: None,
                deferral_reason: None,
                at_least_once: false,
                cancelled: None,
                transcript_context: evidence::context(self.history.entries()),
                arguments_redacted: Some(evidence::arguments(
                    &call.arguments,
                    self.rt.config().evidence.keep_bodies,
                )),
                session_redacted: Some(self.session_record()),
            })));
        invocation_id
    }

    /// The session's values as every record of it shows them (redacted once).
    fn session_record(&self) -> Arc<evidence::SessionRecord> {
        self.ctx_redacted
            .get_or_init(|| Arc::new(evidence::SessionRecord::of(&self.ctx)))
            .clone()
    }

    /// Build and hand over the records that are due.
    pub(super) fn write_evidence(&mut self) {
        for (id, last) in std::mem::take(&mut self.due) {
            if let Some(record) = self.build_record(&id) {
                self.rt.evidence.submit(Event::Invocation(Box::new(record)));
            }
            if last && let Some(slot) = self.calls.get_mut(&id) {
                slot.notes = None;
            }
        }
    }

    fn build_record(&self, id: &str) -> Option<Invocation> {
        let slot = self.calls.get(id)?;
        let notes = slot.notes.as_deref()?;
        let function = slot.function.map(|i| &self.agent.functions[i]);
        let snap = self.rt.snap();
        let keep_bodies = snap.config.evidence.keep_bodies;
        let secrets = function
            .and_then(|f| snap.connections.connection(&f.connection.id))
            .map(|c| c.secret_texts())
            .unwrap_or_default();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();

        let answer = notes.answer.as_ref();
        let answered_status = answer.map_or("none", |a| a.status.as_str());
        let (mut error_code, missing_fields) = answer
            .map(|a| evidence::output_fields(&a.output))
            .unwrap_or_default();
        // A deferred answer becomes final when its job ends; everything else is final now.
        let (status, is_final) = match answer.map(|a| a.status) {
            Some(ResultStatus::Deferred) => ("deferred", false),
            Some(s) => (s.as_str(), true),
            None => ("failed", true),
        };
        // Guards quote what they refused ("4155550100 is not a phone number"): masked too.
        let mut error_message = notes
            .rejection
            .as_deref()
            .map(|r| crate::redact::text(r, &secrets).into_owned());
        let mut message_id = None;
        let mut response = None;
        match &notes.outcome {
            Some(Outcome::Accepted(a)) => {
                message_id = a.message_id.clone();
                response = Some(evidence::response(
                    Some(a.http_status),
                    Some(&a.body),
                    keep_bodies,
                    &secrets,
                ));
            }
            Some(Outcome::Failed(e)) => {
                error_message = Some(crate::redact::text(&e.message, &secrets).into_owned());
                response = Some(evidence::response(
                    e.http_status,
                    e.body.as_deref(),
                    keep_bodies,
                    &secrets,
                ));
                if status == "deferred" {
                    // The live request's failure is why the worker runs it; the job's end is
                    // the call's outcome.
                    error_code.get_or_insert_with(|| e.kind.code().to_owned());
                }
            }
            Some(Outcome::Internal(what)) => {
                error_message = Some(crate::redact::text(what, &secrets).into_owned())
            }
            _ => {}
        }
        let cancelled = (slot.cancelled.load(std::sync::atomic::Ordering::Acquire)
            || notes.cancel.is_some())
        .then(|| CancelRecord {
            by: "media_server".into(),
            reason: slot.cancel_reason.clone(),
            provider_outcome: notes
                .cancel
                .map_or("unknown", ProviderOutcome::as_str)
                .into(),
        });
        let timing = notes.timing;
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
        let entries = self.history.entries();
        Some(Invocation {
            invocation_id: slot.invocation_id.clone(),
            source_type: SourceType::Agent,
            parent_invocation_id: None,
            org_id: self.key.0.clone(),
            call_id: self.ctx.call_id.clone(),
            agent_id: self.agent.id.clone(),
            function: notes.name.clone(),
            action: function.map(|f| f.action.as_str().to_owned()),
            connection_id: function.map(|f| f.connection.id.clone()),
            channel: Some(self.channel.as_str().to_owned()),
            received_at: notes.received_at,
            status: status.to_owned(),
            answered_status: answered_status.to_owned(),
            is_final,
            final_at: is_final.then(now_ms),
            error_code,
            error_message,
            missing_fields,
            guards: evidence::guards(&notes.verdicts),
            inputs_redacted: notes
                .inputs
                .as_ref()
                .map(|r| evidence::inputs(function, r, keep_bodies))
                .unwrap_or_default(),
            request_payload_redacted: notes
                .request
                .as_deref()
                .map(|r| evidence::request(r, keep_bodies, &secrets)),
            response_payload_redacted: response,
            provider_message_id: message_id,
            latency_ms: ms(timing.done)
                .zip(ms(timing.sent))
                .map(|(d, s)| d.saturating_sub(s)),
            timeline: Timeline {
                filler_ms: notes.fillers.clone(),
                answered_ms: notes.answered_ms,
                provider_sent_ms: ms(timing.sent),
                provider_done_ms: ms(timing.done),
            },
            workflow_job_id: slot.reply.job_id().map(str::to_owned),
            deferral_reason: answer
                .and_then(|a| a.data.as_ref())
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            at_least_once: false,
            cancelled,
            transcript_context: evidence::context(&entries[..notes.history_len.min(entries.len())]),
            arguments_redacted: notes
                .arguments
                .as_ref()
                .map(|a| evidence::arguments(a, keep_bodies)),
            session_redacted: Some(self.session_record()),
        })
    }
}

fn refused_status(code: crate::protocol::ErrorCode) -> &'static str {
    if code == crate::protocol::ErrorCode::Overloaded {
        "failed"
    } else {
        "rejected"
    }
}
