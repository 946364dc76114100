//! Gateway addresses that cannot be reached, on loopback: one that refuses connections, and
//! one that drops connection requests as a host that is down does. The clients' failover
//! tests and `shadowlun bench failover` put them before a live gateway.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A URL where nothing listens (a port bound, then closed): a connection is refused at once.
pub fn refused_url() -> std::io::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(format!("https://{addr}"))
}

/// An address that drops connection requests: a listener with no backlog whose one queued
/// connection is held, so the kernel drops every further SYN and a client waits out its
/// connect timeout. Lives as long as this value.
pub struct BlackHole {
    pub url: String,
    pub addr: SocketAddr,
    _listener: TcpListener,
    _held: TcpStream,
}

/// A [`BlackHole`], checked: a connection attempt of 200 ms times out.
pub fn black_hole() -> std::io::Result<BlackHole> {
    use rustix::net::{AddressFamily, SocketType, bind, listen, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0)))?;
    listen(&fd, 0)?;
    let listener = TcpListener::from(fd);
    let addr = listener.local_addr()?;
    let held = TcpStream::connect(addr)?;
    match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => {
            return Err(std::io::Error::other(format!(
                "a full listener on {addr} should drop connection requests: {other:?}"
            )));
        }
    }
    Ok(BlackHole {
        url: format!("https://{addr}"),
        addr,
        _listener: listener,
        _held: held,
    })
}
