//! Where a migration stream goes: `tcp:HOST:PORT` or `unix:PATH`, as
//! QEMU and Cloud Hypervisor spell them. The source connects, the
//! destination listens and takes one connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(hostport) => write!(f, "tcp:{hostport}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(hostport) = text.strip_prefix("tcp:") {
            let port_ok = hostport
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("'{text}': expected tcp:HOST:PORT"));
            }
            return Ok(Address::Tcp(hostport.to_string()));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("'{text}': expected unix:PATH"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "'{text}' is not a migration address: use tcp:HOST:PORT or unix:PATH"
        ))
    }
}

/// One end of a migration connection.
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    /// A second handle on the same connection (one reads, one writes).
    pub fn try_clone(&self) -> io::Result<Connection> {
        Ok(match self {
            Connection::Tcp(s) => Connection::Tcp(s.try_clone()?),
            Connection::Unix(s) => Connection::Unix(s.try_clone()?),
        })
    }

    /// Reads that wait longer than `timeout` fail (a peer that went quiet).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_read_timeout(timeout),
            Connection::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_nonblocking(on),
            Connection::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Connection::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Connection::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.read(buf),
            Connection::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.write(buf),
            Connection::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.flush(),
            Connection::Unix(s) => s.flush(),
        }
    }
}

/// Connects to a destination waiting at `address`.
pub fn connect(address: &Address, timeout: Duration) -> io::Result<Connection> {
    match address {
        Address::Tcp(hostport) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
            for addr in hostport.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(Connection::Tcp(stream));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Address::Unix(path) => UnixStream::connect(path).map(Connection::Unix),
    }
}

/// A destination's listening socket, bound before the VMM waits, so a bad
/// address fails at once. A Unix socket's path is removed on drop.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(address: &Address) -> io::Result<Listener> {
        match address {
            Address::Tcp(hostport) => TcpListener::bind(hostport.as_str()).map(Listener::Tcp),
            Address::Unix(path) => {
                if path.symlink_metadata().is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the path already exists (remove it, or choose another)",
                    ));
                }
                UnixListener::bind(path).map(|l| Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The address bound (with the port the system chose for `tcp:H:0`).
    pub fn local(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l, _) => l.set_nonblocking(on),
        }
    }

    /// Waits for the one connection a destination takes.
    pub fn accept(&self) -> io::Result<Connection> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nodelay(true)?;
                Ok(Connection::Tcp(stream))
            }
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Connection::Unix(s)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_qemu_spells_them() {
        assert_eq!(
            "tcp:127.0.0.1:4444".parse(),
            Ok(Address::Tcp("127.0.0.1:4444".into()))
        );
        assert_eq!(
            "unix:/tmp/m.sock".parse(),
            Ok(Address::Unix("/tmp/m.sock".into()))
        );
        for bad in [
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "unix:",
            "/tmp/x",
            "udp:h:1",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        assert_eq!(Address::Tcp("h:1".into()).to_string(), "tcp:h:1");
    }
}
