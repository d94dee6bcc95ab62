//! The control API: HTTP/1.1 with JSON bodies on a Unix socket, in the style
//! of Firecracker's API socket (docs/api.yaml is the contract). Three
//! places, as there: the transport (tiny_http, here), the parsing of a
//! request into an `ApiAction` (`request.rs`), and carrying the action out on
//! the VM (`actions.rs`). A client can send anything: the worst it gets is a
//! 4xx with a JSON error, and the guest keeps running.

pub mod actions;
pub mod client;
pub mod request;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use serde_json::json;
use tiny_http::{Header, Response, Server};

use crate::migration::Migrations;
use crate::runner::VmHandle;
use request::{MAX_BODY, RequestError};

/// Requests served at once; more get 503 (a client cannot pile up threads).
const MAX_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--api-sock {0}: the path already exists (remove it, or choose another)")]
    Exists(String),
    #[error("--api-sock {path}: cannot create the socket: {why}")]
    Bind { path: String, why: String },
}

/// The socket, bound before the VM boots so a bad path fails first.
pub struct ApiServer {
    server: Arc<Server>,
    path: PathBuf,
}

impl ApiServer {
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let shown = path.display().to_string();
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::Exists(shown));
        }
        let server = Server::http_unix(path).map_err(|e| ApiError::Bind {
            path: shown,
            why: e.to_string(),
        })?;
        Ok(ApiServer {
            server: Arc::new(server),
            path: path.to_path_buf(),
        })
    }

    /// Serves requests for `vm` until the returned guard is dropped, which
    /// also removes the socket.
    pub fn serve(self, vm: VmHandle) -> Serving {
        let server = self.server.clone();
        let migrations = Arc::new(Migrations::default());
        let shared = migrations.clone();
        let thread = thread::Builder::new()
            .name("api".into())
            .spawn(move || accept_loop(&server, &vm, &shared))
            .ok();
        Serving {
            api: self,
            thread,
            migrations,
        }
    }
}

/// A serving API; dropping it stops the server and removes the socket.
pub struct Serving {
    api: ApiServer,
    thread: Option<JoinHandle<()>>,
    migrations: Arc<Migrations>,
}

impl Serving {
    /// The last migration this API started, as it ended (for the report).
    pub fn migration(&self) -> Option<crate::migration::status::Status> {
        self.migrations.tracker.get()
    }

    /// After a migration: serves on until a client has read how it ended
    /// (`writewatch migrate` polls for it), for at most `limit`.
    pub fn linger_for_outcome(&self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        while !self.migrations.tracker.outcome_read() && std::time::Instant::now() < until {
            thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.api.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(server: &Server, vm: &VmHandle, migrations: &Arc<Migrations>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            respond(
                request,
                Err(RequestError::new(503, "too many requests at once")),
            );
            continue;
        }
        let (vm, counter, migrations) = (vm.clone(), in_flight.clone(), migrations.clone());
        let spawned = thread::Builder::new()
            .name("api-request".into())
            .spawn(move || {
                handle(request, &vm, &migrations);
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn handle(mut request: tiny_http::Request, vm: &VmHandle, migrations: &Arc<Migrations>) {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        let why = format!("request body over {MAX_BODY} bytes");
        return respond(request, Err(RequestError::new(413, why)));
    }
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body);
    let result = match read {
        Err(e) => Err(RequestError::new(
            400,
            format!("cannot read the request body: {e}"),
        )),
        Ok(_) if body.len() > MAX_BODY => Err(RequestError::new(
            413,
            format!("request body over {MAX_BODY} bytes"),
        )),
        Ok(_) => request::parse(request.method().as_str(), request.url(), &body)
            .and_then(|action| actions::execute(action, vm, migrations)),
    };
    respond(request, result);
}

fn respond(request: tiny_http::Request, result: Result<serde_json::Value, RequestError>) {
    let (status, body) = match result {
        Ok(value) => (200, value),
        Err(e) => (e.status, json!({"error": e.message})),
    };
    let mut text = body.to_string();
    text.push('\n');
    let content_type =
        Header::from_bytes("Content-Type", "application/json").expect("static header");
    // Bodies are complete in memory: always send a Content-Length, never
    // chunks (tiny_http chunks large bodies by default).
    let mut response = Response::from_string(text)
        .with_status_code(status)
        .with_header(content_type)
        .with_chunked_threshold(usize::MAX);
    if status == 413 {
        // The rest of an oversized body is not read: end the connection.
        response =
            response.with_header(Header::from_bytes("Connection", "close").expect("static header"));
    }
    // A client that went away gets nothing; the VM is unaffected.
    let _ = request.respond(response);
}
