//! Loopback ports for peers that cannot report a port-0 binding of their own.

use std::time::{Duration, Instant};

/// A port free a moment ago: bound, read and released. A peer started on it may still lose a
/// race with another process; the tests accept that for peers that cannot bind port 0.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// `n` distinct free loopback ports: each is held until all are bound, so two of them cannot be
/// the same port handed out twice (as two calls of [`free_port`] in a row can be).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    std::array::from_fn(|i| {
        held[i]
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    })
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Whether something accepts connections on `127.0.0.1:port` within `limit` (a process that
/// was just started).
pub fn listening_within(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
