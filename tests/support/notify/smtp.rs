//! A small real SMTP server on loopback (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT), keeping every accepted message. It can be told to refuse messages temporarily
//! (451) or permanently (550).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// Whether the message travelled over TLS.
    pub tls: bool,
}

/// How the server speaks TLS.
#[derive(Clone)]
pub enum TlsMode {
    Plain,
    /// Offers STARTTLS and refuses mail before it.
    Starttls(Arc<rustls::ServerConfig>),
    /// TLS from the first byte (port 465 style).
    Implicit(Arc<rustls::ServerConfig>),
}

pub struct SmtpServer {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    /// 0 accept, 1 temporary failure (451), 2 permanent failure (550).
    pub mode: Arc<AtomicU8>,
}

#[derive(Clone)]
struct Shared {
    mails: Arc<Mutex<Vec<Mail>>>,
    mode: Arc<AtomicU8>,
}

/// A self-signed certificate for "localhost": (CA PEM for the client, server config).
pub fn localhost_tls() -> (String, Arc<rustls::ServerConfig>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    (ck.cert.pem(), Arc::new(cfg))
}

enum End {
    Closed,
    StartTls,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_with(TlsMode::Plain).await
    }

    pub async fn start_with(tls: TlsMode) -> SmtpServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let sh = Shared {
            mails: Arc::new(Mutex::new(Vec::new())),
            mode: Arc::new(AtomicU8::new(0)),
        };
        let out = SmtpServer {
            port,
            mails: sh.mails.clone(),
            mode: sh.mode.clone(),
        };
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let (sh, tls) = (sh.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        TlsMode::Plain => {
                            session(sock, &sh, true, false, false).await;
                        }
                        TlsMode::Implicit(cfg) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await
                            else {
                                return;
                            };
                            session(s, &sh, true, false, true).await;
                        }
                        TlsMode::Starttls(cfg) => {
                            let mut r = BufReader::new(sock);
                            if let End::StartTls = session_ref(&mut r, &sh, true, true, false).await
                            {
                                let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg)
                                    .accept(r.into_inner())
                                    .await
                                else {
                                    return;
                                };
                                session(s, &sh, false, false, true).await;
                            }
                        }
                    }
                });
            }
        });
        out
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    sh: &Shared,
    greet: bool,
    offer_tls: bool,
    tls: bool,
) -> End {
    let mut r = BufReader::new(s);
    session_ref(&mut r, sh, greet, offer_tls, tls).await
}

async fn session_ref<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    sh: &Shared,
    greet: bool,
    offer_tls: bool,
    tls: bool,
) -> End {
    if greet && r.write_all(b"220 test-smtp ESMTP ready\r\n").await.is_err() {
        return End::Closed;
    }
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return End::Closed;
        }
        let cmd = line.trim_end().to_string();
        let up = cmd.to_uppercase();
        let reply: &[u8] = if up.starts_with("EHLO") {
            if offer_tls {
                b"250-test-smtp\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n"
            } else {
                b"250-test-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
            }
        } else if up == "STARTTLS" && offer_tls {
            let _ = r.write_all(b"220 2.0.0 ready to start TLS\r\n").await;
            let _ = r.flush().await;
            return End::StartTls;
        } else if up.starts_with("HELO") || up.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if up.starts_with("MAIL FROM:") && offer_tls {
            b"530 5.7.0 must issue STARTTLS first\r\n"
        } else if up.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().to_string();
            to.clear();
            b"250 ok\r\n"
        } else if up.starts_with("RCPT TO:") {
            to.push(cmd[8..].trim().trim_matches(['<', '>']).to_string());
            b"250 ok\r\n"
        } else if up.starts_with("RSET") {
            to.clear();
            b"250 ok\r\n"
        } else if up == "DATA" {
            let _ = r.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return End::Closed;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(l);
            }
            match sh.mode.load(Ordering::SeqCst) {
                1 => b"451 4.3.0 try again later\r\n",
                2 => b"550 5.1.1 mailbox unavailable\r\n",
                _ => {
                    sh.mails.lock().unwrap().push(Mail {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                        tls,
                    });
                    b"250 2.0.0 queued\r\n"
                }
            }
        } else if up.starts_with("QUIT") {
            let _ = r.write_all(b"221 bye\r\n").await;
            let _ = r.flush().await;
            return End::Closed;
        } else {
            b"502 command not implemented\r\n"
        };
        if r.write_all(reply).await.is_err() || r.flush().await.is_err() {
            return End::Closed;
        }
    }
}

/// The decoded text of every MIME part (base64 and quoted-printable understood), with its
/// content type: enough to read what a customer would see.
pub fn parts(data: &str) -> Vec<(String, String)> {
    use base64::Engine;
    let boundary = data.split("boundary=").nth(1).map(|b| {
        b.trim_start_matches('"')
            .split(['"', '\r', '\n', ';'])
            .next()
            .unwrap()
            .to_string()
    });
    let Some(b) = boundary else {
        return vec![];
    };
    let mut out = vec![];
    for part in data.split(&format!("--{b}")).skip(1) {
        let Some((head, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let head_l = head.to_lowercase();
        let ctype = head_l
            .lines()
            .find(|l| l.starts_with("content-type:"))
            .unwrap_or("")
            .to_string();
        let text = if head_l.contains("content-transfer-encoding: base64") {
            let joined: String = body.split_whitespace().collect();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(joined)
                    .unwrap(),
            )
            .unwrap()
        } else if head_l.contains("quoted-printable") {
            qp(body)
        } else {
            body.to_string()
        };
        out.push((ctype, text));
    }
    out
}

fn qp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
