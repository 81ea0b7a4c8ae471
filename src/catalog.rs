//! The action catalog: the provider actions toolgate knows, with their typed inputs (SPEC §1, §5).

use std::fmt;

/// A provider toolgate can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Resend (email).
    Resend,
    /// Wati (WhatsApp).
    Wati,
    /// A signed webhook (Standard Webhooks).
    Webhook,
}

impl Provider {
    /// All providers.
    pub const ALL: [Provider; 3] = [Provider::Resend, Provider::Wati, Provider::Webhook];

    /// The provider's config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Resend => "resend",
            Provider::Wati => "wati",
            Provider::Webhook => "webhook",
        }
    }

    /// Parse a config name.
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether sending the same action again cannot act twice: Resend replays the first answer
    /// for a repeated `Idempotency-Key`, and Standard Webhooks receivers dedupe on the stable
    /// `webhook-id`. Wati has no such key: after an unknown outcome a repeat may send twice.
    pub fn idempotent(self) -> bool {
        match self {
            Provider::Resend | Provider::Webhook => true,
            Provider::Wati => false,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of value an action input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Free text, optionally bounded.
    Text {
        /// Longest accepted value, in characters.
        max_len: Option<usize>,
    },
    /// An email address.
    Email,
    /// A phone number in E.164 form.
    E164,
    /// An object of name to text (Wati template parameters).
    Map,
}

/// One input of a catalog action.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    /// Input name as used in `[agents.functions.inputs]`.
    pub name: &'static str,
    /// Value kind.
    pub kind: InputKind,
    /// Whether the provider request needs it.
    pub required: bool,
    /// What the connection supplies when the function does not bind it.
    pub connection_default: Option<&'static str>,
}

const fn input(name: &'static str, kind: InputKind, required: bool) -> InputSpec {
    InputSpec {
        name,
        kind,
        required,
        connection_default: None,
    }
}

const TEXT: InputKind = InputKind::Text { max_len: None };

const RESEND_SEND_EMAIL: &[InputSpec] = &[
    input("to", InputKind::Email, true),
    input("subject", InputKind::Text { max_len: Some(998) }, true),
    input("text", TEXT, false),
    input("html", TEXT, false),
    input("reply_to", InputKind::Email, false),
    InputSpec {
        name: "from",
        kind: TEXT,
        required: false,
        connection_default: Some("the connection's `from`"),
    },
];

const WATI_SEND_TEMPLATE: &[InputSpec] = &[
    input("whatsapp_number", InputKind::E164, true),
    input("template_name", TEXT, true),
    input("broadcast_name", TEXT, true),
    input("parameters", InputKind::Map, false),
];

const WATI_SEND_SESSION: &[InputSpec] = &[
    input("whatsapp_number", InputKind::E164, true),
    input(
        "message_text",
        InputKind::Text {
            max_len: Some(4096),
        },
        true,
    ),
];

/// A built-in provider action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `resend.send_email`
    ResendSendEmail,
    /// `wati.send_template_message`
    WatiSendTemplateMessage,
    /// `wati.send_session_message`
    WatiSendSessionMessage,
    /// `webhook.post`
    WebhookPost,
}

impl Action {
    /// All catalog actions.
    pub const ALL: [Action; 4] = [
        Action::ResendSendEmail,
        Action::WatiSendTemplateMessage,
        Action::WatiSendSessionMessage,
        Action::WebhookPost,
    ];

    /// The catalog name (`provider.action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ResendSendEmail => "resend.send_email",
            Action::WatiSendTemplateMessage => "wati.send_template_message",
            Action::WatiSendSessionMessage => "wati.send_session_message",
            Action::WebhookPost => "webhook.post",
        }
    }

    /// Parse a catalog name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The provider that runs this action.
    pub fn provider(self) -> Provider {
        match self {
            Action::ResendSendEmail => Provider::Resend,
            Action::WatiSendTemplateMessage | Action::WatiSendSessionMessage => Provider::Wati,
            Action::WebhookPost => Provider::Webhook,
        }
    }

    /// A short human label, also used in the model's success message.
    pub fn label(self) -> &'static str {
        match self {
            Action::ResendSendEmail => "Email sent.",
            Action::WatiSendTemplateMessage | Action::WatiSendSessionMessage => {
                "WhatsApp message sent."
            }
            Action::WebhookPost => "Done.",
        }
    }

    /// The action's typed inputs. `webhook.post` is open: any input name is accepted as text
    /// (or a map) and forwarded in the webhook body.
    pub fn inputs(self) -> &'static [InputSpec] {
        match self {
            Action::ResendSendEmail => RESEND_SEND_EMAIL,
            Action::WatiSendTemplateMessage => WATI_SEND_TEMPLATE,
            Action::WatiSendSessionMessage => WATI_SEND_SESSION,
            Action::WebhookPost => &[],
        }
    }

    /// Whether inputs not in [`Action::inputs`] are accepted.
    pub fn open_inputs(self) -> bool {
        matches!(self, Action::WebhookPost)
    }

    /// The spec of one input; open actions accept any name as text.
    pub fn input(self, name: &str) -> Option<InputSpec> {
        self.inputs()
            .iter()
            .find(|i| i.name == name)
            .copied()
            .or_else(|| {
                self.open_inputs().then_some(InputSpec {
                    name: "",
                    kind: TEXT,
                    required: false,
                    connection_default: None,
                })
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
