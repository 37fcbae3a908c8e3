//! Third-party peers run as they are, outside the test: Python's aiosmtpd as a real SMTP server
//! process (a maildir behind it, read back with Python's own MIME parser), and the official
//! `twilio` library's `RequestValidator` signing inbound webhooks. Missing Python packages make
//! a test skip locally and fail under `CI=true` (`support::ci::python_can_import`; `.ci/run`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::net::{free_port, listening_within};

/// `python3 -m aiosmtpd` delivering into a maildir; killed on drop.
pub struct AioSmtpd {
    pub port: u16,
    pub maildir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AioSmtpd {
    pub fn start() -> AioSmtpd {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("maildir");
        // aiosmtpd cannot report a port-0 binding.
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd");
        assert!(
            listening_within(port, Duration::from_secs(20)),
            "aiosmtpd did not start"
        );
        AioSmtpd {
            port,
            maildir,
            child,
            _dir: dir,
        }
    }

    /// Every message in the maildir, parsed by Python's `email` package.
    pub fn messages(&self) -> Vec<ParsedMail> {
        parse_maildir(&self.maildir)
    }
}

impl Drop for AioSmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ParsedMail {
    pub to: String,
    /// The address part of `Reply-To`.
    pub reply_to: String,
    pub subject: String,
    pub message_id: String,
    pub content_types: Vec<String>,
    pub text: String,
    pub html: String,
}

const PARSE: &str = r#"
import email, email.policy, json, mailbox, sys
out = []
for key, msg in sorted(mailbox.Maildir(sys.argv[1], create=False).items(), key=lambda kv: kv[1]["Date"] or ""):
    m = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    text = m.get_body(preferencelist=("plain",))
    html = m.get_body(preferencelist=("html",))
    out.append({
        "to": str(m["To"] or ""),
        "reply_to": m["Reply-To"].addresses[0].addr_spec if m["Reply-To"] else "",
        "subject": str(m["Subject"] or ""),
        "message_id": str(m["Message-ID"] or ""),
        "content_types": [p.get_content_type() for p in m.walk()],
        "text": text.get_content() if text else "",
        "html": html.get_content() if html else "",
    })
print(json.dumps(out))
"#;

pub fn parse_maildir(dir: &Path) -> Vec<ParsedMail> {
    if !dir.join("new").exists() {
        return vec![];
    }
    let dir = dir.to_str().expect("a temp dir's path is UTF-8");
    serde_json::from_str(&python(PARSE, &[dir])).unwrap()
}

/// Runs `script` with `python3 -c` and `args`; its standard output, trimmed (a failure of the
/// script fails the test with its standard error).
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `X-Twilio-Signature` as the official library computes it by default (`HMAC_SHA1` with the
/// Auth Token).
pub fn twilio_library_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    twilio_library_signature_with(token, url, params, "HMAC_SHA1")
}

/// `X-Twilio-Signature` as the official library computes it, in the scheme named
/// (`HMAC_SHA1` with the Auth Token, `HMAC_SHA256` with a Webhooks Rule's SharedKey).
pub fn twilio_library_signature_with(
    key: &str,
    url: &str,
    params: &[(&str, &str)],
    algorithm: &str,
) -> String {
    const SIGN: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
key, url, params, alg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
print(RequestValidator(key).compute_signature(url, dict(params), alg))
"#;
    let params = serde_json::to_string(params).unwrap();
    python(SIGN, &[key, url, &params, algorithm])
}

/// The official library's SHA-256 of a JSON body (the `bodySHA256` URL parameter).
pub fn twilio_library_body_hash(body: &str) -> String {
    const HASH: &str = r#"
import sys
from twilio.request_validator import RequestValidator
print(RequestValidator("unused").compute_hash(sys.argv[1]))
"#;
    python(HASH, &[body])
}
