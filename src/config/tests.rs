use super::*;
use crate::bindings::{Source, ValueType};

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("tok-acme".into()),
        "TOKEN2" => Some("tok-beta".into()),
        "KEY" => Some("re_key".into()),
        "WATI" => Some("Bearer wati-token ".into()),
        "HOOK" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
        _ => None,
    }
}

fn opts() -> LoadOptions {
    LoadOptions::new(".").with_env(env)
}

/// A `[[connections]]` entry of org `acme`: its id, provider and the provider's own keys.
macro_rules! connection {
    ($id:literal, $provider:literal, $($key:literal),* $(,)?) => {
        concat!(
            "\n[[connections]]\nid = \"", $id, "\"\norg = \"acme\"\nprovider = \"", $provider, "\"\n",
            $($key, "\n",)*
        )
    };
}

/// An `[[agents.functions]]` entry: name, action, connection and description (the rest follows).
macro_rules! function {
    ($name:literal, $action:literal, $connection:literal, $description:literal) => {
        concat!(
            "\n[[agents.functions]]\nname = \"",
            $name,
            "\"\naction = \"",
            $action,
            "\"\nconnection = \"",
            $connection,
            "\"\ndescription = \"",
            $description,
            "\"\n"
        )
    };
}

/// An `[[agents]]` entry of an org with its first function (see [`function!`]).
macro_rules! agent {
    ($id:literal, $org:literal, $($function:literal),+) => {
        concat!("\n[[agents]]\nid = \"", $id, "\"\norg = \"", $org, "\"\n", function!($($function),+))
    };
}

const GOOD: &str = concat!(
    r#"
[[orgs]]
id = "acme"
session_tokens = [{ env = "TOKEN" }]
"#,
    connection!(
        "acme-resend",
        "resend",
        r#"api_key = { env = "KEY" }"#,
        r#"from = "Acme <support@acme.test>""#,
    ),
    connection!(
        "acme-wati",
        "wati",
        r#"endpoint = "https://live-mt-server.wati.io/123456/""#,
        r#"token = { env = "WATI" }"#,
        r#"rate = "30/10s""#,
    ),
    agent!(
        "support-bot",
        "acme",
        "send_whatsapp_confirmation",
        "wati.send_template_message",
        "acme-wati",
        "Send the caller a WhatsApp confirmation."
    ),
    r#"consent = { scope = "whatsapp", within_turns = 3 }
recipient = { input = "whatsapp_number", policy = "caller" }
max_per_call = 1
timing = { filler_after_ms = 400 }

[agents.functions.inputs]
whatsapp_number = { from = "caller.number" }
template_name = { value = "order_confirmed" }
broadcast_name = { value = "call_{{call_id}}" }
parameters = { map = { order_id = { arg = "order_id", description = "The order number", required = true } } }
"#,
    function!(
        "send_email_summary",
        "resend.send_email",
        "acme-resend",
        "Email the caller a summary."
    ),
    r#"recipient = { input = "to", policy = "known" }

[agents.functions.inputs]
to = { arg = "email", from = "var.email" }
subject = { value = "Your call" }
text = { arg = "summary", required = true, max_length = 500 }
"#
);

fn problems(text: &str) -> Vec<String> {
    Config::from_toml(text, &opts())
        .expect_err("config should be refused")
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_good_config_loads_with_normalised_connections() {
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let ConnectionSettings::Wati { endpoint, token } = &c.connections[1].settings else {
        panic!()
    };
    assert_eq!(endpoint.as_str(), "https://live-mt-server.wati.io/123456");
    assert_eq!(
        token.expose(),
        "wati-token",
        "a pasted `Bearer ` prefix is removed"
    );
    assert_eq!(
        c.connections[1].rate,
        Some(Rate {
            count: 30,
            per: Duration::from_secs(10)
        })
    );
    let f = &c.agents[0].functions[0];
    assert_eq!(f.timing.filler_after, Duration::from_millis(400));
    assert_eq!(
        f.timing.defer_after,
        Duration::from_millis(2500),
        "defaults fill the rest"
    );
    assert_eq!(c.server.max_frame_bytes, 65536);
    assert_eq!(c.server.disconnect_grace, Duration::from_millis(5000));
}

#[test]
fn tools_expose_only_model_parameters_with_their_schema() {
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    let tools: serde_json::Value = serde_json::from_str(c.agents[0].tools().get()).unwrap();
    assert_eq!(
        tools[0],
        json!({
            "type": "function",
            "name": "send_whatsapp_confirmation",
            "description": "Send the caller a WhatsApp confirmation.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "The order number"}},
                "required": ["order_id"]
            }
        })
    );
    let email = &tools[1]["parameters"];
    assert_eq!(email["properties"]["email"]["format"], "email");
    assert_eq!(email["properties"]["summary"]["maxLength"], 500);
    assert_eq!(
        email["required"],
        json!(["summary"]),
        "email has a session fallback"
    );

    // A call without the fallback variable must ask the model for it.
    let ctx = CallContext::default();
    let per_call: serde_json::Value =
        serde_json::from_str(c.agents[0].tools_for(&ctx).get()).unwrap();
    assert_eq!(
        per_call[1]["parameters"]["required"],
        json!(["email", "summary"])
    );
}

#[test]
fn every_problem_is_reported_with_its_key_path_and_a_suggestion() {
    let broken = GOOD
        .replace("connection = \"acme-wati\"", "connection = \"acme-wat\"")
        .replace(
            "action = \"resend.send_email\"",
            "action = \"resend.send_emial\"",
        )
        .replace("max_per_call = 1", "max_per_cal = 1")
        .replace(
            "org = \"acme\"\n\n[[agents.functions]]",
            "org = \"acmee\"\n\n[[agents.functions]]",
        )
        .replace("provider = \"resend\"", "provider = \"resnd\"");
    let p = problems(&broken);
    assert_eq!(
        p,
        vec![
            "connections[0].provider: unknown provider \"resnd\" (did you mean \"resend\"?); known: resend, wati, webhook",
            "agents[0].org: no org \"acmee\" (did you mean \"acme\"?)",
            "agents[0].functions[0].max_per_cal: unknown key (did you mean \"max_per_call\"?)",
            "agents[0].functions[0].connection: no connection \"acme-wat\" (did you mean \"acme-wati\"?)",
            "agents[0].functions[1].action: no action \"resend.send_emial\" (did you mean \"resend.send_email\"?)",
        ],
    );
}

#[test]
fn input_bindings_are_checked_against_the_action_catalog() {
    let broken = GOOD
        .replace(
            "subject = { value = \"Your call\" }",
            "subjet = { value = \"Your call\" }",
        )
        .replace(
            "template_name = { value = \"order_confirmed\" }",
            "template_name = { value = \"order_confirmed\", arg = \"t\" }",
        )
        .replace(
            "whatsapp_number = { from = \"caller.number\" }",
            "whatsapp_number = { from = \"caller.phone\" }",
        );
    let p = problems(&broken);
    assert!(
        p.contains(&"agents[0].functions[0].inputs.template_name: give exactly one of: arg (optionally with from), from, value, map".to_string()),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.starts_with(
            "agents[0].functions[0].inputs.whatsapp_number.from: unknown session value \"caller.phone\""
        )),
        "{p:#?}"
    );
    assert!(
        p.contains(&"agents[0].functions[1].inputs.subjet: resend.send_email has no input \"subjet\" (did you mean \"subject\"?); its inputs are to, subject, text, html, reply_to, from".to_string()),
        "{p:#?}"
    );
    assert!(
        p.contains(&"agents[0].functions[1].inputs: resend.send_email needs the input \"subject\"; bind it with { arg = ... }, { from = ... } or { value = ... }".to_string()),
        "{p:#?}"
    );
}

#[test]
fn value_rules_and_templates_are_checked_at_load() {
    let broken = GOOD
        .replace(
            "text = { arg = \"summary\", required = true, max_length = 500 }",
            "text = { arg = \"summary\", enum = [\"a\"], type = \"string\" }\nreply_to = { value = \"not-an-email\" }\nhtml = { value = \"<p>{{var.x}\" }",
        )
        .replace(
            "to = { arg = \"email\", from = \"var.email\" }",
            "to = { arg = \"email\", type = \"string\" }",
        );
    let p = problems(&broken);
    for want in [
        "agents[0].functions[1].inputs.to.type: this input takes an email address; leave `type` out or set it to \"email\"",
        "agents[0].functions[1].inputs.text.enum: enum values need type \"enum\", not \"string\"",
        "agents[0].functions[1].inputs.reply_to.value: \"not-an-email\" is not an email address",
    ] {
        assert!(p.contains(&want.to_string()), "missing {want:?} in {p:#?}");
    }
    assert!(
        p.iter()
            .any(|l| l.starts_with("agents[0].functions[1].inputs.html.value: unclosed `{{`")),
        "{p:#?}"
    );
}

#[test]
fn cross_references_respect_orgs_and_providers() {
    let text = GOOD.to_owned()
        + concat!(
            r#"
[[orgs]]
id = "beta"
session_tokens = [{ env = "TOKEN2" }]
"#,
            agent!(
                "beta-bot",
                "beta",
                "steal",
                "wati.send_session_message",
                "acme-resend",
                "x"
            ),
            r#"recipient = { input = "whatsapp_number", policy = "any" }
[agents.functions.inputs]
whatsapp_number = { from = "caller.number" }
message_text = { value = "hi" }
"#
        );
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "agents[1].functions[0].connection: connection \"acme-resend\" belongs to org \"acme\", not to this agent's org \"beta\"",
            "agents[1].functions[0].connection: wati.send_session_message needs a wati connection; \"acme-resend\" is resend",
        ]
    );
}

#[test]
fn next_tables_take_only_the_codes_a_function_can_meet() {
    let p = problems(&GOOD.replace(
        "max_per_call = 1\n",
        "max_per_call = 1\nnext = { consent_requird = \"Ask first.\", overloaded = \"x\", deferred = \"Later.\" }\n",
    ));
    assert_eq!(
        p,
        vec![
            "agents[0].functions[0].next.consent_requird: not an error code (did you mean \"consent_required\"?)",
            "agents[0].functions[0].next.overloaded: not an error code",
        ]
    );
}

#[test]
fn secrets_come_from_env_and_files_and_literals_warn() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.txt"), "re_from_file\n").unwrap();
    let text = GOOD
        .replace(
            "api_key = { env = \"KEY\" }",
            "api_key = { file = \"key.txt\" }",
        )
        .replace(
            "session_tokens = [{ env = \"TOKEN\" }]",
            "session_tokens = [\"literal-token\"]",
        );
    let c = Config::from_toml(&text, &LoadOptions::new(dir.path()).with_env(env)).unwrap();
    let ConnectionSettings::Resend { api_key, .. } = &c.connections[0].settings else {
        panic!()
    };
    assert_eq!(api_key.expose(), "re_from_file");
    assert_eq!(c.orgs[0].session_tokens[0].expose(), "literal-token");
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].path, "orgs[0].session_tokens[0]");

    let p = problems(&GOOD.replace("{ env = \"KEY\" }", "{ env = \"NOPE\" }"));
    assert_eq!(
        p,
        vec!["connections[0].api_key.env: environment variable NOPE is not set"]
    );
    let p = problems(&GOOD.replace("{ env = \"KEY\" }", "{ file = \"/nonexistent/key\" }"));
    assert!(
        p[0].starts_with("connections[0].api_key.file: cannot read /nonexistent/key"),
        "{p:?}"
    );
    let c = Config::from_toml(
        &GOOD.replace("{ env = \"KEY\" }", "{ env = \"NOPE\" }"),
        &opts().without_secrets(),
    );
    assert!(c.is_ok(), "--skip-secrets checks the shape only");
}

#[test]
fn a_secret_file_that_is_no_credential_is_refused_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.log"), "x".repeat(200 * 1024)).unwrap();
    let text = GOOD.replace("{ env = \"KEY\" }", "{ file = \"big.log\" }");
    let e = Config::from_toml(&text, &LoadOptions::new(dir.path()).with_env(env)).unwrap_err();
    let p: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        p,
        vec![
            "connections[0].api_key.file: big.log is larger than 64 KiB: a secret file holds one credential"
        ]
    );
}

#[test]
fn secret_values_never_appear_in_problems_or_debug_output() {
    let text = GOOD.replace(
        "session_tokens = [{ env = \"TOKEN\" }]",
        "session_tokens = [{ env = \"TOKEN\" }, { env = \"TOKEN\" }]",
    );
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "orgs[0].session_tokens[1]: the same token is already a session token of org \"acme\""
        ]
    );
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    let debug = format!("{c:?}");
    for secret in ["tok-acme", "re_key", "wati-token"] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug");
    }
}

#[test]
fn webhook_secrets_must_be_standard_webhooks_secrets() {
    let text = GOOD.to_owned()
        + connection!(
            "hooks",
            "webhook",
            r#"url = "https://hooks.acme.test/toolgate""#,
            r#"secret = "not-a-secret""#,
        );
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "connections[2].secret: must be a Standard Webhooks secret: \"whsec_\" followed by base64"
        ]
    );
    let ok = text.replace("\"not-a-secret\"", "{ env = \"HOOK\" }");
    let c = Config::from_toml(&ok, &opts()).unwrap();
    let ConnectionSettings::Webhook { key, .. } = &c.connections[2].settings else {
        panic!()
    };
    assert_eq!(key.expose().len(), 24);
}

#[test]
fn timing_and_server_values_are_range_checked() {
    let p = problems(&GOOD.replace(
        "timing = { filler_after_ms = 400 }",
        "timing = { defer_after_ms = 9000, hard_timeout_ms = 3000, mode = \"liv\" }",
    ));
    assert_eq!(
        p,
        vec![
            "agents[0].functions[0].timing.mode: \"liv\" is not auto, live or workflow (did you mean \"live\"?)",
            "agents[0].functions[0].timing: defer_after_ms (9000) must not exceed hard_timeout_ms (3000)",
        ]
    );
    let p = problems(&format!(
        "[server]\nlisten = \"nowhere\"\nmax_frame_bytes = 10\n{GOOD}"
    ));
    assert_eq!(
        p,
        vec![
            "server.listen: \"nowhere\" is not an address like \"127.0.0.1:8787\"",
            "server.max_frame_bytes: 10 is out of range 1024..=16777216",
        ]
    );
}

#[test]
fn toml_syntax_errors_are_one_clear_problem() {
    let p = problems("[[orgs]\nid = 1");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("not valid TOML at line 1, column "),
        "{p:?}"
    );
    // A broken line holding a pasted secret is located, never quoted.
    let p = problems("[admin]\ntokens = [\"admin-secret-8c1f\"\n");
    assert!(p[0].contains("line 2") || p[0].contains("line 3"), "{p:?}");
    assert!(!p[0].contains("admin-secret-8c1f"), "{p:?}");
}

#[test]
fn rates_parse_in_several_spellings() {
    assert_eq!(
        parse::parse_rate("5/s").unwrap(),
        Rate {
            count: 5,
            per: Duration::from_secs(1)
        }
    );
    assert_eq!(
        parse::parse_rate("100/1m").unwrap().per,
        Duration::from_secs(60)
    );
    assert!(parse::parse_rate("0/10s").is_err());
    assert!(parse::parse_rate("30 per 10s").is_err());
}

#[test]
fn map_bindings_keep_order_and_types() {
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    let f = &c.agents[0].functions[0];
    let (name, b) = &f.inputs[3];
    assert_eq!(name, "parameters");
    let Source::Map(entries) = &b.source else {
        panic!()
    };
    assert_eq!(entries[0].0, "order_id");
    assert_eq!(entries[0].1.rule.ty, ValueType::String);
    assert!(entries[0].1.required);
    assert_eq!(f.params[0].name, "order_id");
}

#[test]
fn load_shedding_has_a_default_and_can_be_turned_off() {
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    assert_eq!(c.server.shed_after_delay, Some(Duration::from_millis(5)));
    let c = Config::from_toml(
        &format!("[server]\nshed_after_delay_ms = 0\n{GOOD}"),
        &opts(),
    )
    .unwrap();
    assert_eq!(c.server.shed_after_delay, None, "0: never shed");
    assert_eq!(
        problems(&format!("[server]\nshed_after_delay_ms = 60001\n{GOOD}")),
        vec!["server.shed_after_delay_ms: 60001 is out of range 0..=60000"]
    );
}

#[test]
fn workflow_settings_have_defaults_and_are_checked() {
    let c = Config::from_toml(GOOD, &opts()).unwrap();
    assert_eq!(c.workflow.max_attempts, 8);
    assert_eq!(c.workflow.backoff.base, Duration::from_secs(1));
    assert_eq!(c.workflow.backoff.cap, Duration::from_secs(300));
    assert_eq!(
        c.workflow.retry_window,
        Duration::ZERO,
        "inputs cleared as a job ends"
    );
    let c = Config::from_toml(
        &format!("[workflow]\nretry_window_ms = 86400000\n{GOOD}"),
        &opts(),
    )
    .unwrap();
    assert_eq!(c.workflow.retry_window, Duration::from_secs(86_400));
    assert_eq!(
        problems(&format!("[workflow]\nretry_window_ms = 2592000001\n{GOOD}")).len(),
        1,
        "at most 30 days"
    );
    let p = problems(&format!(
        "[workflow]\nbackoff_base_ms = 5000\nbackoff_cap_ms = 100\nmax_attempt = 3\n{GOOD}"
    ));
    assert_eq!(
        p,
        vec![
            "workflow.max_attempt: unknown key (did you mean \"max_attempts\"?)",
            "workflow.backoff_cap_ms: 100 is below backoff_base_ms (5000)",
        ]
    );
}

#[test]
fn a_malformed_connection_is_reported_once() {
    let p =
        problems(&format!("connections = [\"x\"]\n{GOOD}").replace("[[connections]]", "[[conns]]"));
    let n = p
        .iter()
        .filter(|l| l.starts_with("connections[0]:"))
        .count();
    assert_eq!(n, 1, "{p:#?}");
}

fn with_storage(storage: &str) -> String {
    format!("[storage]\n{storage}\n{GOOD}")
}

#[test]
fn the_nats_backend_is_configured_with_defaults() {
    let c = Config::from_toml(
        &with_storage("backend = \"nats\"\nnats_url = \"nats://10.0.0.5:4222\""),
        &opts(),
    )
    .unwrap();
    assert_eq!(c.storage.backend, "nats");
    assert_eq!(
        c.storage.nats,
        Some(NatsSettings {
            urls: vec!["nats://10.0.0.5:4222".into()],
            stream_prefix: "TOOLGATE".into(),
            replicas: 1,
            auth: NatsAuth::None,
            fallback_sqlite: false,
        })
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let sqlite = Config::from_toml(GOOD, &opts()).unwrap();
    assert_eq!(
        (sqlite.storage.backend.as_str(), &sqlite.storage.nats),
        ("sqlite", &None)
    );
}

#[test]
fn the_nats_backend_takes_a_server_list_credentials_and_a_fallback() {
    let c = Config::from_toml(
        &with_storage(
            "backend = \"nats\"\nnats_url = [\"nats://a:4222\", \"tls://b.example:4222\", \"c:4222\"]\n\
             stream_prefix = \"ACME_TG\"\nreplicas = 3\ntoken = { env = \"TOKEN\" }\nfallback = \"sqlite\"",
        ),
        &opts(),
    )
    .unwrap();
    let n = c.storage.nats.unwrap();
    assert_eq!(n.urls.len(), 3);
    assert_eq!((n.stream_prefix.as_str(), n.replicas), ("ACME_TG", 3));
    assert_eq!(n.auth, NatsAuth::Token(Secret::new("tok-acme")));
    assert!(n.fallback_sqlite);
    assert!(
        !format!("{:?}", n.auth).contains("tok-acme"),
        "the token never prints"
    );

    let c = Config::from_toml(
        &with_storage(
            "backend = \"nats\"\nnats_url = \"nats://a:4222\"\nuser = \"toolgate\"\npassword = { env = \"TOKEN2\" }",
        ),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        c.storage.nats.unwrap().auth,
        NatsAuth::UserPassword {
            user: "toolgate".into(),
            password: Secret::new("tok-beta")
        }
    );
}

#[test]
fn nats_settings_problems_are_reported_with_their_key_paths() {
    let p = problems(&with_storage("backend = \"nats\""));
    assert_eq!(
        p,
        vec![
            "storage.nats_url: is required with backend = \"nats\" (e.g. \"nats://127.0.0.1:4222\")"
        ]
    );
    let p = problems(&with_storage(
        "backend = \"nats\"\nnats_url = [\"nats://ok:4222\", \"http://web:80\", 7, \"nats://user:hunter2@x:4222\"]\n\
         stream_prefix = \"TOOL.GATE\"\nreplicas = 9\nfallback = \"postgres\"\ntoken = { env = \"NOPE\" }\nusr = \"x\"",
    ));
    assert_eq!(
        p,
        vec![
            "storage.usr: unknown key (did you mean \"user\"?)",
            "storage.nats_url[2]: expected a string, got an integer",
            "storage.nats_url[1]: \"http\": the scheme must be nats:// or tls://",
            "storage.nats_url[3]: credentials in the URL would show in logs and errors; give them as `token = { env = \"...\" }` or `user` with `password = { env = \"...\" }`",
            "storage.stream_prefix: \"TOOL.GATE\": use 1..32 letters, digits, `_` or `-` (it names streams, buckets and subjects)",
            "storage.replicas: 9 is out of range 1..=5",
            "storage.fallback: \"postgres\" is not a fallback; the only one is \"sqlite\"",
            "storage.token.env: environment variable NOPE is not set",
        ]
    );
    assert!(
        !p.iter().any(|l| l.contains("hunter2")),
        "a password in a URL is never echoed"
    );
    let p = problems(&with_storage(
        "backend = \"nats\"\nnats_url = \"nats://a:4222\"\nuser = \"toolgate\"",
    ));
    assert_eq!(p, vec!["storage.password: is required with storage.user"]);
    let p = problems(&with_storage(
        "backend = \"nats\"\nnats_url = \"nats://a:4222\"\ntoken = { env = \"TOKEN\" }\nuser = \"u\"\npassword = { env = \"TOKEN2\" }",
    ));
    assert_eq!(
        p,
        vec!["storage.token: give either `token` or `user` with `password`, not both"]
    );
    let p = problems(&with_storage("backend = \"natz\""));
    assert_eq!(
        p,
        vec!["storage.backend: \"natz\" is not a storage backend (did you mean \"nats\"?)"]
    );
}

#[test]
fn nats_keys_with_the_sqlite_backend_are_a_warning() {
    let c = Config::from_toml(&with_storage("nats_url = \"nats://a:4222\""), &opts()).unwrap();
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        vec!["storage.nats_url: ignored: storage.backend is \"sqlite\""]
    );
}
