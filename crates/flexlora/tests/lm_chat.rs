//! Chat templates against transformers' `apply_chat_template` (python/golden/chat_template.py)
//! on SmolLM2-135M-Instruct's own template and on a template that uses what transformers'
//! Jinja environment adds (trimmed blocks, Python string methods, `tojson`, loop controls,
//! `raise_exception`); `generate --chat` against transformers' greedy generation; bad input.

mod common;

use common::{repo_root, run_flexlora, smollm2};
use flexlora::lm::{ChatMessage, ChatTemplate, LmTokenizer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Renders `conversations` (messages, add_generation_prompt) with transformers; `generate`
/// (messages, max_new_tokens) also asks for its greedy continuation. The messages are written
/// with `serde_json::to_string`, which keeps their `role`, `content` order (a
/// `serde_json::Value` would sort the keys, and `tojson` shows the order).
fn transformers_chat(
    folder: &Path,
    conversations: &[(Vec<ChatMessage>, bool)],
    generate: Option<(&[ChatMessage], usize)>,
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let convs: Vec<String> = conversations
        .iter()
        .map(|(m, g)| {
            format!(
                "{{\"messages\": {}, \"add_generation_prompt\": {g}}}",
                serde_json::to_string(m).unwrap()
            )
        })
        .collect();
    let generate = generate.map_or(String::new(), |(m, n)| {
        format!(
            ", \"generate\": {{\"messages\": {}, \"max_new_tokens\": {n}}}",
            serde_json::to_string(m).unwrap()
        )
    });
    let spec = format!(
        "{{\"folder\": {}, \"conversations\": [{}]{generate}}}",
        json!(folder),
        convs.join(", ")
    );
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&inp, spec).unwrap();
    let status = std::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("python/golden/chat_template.py"))
        .arg(&inp)
        .arg(&out)
        .status()
        .expect("run the venv's python (scripts/setup)");
    assert!(status.success(), "python/golden/chat_template.py failed");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn m(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// Conversations covering the cases a template branches on.
fn conversations() -> Vec<(Vec<ChatMessage>, bool)> {
    vec![
        (vec![m("user", "What is the capital of France?")], true),
        (
            vec![
                m("system", "You answer in one word."),
                m("user", "Name a primary colour."),
            ],
            true,
        ),
        (
            vec![
                m("system", "  Be brief.  "),
                m("user", "Hi!"),
                m("assistant", "Hello. How can I help?"),
                m(
                    "user",
                    "Write {{ not a template }} and {% raw %} verbatim.\nTwo lines, é, 日本.",
                ),
            ],
            true,
        ),
        (vec![m("user", "Say yes."), m("assistant", "Yes.")], false),
    ]
}

/// Our rendering and token ids of every conversation equal transformers'.
fn assert_same_as_transformers(folder: &Path, template: &ChatTemplate, tokenizer: &LmTokenizer) {
    let convs = conversations();
    let golden = transformers_chat(folder, &convs, None);
    for (i, (messages, with_prompt)) in convs.iter().enumerate() {
        let ours = template.render(messages, *with_prompt).unwrap();
        assert_eq!(
            ours,
            golden["texts"][i].as_str().unwrap(),
            "conversation {i}: text"
        );
        let ids = tokenizer.encode(&ours, false).unwrap();
        let expected: Vec<i64> = serde_json::from_value(golden["ids"][i].clone()).unwrap();
        assert_eq!(ids, expected, "conversation {i}: token ids");
    }
}

/// A copy of the SmolLM2 folder's tokenizer files (the weights linked, not copied) with
/// `tokenizer_config.json` edited by `edit`.
fn folder_with_config(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> PathBuf {
    let src = smollm2();
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "tokenizer_config.json" || name == "chat_template.jinja" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), folder.join(&name))
            .unwrap();
    }
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    if let Ok(t) = std::fs::read_to_string(src.join("chat_template.jinja")) {
        config.insert("chat_template".into(), Value::String(t));
    }
    edit(&mut config);
    std::fs::write(
        folder.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    folder
}

#[test]
fn smollm2_template_renders_as_transformers() {
    let folder = smollm2();
    let template = ChatTemplate::from_folder(&folder).unwrap();
    let tokenizer = LmTokenizer::from_folder(&folder).unwrap();
    assert_same_as_transformers(&folder, &template, &tokenizer);
}

/// Whitespace control, Python methods, `tojson` with and without indent, `{% break %}`,
/// `bos_token`/`eos_token` and a named-template list: what Jinja2 in transformers does.
#[test]
fn jinja_features_render_as_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let source = r#"{{ bos_token }}{% for message in messages %}
    {% if message['role'] == 'system' %}
[SYS] {{ message['content'].strip() | upper }}
    {% else %}
<{{ message.role.title() }}> {{ message['content'] }}{{ eos_token }}
    {% endif %}
    {% if loop.index > 3 %}{% break %}{% endif %}
{% endfor %}
{{ messages[:2] | tojson }}
{{ messages[-1] | tojson(indent=2) }}
{% if add_generation_prompt %}<Assistant>{% endif %}"#;
    let folder = folder_with_config(dir.path(), |c| {
        c.insert(
            "chat_template".into(),
            json!([{"name": "default", "template": source}, {"name": "other", "template": "x"}]),
        );
    });
    let template = ChatTemplate::from_folder(&folder).unwrap();
    let tokenizer = LmTokenizer::from_folder(&folder).unwrap();
    assert_same_as_transformers(&folder, &template, &tokenizer);
}

/// `flexlora generate --chat` prints what transformers' greedy `generate` decodes from the
/// same chat prompt, and `--verbose-prompt` shows transformers' token ids.
#[test]
fn generate_chat_matches_transformers() {
    let folder = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let messages = vec![
        m("system", "You are a concise assistant."),
        m("user", "Hi!"),
        m("assistant", "Hello! How can I help you today?"),
    ];
    let conv = dir.path().join("conversation.jsonl");
    let lines: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    std::fs::write(&conv, lines.join("\n") + "\n").unwrap();
    let question = "What is the capital of France?";
    let mut full = messages.clone();
    full.push(m("user", question));

    let golden = transformers_chat(&folder, &[(full.clone(), true)], Some((&full, 24)));
    let out = run_flexlora(&[
        "generate".into(),
        "--model".into(),
        folder.display().to_string(),
        "--messages".into(),
        conv.display().to_string(),
        "--prompt".into(),
        question.into(),
        "--max-new-tokens".into(),
        "24".into(),
        "--verbose-prompt".into(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate --chat failed: {stderr}");
    let expected_ids: Vec<i64> = serde_json::from_value(golden["ids"][0].clone()).unwrap();
    assert!(
        stderr.contains(&format!("token ids: {expected_ids:?}")),
        "--verbose-prompt shows other ids than transformers' {expected_ids:?}: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim_end_matches('\n'),
        golden["generated"].as_str().unwrap(),
        "generated text"
    );
}

#[test]
fn chat_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // A template that raises: the message reaches the user, nothing is printed on stdout.
    let raising = folder_with_config(&dir.path().join("raising"), |c| {
        c.insert(
            "chat_template".into(),
            json!("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}{{ messages[0]['content'] }}"),
        );
    });
    let out = run_flexlora(&[
        "generate".into(),
        "--model".into(),
        raising.display().to_string(),
        "--chat".into(),
        "--system".into(),
        "be nice".into(),
        "--prompt".into(),
        "hi".into(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(
        err.contains("Conversations must start with a user message")
            && err.contains("tokenizer_config.json"),
        "{err}"
    );
    // A template with a syntax error.
    let broken = ChatTemplate::new("{% for m in messages %}{{ m.content }}", Default::default());
    let e = broken
        .render(&[m("user", "x")], true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chat template") && e.contains("syntax error"),
        "{e}"
    );
    // No template at all.
    let bare = folder_with_config(&dir.path().join("bare"), |c| {
        c.remove("chat_template");
    });
    let e = ChatTemplate::from_folder(&bare).unwrap_err().to_string();
    assert!(
        e.contains("has no chat template") && e.contains("--prompt"),
        "{e}"
    );
    // A conversation line that is not a message names the file and the line.
    let conv = dir.path().join("bad.jsonl");
    std::fs::write(
        &conv,
        "{\"role\": \"user\", \"content\": \"hi\"}\n{\"role\": \"user\"}\n",
    )
    .unwrap();
    let out = run_flexlora(&[
        "generate".into(),
        "--model".into(),
        smollm2().display().to_string(),
        "--messages".into(),
        conv.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.jsonl line 2") && err.contains("content"),
        "{err}"
    );
}
