//! A small real SMTP server on loopback (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT), keeping every accepted message. It can be told to refuse messages temporarily
//! (451) or permanently (550).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

pub struct SmtpServer {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    /// 0 accept, 1 temporary failure (451), 2 permanent failure (550).
    pub mode: Arc<AtomicU8>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(AtomicU8::new(0));
        let (m2, mode2) = (mails.clone(), mode.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let (mails, mode) = (m2.clone(), mode2.clone());
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 test-smtp ESMTP ready\r\n").await;
                    let mut from = String::new();
                    let mut to = Vec::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_string();
                        let up = cmd.to_uppercase();
                        let reply: &[u8] = if up.starts_with("EHLO") {
                            b"250-test-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                        } else if up.starts_with("HELO") || up.starts_with("NOOP") {
                            b"250 ok\r\n"
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
                            let _ = w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
                            let mut data = String::new();
                            loop {
                                line.clear();
                                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" || line == ".\n" {
                                    break;
                                }
                                let l = line.strip_prefix('.').unwrap_or(&line);
                                data.push_str(l);
                            }
                            match mode.load(Ordering::SeqCst) {
                                1 => b"451 4.3.0 try again later\r\n",
                                2 => b"550 5.1.1 mailbox unavailable\r\n",
                                _ => {
                                    mails.lock().unwrap().push(Mail {
                                        from: from.clone(),
                                        to: to.clone(),
                                        data,
                                    });
                                    b"250 2.0.0 queued\r\n"
                                }
                            }
                        } else if up.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"502 command not implemented\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SmtpServer { port, mails, mode }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
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
