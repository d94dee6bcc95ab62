//! The control API's requests as plain values: `parse` turns an HTTP
//! method, path and body into an `ApiAction` (or a 4xx), and
//! `ApiAction::to_http` turns it back, which is what `writewatch ctl`
//! sends. Nothing here touches a socket or the VM (docs/api.yaml is the
//! contract; the two are tested against each other).

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dirty::{Initial, Source};
use crate::migration::convergence::{OnTimeout, Policy};
use crate::migration::send;
use crate::migration::transport::Address;
use crate::runner::VmState;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 << 10;
/// The longest dirty-rate period a request may ask for.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(60);

/// Whose virtual memory a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Pid(u64),
    Cr3(u64),
}

/// How a write-watch result lists its pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Every page address (GetWriteWatch's array).
    #[default]
    Addresses,
    /// Runs of consecutive pages as `[start, len]` pairs.
    Ranges,
    /// The count only.
    Count,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ApiAction {
    Info,
    Stats,
    Processes,
    SetState(VmState),
    StartTracking {
        source: Option<Source>,
        initial: Initial,
    },
    StopTracking,
    Get(Query),
    Reset(Range),
    WatchVa {
        target: Target,
        range: Range,
    },
    GetVa {
        target: Target,
        query: Query,
    },
    ResetVa {
        target: Target,
        range: Range,
    },
    DirtyRate {
        period: Duration,
    },
    Migrate(MigrateRequest),
    MigrationStatus,
    CancelMigration,
    Snapshot {
        to: String,
        diff: bool,
    },
    Workload,
    StopWorkload,
}

/// A migration as a request asks for it; every field but `to` has the
/// default QEMU and Cloud Hypervisor users expect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// `tcp:HOST:PORT` or `unix:PATH`, where `run --incoming` waits.
    pub to: String,
    /// The longest pause the guest should see (stop and copy when the rest
    /// fits it at the measured bandwidth).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// MiB per second pre-copy may send (none: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mib: Option<u64>,
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Seconds pre-copy may take (none: no limit but the rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// What happens at max rounds or the timeout.
    #[serde(default = "default_on_timeout")]
    pub on_timeout: OnTimeout,
    /// Throttle the vCPUs when rounds stop shrinking (QEMU's auto-converge).
    #[serde(default)]
    pub auto_converge: bool,
    /// Hash all RAM at both ends and require equality.
    #[serde(default = "default_true")]
    pub verify_ram: bool,
}

fn default_downtime_ms() -> u64 {
    Policy::default().downtime.as_millis() as u64
}

fn default_max_rounds() -> u32 {
    Policy::default().max_rounds
}

fn default_on_timeout() -> OnTimeout {
    Policy::default().on_timeout
}

fn default_true() -> bool {
    true
}

impl MigrateRequest {
    /// A request with the defaults, to `to`.
    pub fn to(to: &str) -> Self {
        MigrateRequest {
            to: to.to_string(),
            downtime_ms: default_downtime_ms(),
            max_bandwidth_mib: None,
            max_rounds: default_max_rounds(),
            timeout_s: None,
            on_timeout: default_on_timeout(),
            auto_converge: false,
            verify_ram: true,
        }
    }

    /// The source's options, or why they make no sense.
    pub fn options(&self) -> Result<send::Options, RequestError> {
        let bad = |why: String| RequestError::new(400, why);
        let to: Address = self.to.parse().map_err(bad)?;
        if !(1..=600_000).contains(&self.downtime_ms) {
            return Err(bad("downtime_ms must be 1..=600000".into()));
        }
        if !(1..=100_000).contains(&self.max_rounds) {
            return Err(bad("max_rounds must be 1..=100000".into()));
        }
        if self.max_bandwidth_mib == Some(0) || self.max_bandwidth_mib.is_some_and(|b| b > 1 << 30)
        {
            return Err(bad("max_bandwidth_mib must be 1..=1073741824".into()));
        }
        let timeout = match self.timeout_s {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t <= 1e6 => Some(Duration::from_secs_f64(t)),
            Some(_) => {
                return Err(bad(
                    "timeout_s must be a number of seconds in (0, 1e6]".into()
                ));
            }
        };
        Ok(send::Options {
            to,
            policy: Policy {
                downtime: Duration::from_millis(self.downtime_ms),
                max_rounds: self.max_rounds,
                timeout,
                on_timeout: self.on_timeout,
                auto_converge: self.auto_converge,
                ..Policy::default()
            },
            max_bandwidth: self.max_bandwidth_mib.map(|m| m << 20),
            verify_ram: self.verify_ram,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    to: String,
    #[serde(default)]
    diff: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadBody {
    stop: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(deserialize_with = "number")]
    pub start: u64,
    #[serde(deserialize_with = "number")]
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub range: Range,
    pub reset: bool,
    pub max_count: Option<usize>,
    pub format: Format,
}

/// A request the API refuses, with its HTTP status.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub message: String,
}

impl RequestError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        RequestError {
            status,
            message: message.into(),
        }
    }
}

/// Every method and path the API serves (docs/api.yaml lists the same).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/vm"),
    ("PATCH", "/vm"),
    ("GET", "/vm/stats"),
    ("GET", "/processes"),
    ("PUT", "/write-watch"),
    ("DELETE", "/write-watch"),
    ("POST", "/write-watch/get"),
    ("POST", "/write-watch/reset"),
    ("PUT", "/write-watch/va"),
    ("POST", "/write-watch/va/get"),
    ("POST", "/write-watch/va/reset"),
    ("GET", "/dirty-rate"),
    ("PUT", "/migration"),
    ("GET", "/migration"),
    ("DELETE", "/migration"),
    ("PUT", "/snapshot"),
    ("GET", "/workload"),
    ("PATCH", "/workload"),
];

/// Accepts a JSON number or a string holding one (`"0x1000"`, `"4096"`).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => {
            parse_number(&t).ok_or_else(|| de::Error::custom(format!("'{t}' is not a number")))
        }
    }
}

/// A decimal or `0x` hexadecimal number.
pub fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of every write-watch query: a range, what to do with it, and
/// for virtual ranges whose memory (exactly one of `pid` and `cr3`).
struct QueryBody {
    pid: Option<u64>,
    #[serde(default, deserialize_with = "maybe_number")]
    cr3: Option<u64>,
    #[serde(deserialize_with = "number")]
    start: u64,
    #[serde(deserialize_with = "number")]
    len: u64,
    #[serde(default)]
    reset: bool,
    max_count: Option<usize>,
    #[serde(default)]
    format: Format,
}

fn maybe_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    source: Option<Source>,
    #[serde(default)]
    initial: Initial,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: VmState,
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, RequestError> {
    serde_json::from_slice(bytes)
        .map_err(|e| RequestError::new(400, format!("bad request body: {e}")))
}

fn va(bytes: &[u8], with_query: bool) -> Result<(Target, Query), RequestError> {
    let b: QueryBody = body(bytes)?;
    let target = match (b.pid, b.cr3) {
        (Some(pid), None) => Target::Pid(pid),
        (None, Some(cr3)) => Target::Cr3(cr3),
        _ => {
            return Err(RequestError::new(
                400,
                "give exactly one of \"pid\" and \"cr3\"",
            ));
        }
    };
    if !with_query && (b.reset || b.max_count.is_some() || b.format != Format::Addresses) {
        return Err(RequestError::new(
            400,
            "this request takes only pid/cr3, start and len",
        ));
    }
    Ok((
        target,
        Query {
            range: Range {
                start: b.start,
                len: b.len,
            },
            reset: b.reset,
            max_count: b.max_count,
            format: b.format,
        },
    ))
}

/// Turns one HTTP request into an action.
pub fn parse(method: &str, url: &str, bytes: &[u8]) -> Result<ApiAction, RequestError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let path = path.trim_end_matches('/');
    let no_body = |action: ApiAction| {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(action)
        } else {
            Err(RequestError::new(
                400,
                format!("{method} {path} takes no body"),
            ))
        }
    };
    let action = match (method, path) {
        ("GET", "" | "/vm") => no_body(ApiAction::Info)?,
        ("GET", "/vm/stats") => no_body(ApiAction::Stats)?,
        ("GET", "/processes") => no_body(ApiAction::Processes)?,
        ("PATCH", "/vm") => ApiAction::SetState(body::<StateBody>(bytes)?.state),
        ("PUT", "/write-watch") => {
            let b: StartBody = if bytes.iter().all(u8::is_ascii_whitespace) {
                StartBody {
                    source: None,
                    initial: Initial::Clean,
                }
            } else {
                body(bytes)?
            };
            ApiAction::StartTracking {
                source: b.source,
                initial: b.initial,
            }
        }
        ("DELETE", "/write-watch") => no_body(ApiAction::StopTracking)?,
        ("POST", "/write-watch/get") => {
            let b: QueryBody = body(bytes)?;
            if b.pid.is_some() || b.cr3.is_some() {
                return Err(RequestError::new(
                    400,
                    "guest-physical queries take no pid or cr3 (see /write-watch/va)",
                ));
            }
            ApiAction::Get(Query {
                range: Range {
                    start: b.start,
                    len: b.len,
                },
                reset: b.reset,
                max_count: b.max_count,
                format: b.format,
            })
        }
        ("POST", "/write-watch/reset") => ApiAction::Reset(body(bytes)?),
        ("PUT", "/write-watch/va") => {
            let (target, q) = va(bytes, false)?;
            ApiAction::WatchVa {
                target,
                range: q.range,
            }
        }
        ("POST", "/write-watch/va/get") => {
            let (target, query) = va(bytes, true)?;
            ApiAction::GetVa { target, query }
        }
        ("POST", "/write-watch/va/reset") => {
            let (target, q) = va(bytes, false)?;
            ApiAction::ResetVa {
                target,
                range: q.range,
            }
        }
        ("GET", "/dirty-rate") => {
            let period_ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("period_ms="))
                .map(|v| {
                    parse_number(v).ok_or_else(|| {
                        RequestError::new(400, format!("period_ms '{v}' is not a number"))
                    })
                })
                .transpose()?
                .unwrap_or(1000);
            let period = Duration::from_millis(period_ms);
            if period.is_zero() || period > MAX_RATE_PERIOD {
                return Err(RequestError::new(400, "period_ms must be 1..=60000"));
            }
            no_body(ApiAction::DirtyRate { period })?
        }
        ("PUT", "/migration") => {
            let request: MigrateRequest = body(bytes)?;
            request.options()?;
            ApiAction::Migrate(request)
        }
        ("GET", "/migration") => no_body(ApiAction::MigrationStatus)?,
        ("DELETE", "/migration") => no_body(ApiAction::CancelMigration)?,
        ("PUT", "/snapshot") => {
            let b: SnapshotBody = body(bytes)?;
            if b.to.is_empty() {
                return Err(RequestError::new(400, "\"to\" must name a file"));
            }
            ApiAction::Snapshot {
                to: b.to,
                diff: b.diff,
            }
        }
        ("GET", "/workload") => no_body(ApiAction::Workload)?,
        ("PATCH", "/workload") => {
            let b: WorkloadBody = body(bytes)?;
            if !b.stop {
                return Err(RequestError::new(
                    400,
                    "the only change is {\"stop\": true}",
                ));
            }
            ApiAction::StopWorkload
        }
        (
            _,
            ""
            | "/vm"
            | "/vm/stats"
            | "/processes"
            | "/write-watch"
            | "/write-watch/get"
            | "/write-watch/reset"
            | "/write-watch/va"
            | "/write-watch/va/get"
            | "/write-watch/va/reset"
            | "/dirty-rate"
            | "/migration"
            | "/snapshot"
            | "/workload",
        ) => {
            return Err(RequestError::new(
                405,
                format!("{method} is not allowed on {path}"),
            ));
        }
        _ => return Err(RequestError::new(404, format!("no such resource: {path}"))),
    };
    Ok(action)
}

impl ApiAction {
    /// The HTTP request that `parse` turns back into this action.
    pub fn to_http(&self) -> (&'static str, String, Option<Value>) {
        let query_body = |q: &Query| {
            let mut b = json!({"start": q.range.start, "len": q.range.len});
            if q.reset {
                b["reset"] = json!(true);
            }
            if let Some(n) = q.max_count {
                b["max_count"] = json!(n);
            }
            if q.format != Format::Addresses {
                b["format"] = json!(q.format);
            }
            b
        };
        let with_target = |target: &Target, mut b: Value| {
            match target {
                Target::Pid(pid) => b["pid"] = json!(pid),
                Target::Cr3(cr3) => b["cr3"] = json!(cr3),
            }
            b
        };
        match self {
            ApiAction::Info => ("GET", "/vm".into(), None),
            ApiAction::Stats => ("GET", "/vm/stats".into(), None),
            ApiAction::Processes => ("GET", "/processes".into(), None),
            ApiAction::SetState(state) => ("PATCH", "/vm".into(), Some(json!({"state": state}))),
            ApiAction::StartTracking { source, initial } => {
                let mut b = json!({"initial": initial});
                if let Some(source) = source {
                    b["source"] = json!(source);
                }
                ("PUT", "/write-watch".into(), Some(b))
            }
            ApiAction::StopTracking => ("DELETE", "/write-watch".into(), None),
            ApiAction::Get(q) => ("POST", "/write-watch/get".into(), Some(query_body(q))),
            ApiAction::Reset(r) => ("POST", "/write-watch/reset".into(), Some(json!(r))),
            ApiAction::WatchVa { target, range } => (
                "PUT",
                "/write-watch/va".into(),
                Some(with_target(target, json!(range))),
            ),
            ApiAction::GetVa { target, query } => (
                "POST",
                "/write-watch/va/get".into(),
                Some(with_target(target, query_body(query))),
            ),
            ApiAction::ResetVa { target, range } => (
                "POST",
                "/write-watch/va/reset".into(),
                Some(with_target(target, json!(range))),
            ),
            ApiAction::DirtyRate { period } => (
                "GET",
                format!("/dirty-rate?period_ms={}", period.as_millis()),
                None,
            ),
            ApiAction::Migrate(request) => ("PUT", "/migration".into(), Some(json!(request))),
            ApiAction::MigrationStatus => ("GET", "/migration".into(), None),
            ApiAction::CancelMigration => ("DELETE", "/migration".into(), None),
            ApiAction::Snapshot { to, diff } => (
                "PUT",
                "/snapshot".into(),
                Some(json!({"to": to, "diff": diff})),
            ),
            ApiAction::Workload => ("GET", "/workload".into(), None),
            ApiAction::StopWorkload => ("PATCH", "/workload".into(), Some(json!({"stop": true}))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_json(method: &str, url: &str, body: &str) -> Result<ApiAction, RequestError> {
        parse(method, url, body.as_bytes())
    }

    #[test]
    fn requests_become_actions() {
        assert_eq!(parse_json("GET", "/vm", ""), Ok(ApiAction::Info));
        assert_eq!(parse_json("GET", "/vm/", ""), Ok(ApiAction::Info));
        assert_eq!(
            parse_json("PATCH", "/vm", r#"{"state":"paused"}"#),
            Ok(ApiAction::SetState(VmState::Paused))
        );
        assert_eq!(
            parse_json(
                "POST",
                "/write-watch/get",
                r#"{"start":"0x1000","len":8192,"reset":true,"max_count":3}"#
            ),
            Ok(ApiAction::Get(Query {
                range: Range {
                    start: 0x1000,
                    len: 8192
                },
                reset: true,
                max_count: Some(3),
                format: Format::Addresses,
            }))
        );
        assert_eq!(
            parse_json("PUT", "/write-watch", ""),
            Ok(ApiAction::StartTracking {
                source: None,
                initial: Initial::Clean
            })
        );
        assert_eq!(
            parse_json("GET", "/dirty-rate?period_ms=250", ""),
            Ok(ApiAction::DirtyRate {
                period: Duration::from_millis(250)
            })
        );
    }

    #[test]
    fn bad_requests_get_4xx() {
        let status = |m: &str, u: &str, b: &str| parse_json(m, u, b).unwrap_err().status;
        assert_eq!(status("GET", "/nope", ""), 404);
        assert_eq!(status("DELETE", "/vm", ""), 405);
        assert_eq!(status("POST", "/write-watch/get", "{"), 400);
        assert_eq!(status("POST", "/write-watch/get", r#"{"start":1}"#), 400);
        assert_eq!(
            status(
                "POST",
                "/write-watch/get",
                r#"{"start":0,"len":1,"bogus":1}"#
            ),
            400
        );
        assert_eq!(
            status("POST", "/write-watch/get", r#"{"start":"zz","len":1}"#),
            400
        );
        assert_eq!(status("PUT", "/write-watch", r#"{"source":"laser"}"#), 400);
        assert_eq!(status("PATCH", "/vm", r#"{"state":"asleep"}"#), 400);
        assert_eq!(status("GET", "/vm", "{}"), 400);
        assert_eq!(
            status(
                "PUT",
                "/write-watch/va",
                r#"{"pid":1,"cr3":2,"start":0,"len":4096}"#
            ),
            400
        );
        assert_eq!(
            status("PUT", "/write-watch/va", r#"{"start":0,"len":4096}"#),
            400
        );
        assert_eq!(status("GET", "/dirty-rate?period_ms=0", ""), 400);
        assert_eq!(status("PUT", "/migration", r#"{"to":"udp:x:1"}"#), 400);
        assert_eq!(
            status("PUT", "/migration", r#"{"to":"tcp:h:1","downtime_ms":0}"#),
            400
        );
        assert_eq!(
            status(
                "PUT",
                "/migration",
                r#"{"to":"tcp:h:1","max_bandwidth_mib":0}"#
            ),
            400
        );
        assert_eq!(
            status(
                "PUT",
                "/migration",
                r#"{"to":"tcp:h:1","on_timeout":"pray"}"#
            ),
            400
        );
        assert_eq!(status("PUT", "/snapshot", r#"{"to":""}"#), 400);
        assert_eq!(status("PATCH", "/workload", r#"{"stop":false}"#), 400);
        assert_eq!(status("GET", "/dirty-rate?period_ms=999999", ""), 400);
    }

    /// The (method, path) pairs docs/api.yaml documents.
    fn documented() -> Vec<(String, String)> {
        let spec = include_str!("../../../docs/api.yaml");
        let mut out = Vec::new();
        let mut path = None;
        for line in spec.lines().skip_while(|l| *l != "paths:").skip(1) {
            if !line.starts_with(' ') {
                break;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end_matches(':')));
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                if let Some(m) = m.strip_suffix(':').filter(|m| !m.starts_with(' ')) {
                    out.push((m.to_ascii_uppercase(), p.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_file_documents_exactly_the_routes_served() {
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        let mut doc = documented();
        served.sort();
        doc.sort();
        assert_eq!(served, doc, "docs/api.yaml and ROUTES differ");
        for (method, path) in ROUTES {
            let status = parse(method, path, b"").err().map(|e| e.status);
            assert!(
                !matches!(status, Some(404 | 405)),
                "{method} {path}: {status:?}"
            );
        }
    }

    fn action() -> impl Strategy<Value = ApiAction> {
        let range = (any::<u64>(), any::<u64>()).prop_map(|(start, len)| Range { start, len });
        let format = prop_oneof![
            Just(Format::Addresses),
            Just(Format::Ranges),
            Just(Format::Count)
        ];
        let query = (
            range.clone(),
            any::<bool>(),
            prop::option::of(0usize..1_000_000),
            format,
        )
            .prop_map(|(range, reset, max_count, format)| Query {
                range,
                reset,
                max_count,
                format,
            });
        let target = prop_oneof![
            any::<u64>().prop_map(Target::Pid),
            any::<u64>().prop_map(Target::Cr3)
        ];
        prop_oneof![
            Just(ApiAction::Info),
            Just(ApiAction::Stats),
            Just(ApiAction::Processes),
            Just(ApiAction::StopTracking),
            prop_oneof![Just(VmState::Running), Just(VmState::Paused)]
                .prop_map(ApiAction::SetState),
            (
                prop::option::of(prop_oneof![Just(Source::Bitmap), Just(Source::Ring)]),
                prop_oneof![Just(Initial::Clean), Just(Initial::Dirty)]
            )
                .prop_map(|(source, initial)| ApiAction::StartTracking { source, initial }),
            query.clone().prop_map(ApiAction::Get),
            range.clone().prop_map(ApiAction::Reset),
            (target.clone(), range.clone())
                .prop_map(|(target, range)| ApiAction::WatchVa { target, range }),
            (target.clone(), query).prop_map(|(target, query)| ApiAction::GetVa { target, query }),
            (target, range).prop_map(|(target, range)| ApiAction::ResetVa { target, range }),
            (1u64..=60_000).prop_map(|ms| ApiAction::DirtyRate {
                period: Duration::from_millis(ms)
            }),
            (
                prop_oneof![Just("tcp:127.0.0.1:4444"), Just("unix:/tmp/m.sock")],
                1u64..=600_000,
                prop::option::of(1u64..=1 << 20),
                1u32..=100,
                prop::option::of(1u32..=1000),
                prop_oneof![Just(OnTimeout::Cancel), Just(OnTimeout::Force)],
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(
                    |(to, downtime_ms, bw, max_rounds, timeout, on_timeout, auto, verify)| {
                        ApiAction::Migrate(MigrateRequest {
                            to: to.into(),
                            downtime_ms,
                            max_bandwidth_mib: bw,
                            max_rounds,
                            timeout_s: timeout.map(f64::from),
                            on_timeout,
                            auto_converge: auto,
                            verify_ram: verify,
                        })
                    }
                ),
            Just(ApiAction::MigrationStatus),
            Just(ApiAction::CancelMigration),
            ("[a-z/]{1,20}", any::<bool>()).prop_map(|(to, diff)| ApiAction::Snapshot { to, diff }),
            Just(ApiAction::Workload),
            Just(ApiAction::StopWorkload),
        ]
    }

    proptest! {
        /// What `ctl` sends is what the server understands.
        #[test]
        fn to_http_round_trips_through_parse(action in action()) {
            let (method, url, body) = action.to_http();
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            prop_assert_eq!(parse(method, &url, body.as_bytes()), Ok(action));
        }
    }
}
