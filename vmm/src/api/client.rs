//! The client side of the control API, for `writewatch ctl` and tests: one
//! request per connection (`Connection: close`), the response parsed with
//! httparse.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The largest response read (a full write-watch list of a big guest is
/// tens of MiB).
const MAX_RESPONSE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is `writewatch run --api-sock {path}` running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the API: {0}")]
    Io(#[from] std::io::Error),
    #[error("the API's response is not HTTP: {0}")]
    Http(String),
    #[error("the API's response body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A response: its status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// Sends one request to the API at `socket`.
pub fn call(
    socket: &Path,
    method: &str,
    url: &str,
    body: Option<&Value>,
    timeout: Option<Duration>,
) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {url} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response with a JSON body.
pub fn parse_response(raw: &[u8]) -> Result<Reply, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ClientError::Http("it ended early".into())),
        Err(e) => return Err(ClientError::Http(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| ClientError::Http("no status".into()))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let dechunked;
    let mut body = &raw[head..];
    if chunked {
        dechunked = dechunk(body)?;
        body = &dechunked;
    } else if let Some(length) = length {
        if body.len() < length {
            return Err(ClientError::Http(format!(
                "the body is {} bytes, Content-Length says {length}",
                body.len()
            )));
        }
        body = &body[..length];
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)?
    };
    Ok(Reply { status, body })
}

/// The body of a `Transfer-Encoding: chunked` message.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        let (header, size) = match httparse::parse_chunk_size(raw) {
            Ok(httparse::Status::Complete(c)) => c,
            _ => return Err(ClientError::Http("a broken chunk".into())),
        };
        let size = usize::try_from(size).map_err(|_| ClientError::Http("a huge chunk".into()))?;
        raw = &raw[header..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size + 2 {
            return Err(ClientError::Http("it ended inside a chunk".into()));
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_and_refuses_broken_ones() {
        let ok =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n").unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body["a"], 1);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n: 2\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body["a"], 2);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}")
                .is_err()
        );
    }
}
