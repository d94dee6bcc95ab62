//! The migration stream (docs/MIGRATION_STREAM.md): a sequence of frames,
//! each `kind: u8, len: u32 LE, payload, crc32: u32 LE` (CRC-32 of kind,
//! len and payload). The first frame is the header; the last is the end.
//! Snapshots are the same stream in a file.
//!
//! Everything read is untrusted: lengths are bounded before anything is
//! allocated, every frame is checksummed, and any fault is an error saying
//! which frame and what, never a panic.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// First bytes of every stream, before the first frame.
pub const MAGIC: [u8; 8] = *b"WWSTREAM";
/// The version this writewatch writes and reads.
pub const VERSION: u32 = 1;
/// Pages one `pages` frame carries at most.
pub const MAX_PAGES_PER_FRAME: u32 = 256;
/// The largest JSON frame (the header, the state, the end).
pub const MAX_JSON: u32 = 64 << 20;
pub const PAGE: usize = 4096;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// JSON `Header`.
    Header,
    /// `gpa: u64, count: u32`, then `count` pages of 4096 bytes.
    Pages,
    /// Runs of pages that are now all zero: `count: u32`, then `count`
    /// times `gpa: u64, pages: u32`.
    Zeros,
    /// JSON `RoundMark`: a pre-copy round ends.
    Round,
    /// JSON machine state (`state::MachineState`).
    State,
    /// JSON `End`.
    End,
    /// Destination to source: JSON `Ack`.
    Ack,
    /// Source to destination: resume the guest now (empty).
    Go,
    /// Destination to source: JSON `Resumed`, the guest runs there.
    Resumed,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Header => b'H',
            Kind::Pages => b'P',
            Kind::Zeros => b'Z',
            Kind::Round => b'R',
            Kind::State => b'S',
            Kind::End => b'E',
            Kind::Ack => b'A',
            Kind::Go => b'G',
            Kind::Resumed => b'D',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'H' => Kind::Header,
            b'P' => Kind::Pages,
            b'Z' => Kind::Zeros,
            b'R' => Kind::Round,
            b'S' => Kind::State,
            b'E' => Kind::End,
            b'A' => Kind::Ack,
            b'G' => Kind::Go,
            b'D' => Kind::Resumed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Header => "header",
            Kind::Pages => "pages",
            Kind::Zeros => "zeros",
            Kind::Round => "round",
            Kind::State => "state",
            Kind::End => "end",
            Kind::Ack => "ack",
            Kind::Go => "go",
            Kind::Resumed => "resumed",
        }
    }

    /// The most payload a frame of this kind may carry.
    fn max_len(self) -> u32 {
        match self {
            Kind::Pages => 12 + MAX_PAGES_PER_FRAME * PAGE as u32,
            Kind::Zeros => 4 + MAX_PAGES_PER_FRAME * 12,
            Kind::Go => 0,
            _ => MAX_JSON,
        }
    }
}

/// What the first frame says about the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// "migration" or "snapshot".
    pub purpose: String,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// `[start, len]` of each RAM slot, in order.
    pub ram: Vec<[u64; 2]>,
    pub writer: String,
    /// A snapshot's id, and for a diff the id of the snapshot it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotIds>,
    /// The end frame will carry a RAM hash: the destination may hash
    /// pieces as they arrive.
    #[serde(default)]
    pub ram_hash: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIds {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundMark {
    pub round: u32,
    pub pages: u64,
}

/// The last frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// xxh3-128 of all guest RAM at the pause, slot by slot, in hex; the
    /// destination compares it with what it holds before resuming.
    #[serde(default)]
    pub ram_hash: Option<String>,
    pub pages_sent: u64,
    pub rounds: u32,
    /// When the source paused the guest (Unix time, ns): the destination
    /// measures the downtime from it.
    #[serde(default)]
    pub paused_unix_ns: u64,
    /// How long hashing RAM took on the source.
    #[serde(default)]
    pub hash_ms: f64,
}

/// The destination's last word: the guest runs there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// Source pause to destination resume.
    pub downtime_ms: f64,
    /// Of that, hashing RAM at both ends.
    pub hash_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the stream ended early{0}")]
    Truncated(String),
    #[error("reading the stream: {0}")]
    Io(#[source] io::Error),
    #[error("not a writewatch migration stream or snapshot (bad magic)")]
    BadMagic,
    #[error("stream version {0} is not one this writewatch reads ({VERSION})")]
    Version(u32),
    #[error("frame {index}: unknown kind {kind:#04x}")]
    UnknownKind { index: u64, kind: u8 },
    #[error("frame {index} ({kind}): {len} bytes, more than a {kind} frame may hold ({max})")]
    TooLong {
        index: u64,
        kind: &'static str,
        len: u32,
        max: u32,
    },
    #[error("frame {index} ({kind}): checksum mismatch (corrupted)")]
    Checksum { index: u64, kind: &'static str },
    #[error("frame {index} ({kind}): {why}")]
    Malformed {
        index: u64,
        kind: &'static str,
        why: String,
    },
    #[error("expected a {expected} frame, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
}

/// A frame as read.
pub struct Frame {
    pub index: u64,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    fn malformed(&self, why: impl Into<String>) -> StreamError {
        StreamError::Malformed {
            index: self.index,
            kind: self.kind.name(),
            why: why.into(),
        }
    }

    /// The JSON payload of a header, round, state, end or ack frame.
    pub fn json<T: for<'a> Deserialize<'a>>(&self) -> Result<T, StreamError> {
        serde_json::from_slice(&self.payload).map_err(|e| self.malformed(e.to_string()))
    }

    /// A pages frame: its first guest-physical address and the page data.
    pub fn pages(&self) -> Result<(u64, &[u8]), StreamError> {
        let p = &self.payload;
        if p.len() < 12 {
            return Err(self.malformed("shorter than its own header"));
        }
        let gpa = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(p[8..12].try_into().expect("4 bytes")) as usize;
        if gpa % PAGE as u64 != 0 {
            return Err(self.malformed(format!("address {gpa:#x} is not page-aligned")));
        }
        if p.len() != 12 + count * PAGE {
            return Err(self.malformed(format!("{count} pages in {} bytes", p.len())));
        }
        Ok((gpa, &p[12..]))
    }

    /// A zeros frame's runs.
    pub fn zeros(&self) -> Result<Vec<(u64, u32)>, StreamError> {
        let p = &self.payload;
        if p.len() < 4 {
            return Err(self.malformed("shorter than its own header"));
        }
        let count = u32::from_le_bytes(p[..4].try_into().expect("4 bytes")) as usize;
        if p.len() != 4 + count * 12 {
            return Err(self.malformed(format!("{count} runs in {} bytes", p.len())));
        }
        let runs = p[4..]
            .chunks_exact(12)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    u32::from_le_bytes(c[8..].try_into().expect("4 bytes")),
                )
            })
            .collect::<Vec<_>>();
        if let Some((gpa, _)) = runs.iter().find(|(gpa, _)| gpa % PAGE as u64 != 0) {
            return Err(self.malformed(format!("address {gpa:#x} is not page-aligned")));
        }
        Ok(runs)
    }
}

fn checksum(kind: u8, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Writes frames, counting bytes.
pub struct Writer<W: Write> {
    out: W,
    pub bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a stream: the magic and the header frame.
    pub fn start(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(&MAGIC)?;
        let mut w = Writer {
            out,
            bytes: MAGIC.len() as u64,
        };
        w.json(Kind::Header, header)?;
        Ok(w)
    }

    /// A writer continuing a stream already started (the reply direction).
    pub fn raw(out: W) -> Self {
        Writer { out, bytes: 0 }
    }

    pub fn frame(&mut self, kind: Kind, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind.byte()]);
        hasher.update(&len.to_le_bytes());
        self.out.write_all(&[kind.byte()])?;
        self.out.write_all(&len.to_le_bytes())?;
        for part in parts {
            hasher.update(part);
            self.out.write_all(part)?;
        }
        self.out.write_all(&hasher.finalize().to_le_bytes())?;
        self.bytes += 9 + u64::from(len);
        Ok(())
    }

    pub fn json<T: Serialize>(&mut self, kind: Kind, value: &T) -> io::Result<()> {
        let text = serde_json::to_vec(value).map_err(io::Error::other)?;
        self.frame(kind, &[&text])
    }

    /// Pages starting at `gpa` (at most `MAX_PAGES_PER_FRAME`).
    pub fn pages(&mut self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let count = (data.len() / PAGE) as u32;
        self.frame(
            Kind::Pages,
            &[&gpa.to_le_bytes(), &count.to_le_bytes(), data],
        )
    }

    /// Runs of zero pages.
    pub fn zeros(&mut self, runs: &[(u64, u32)]) -> io::Result<()> {
        let mut payload = Vec::with_capacity(4 + runs.len() * 12);
        payload.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for &(gpa, pages) in runs {
            payload.extend_from_slice(&gpa.to_le_bytes());
            payload.extend_from_slice(&pages.to_le_bytes());
        }
        self.frame(Kind::Zeros, &[&payload])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Reads frames, checking each.
pub struct Reader<R: Read> {
    input: R,
    next: u64,
    pub bytes: u64,
}

impl<R: Read> Reader<R> {
    /// Reads the magic and the header frame.
    pub fn start(mut input: R) -> Result<(Self, Header), StreamError> {
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic, " before the magic")?;
        if magic != MAGIC {
            return Err(StreamError::BadMagic);
        }
        let mut r = Reader {
            input,
            next: 0,
            bytes: 8,
        };
        let frame = r.frame()?;
        if frame.kind != Kind::Header {
            return Err(StreamError::Unexpected {
                expected: "header",
                got: frame.kind.name(),
            });
        }
        // The version first: a newer header may not parse as this one.
        let version: serde_json::Value = frame.json()?;
        let version = version["version"].as_u64().unwrap_or(0) as u32;
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        let header: Header = frame.json()?;
        Ok((r, header))
    }

    /// A reader of frames without a magic (the reply direction).
    pub fn raw(input: R) -> Self {
        Reader {
            input,
            next: 0,
            bytes: 0,
        }
    }

    pub fn input(&self) -> &R {
        &self.input
    }

    /// True if nothing follows (reads a byte to find out).
    pub fn at_eof(&mut self) -> Result<bool, StreamError> {
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
    }

    /// The next frame.
    pub fn frame(&mut self) -> Result<Frame, StreamError> {
        let index = self.next;
        let at = |what: &str| format!(" in frame {index}, {what}");
        let mut head = [0u8; 5];
        read_exact(&mut self.input, &mut head, &at("before its header"))?;
        let kind = Kind::from_byte(head[0]).ok_or(StreamError::UnknownKind {
            index,
            kind: head[0],
        })?;
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes"));
        if len > kind.max_len() {
            return Err(StreamError::TooLong {
                index,
                kind: kind.name(),
                len,
                max: kind.max_len(),
            });
        }
        let mut payload = vec![0u8; len as usize];
        read_exact(
            &mut self.input,
            &mut payload,
            &at(&format!("inside its {len}-byte {}", kind.name())),
        )?;
        let mut crc = [0u8; 4];
        read_exact(&mut self.input, &mut crc, &at("before its checksum"))?;
        if u32::from_le_bytes(crc) != checksum(head[0], len, &payload) {
            return Err(StreamError::Checksum {
                index,
                kind: kind.name(),
            });
        }
        self.next += 1;
        self.bytes += 9 + u64::from(len);
        Ok(Frame {
            index,
            kind,
            payload,
        })
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], at: &str) -> Result<(), StreamError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Truncated(at.to_string()),
        _ => StreamError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: VERSION,
            purpose: "migration".into(),
            vcpus: 2,
            mem_bytes: 1 << 20,
            ram: vec![[0, 1 << 20]],
            writer: "test".into(),
            snapshot: None,
            ram_hash: true,
        }
    }

    fn stream() -> Vec<u8> {
        let mut w = Writer::start(Vec::new(), &header()).unwrap();
        w.pages(0x1000, &[7u8; 2 * PAGE]).unwrap();
        w.zeros(&[(0x3000, 2)]).unwrap();
        let end = End {
            ram_hash: None,
            pages_sent: 2,
            rounds: 1,
            paused_unix_ns: 0,
            hash_ms: 0.0,
        };
        w.json(Kind::End, &end).unwrap();
        w.into_inner()
    }

    #[test]
    fn frames_round_trip() {
        let bytes = stream();
        let (mut r, h) = Reader::start(&bytes[..]).unwrap();
        assert_eq!(h, header());
        let f = r.frame().unwrap();
        let (gpa, data) = f.pages().unwrap();
        assert_eq!((gpa, data.len()), (0x1000, 2 * PAGE));
        assert_eq!(r.frame().unwrap().zeros().unwrap(), vec![(0x3000, 2)]);
        let end: End = r.frame().unwrap().json().unwrap();
        assert_eq!(end.pages_sent, 2);
        assert!(matches!(r.frame(), Err(StreamError::Truncated(_))));
    }

    #[test]
    fn damage_is_named() {
        let bytes = stream();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(
            Reader::start(&bad[..]),
            Err(StreamError::BadMagic)
        ));
        let mut bad = bytes.clone();
        // The last payload byte of the end frame (the header is frame 0).
        let last = bad.len() - 5;
        bad[last] ^= 1;
        let (mut r, _) = Reader::start(&bad[..]).unwrap();
        r.frame().unwrap();
        r.frame().unwrap();
        assert!(matches!(
            r.frame(),
            Err(StreamError::Checksum { index: 3, .. })
        ));
        let cut = &bytes[..bytes.len() / 2];
        let (mut r, _) = Reader::start(cut).unwrap();
        assert!(matches!(r.frame(), Err(StreamError::Truncated(_))));
        let mut w = Writer::start(
            Vec::new(),
            &Header {
                version: 9,
                ..header()
            },
        )
        .unwrap();
        w.flush().unwrap();
        assert!(matches!(
            Reader::start(&w.into_inner()[..]),
            Err(StreamError::Version(9))
        ));
    }
}
