//! The result channel: the guest rings a doorbell (port 0xf8) with the
//! guest-physical address of `{u32 len, len bytes of JSON}` and the VMM
//! copies the record out before the `out` completes. Records are how the
//! guest reports readiness, self-test results and (later) write sets without
//! paying one VM exit per byte as the console does.
//!
//! Everything the guest hands over is untrusted: addresses, lengths and text
//! are checked, and a bad record becomes an error value, never a panic.
//! Checking builds nothing: the JSON is validated by a streaming parse that
//! keeps only the `"type"`, so a record costs its own length in memory
//! whatever its shape (a parsed tree of a 64 KiB array of zeros would take
//! ~1 MiB). The record is kept as the bytes the guest sent.

use std::borrow::Cow;

use serde::Deserialize;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::RECORD_MAX_LEN;
use crate::memory::GuestMemoryMmap;

/// One record: a JSON object whose `"type"` is a string, as the guest sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub kind: String,
    /// The guest's bytes with leading and trailing whitespace removed and
    /// any CR or LF (which valid JSON has only as whitespace between tokens)
    /// turned into spaces, so the record is one line and means the same.
    pub line: Vec<u8>,
}

impl Record {
    /// Reads fields of the record into `T` (which should ignore unknown
    /// fields); `None` when they do not have the shape `T` wants.
    pub fn fields<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_slice(&self.line).ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("doorbell written with {0} bytes; it takes a 32-bit address")]
    DoorbellWidth(usize),
    #[error("record at {0:#x} is outside guest RAM")]
    BadAddress(u64),
    #[error("record at {addr:#x} has length {len}, outside 1..={RECORD_MAX_LEN}")]
    BadLength { addr: u64, len: u32 },
    #[error("record at {0:#x} is not UTF-8 JSON")]
    NotJson(u64),
    #[error("record at {0:#x} is not a JSON object with one string \"type\"")]
    NoType(u64),
}

/// Reads records out of guest memory.
pub struct RecordChannel {
    mem: GuestMemoryMmap,
}

impl RecordChannel {
    pub fn new(mem: GuestMemoryMmap) -> Self {
        RecordChannel { mem }
    }

    /// Handles a doorbell write of `data`.
    pub fn ring(&self, data: &[u8]) -> Result<Record, RecordError> {
        let addr: [u8; 4] = data
            .try_into()
            .map_err(|_| RecordError::DoorbellWidth(data.len()))?;
        self.read_at(u64::from(u32::from_le_bytes(addr)))
    }

    fn read_at(&self, addr: u64) -> Result<Record, RecordError> {
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| RecordError::BadAddress(addr))?;
        if len == 0 || len > RECORD_MAX_LEN {
            return Err(RecordError::BadLength { addr, len });
        }
        let mut bytes = vec![0u8; len as usize];
        let body_addr = addr.checked_add(4).ok_or(RecordError::BadAddress(addr))?;
        self.mem
            .read_slice(&mut bytes, GuestAddress(body_addr))
            .map_err(|_| RecordError::BadAddress(addr))?;
        parse_record(bytes).map_err(|e| match e {
            ParseError::NotJson => RecordError::NotJson(addr),
            ParseError::NoType => RecordError::NoType(addr),
        })
    }
}

#[derive(Debug, PartialEq)]
pub enum ParseError {
    NotJson,
    NoType,
}

/// The one field validation keeps; every other value is checked and skipped.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// Validates `bytes` as one JSON object with a string `"type"` and turns it
/// into a record line.
pub fn parse_record(mut bytes: Vec<u8>) -> Result<Record, ParseError> {
    let text = std::str::from_utf8(&bytes).map_err(|_| ParseError::NotJson)?;
    // A struct also deserializes from a JSON array; only objects are records.
    if !text.trim_start().starts_with('{') {
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(ParseError::NoType),
            Err(_) => Err(ParseError::NotJson),
        };
    }
    // Skipping the other fields does not check their numbers fit an f64;
    // serde_json's `Value`, like the consumers of `--records`, requires it.
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return Err(ParseError::NotJson);
    }
    let kind = match serde_json::from_str::<Head>(text) {
        Ok(head) => head.kind.into_owned(),
        Err(e) if e.is_data() => return Err(ParseError::NoType),
        Err(_) => return Err(ParseError::NotJson),
    };
    for byte in bytes.iter_mut() {
        if matches!(*byte, b'\r' | b'\n') {
            *byte = b' ';
        }
    }
    let is_space = |b: &u8| matches!(*b, b' ' | b'\t');
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(0, |i| i + 1);
    bytes.truncate(end);
    let start = bytes.iter().position(|b| !is_space(b)).unwrap_or(0);
    bytes.drain(..start);
    Ok(Record { kind, line: bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by tests/device_fuzz.rs: a number past f64's range was
    /// accepted because the fields besides `type` were only skipped.
    #[test]
    fn a_number_out_of_range_is_not_json() {
        let text = br#"{"type":"user_fault","addr":1E39637976694784}"#.to_vec();
        assert!(matches!(parse_record(text), Err(ParseError::NotJson)));
        let fine = br#"{"type":"user_fault","addr":1E300}"#.to_vec();
        assert_eq!(parse_record(fine).unwrap().kind, "user_fault");
    }
    use crate::config::Backing;
    use crate::memory::create_guest_memory;

    fn channel_with(addr: u64, len: u32, body: &[u8]) -> RecordChannel {
        let mem = create_guest_memory(2 << 20, Backing::Anon, 46).unwrap();
        mem.write_obj(len, GuestAddress(addr)).unwrap();
        mem.write_slice(body, GuestAddress(addr + 4)).unwrap();
        RecordChannel::new(mem)
    }

    fn ring(channel: &RecordChannel, addr: u32) -> Result<Record, RecordError> {
        channel.ring(&addr.to_le_bytes())
    }

    fn parse(text: &str) -> Result<Record, ParseError> {
        parse_record(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_a_record() {
        let body = br#"{"type":"ready","t":1}"#;
        let channel = channel_with(0x1000, body.len() as u32, body);
        let record = ring(&channel, 0x1000).unwrap();
        assert_eq!(record.kind, "ready");
        assert_eq!(record.line, body);
    }

    #[test]
    fn records_are_kept_as_sent() {
        let text = r#"{"z":1e2,"type":"t\u0041","a":[1,2],"a":"dup","s":"\n\"x\""}"#;
        let record = parse(text).unwrap();
        assert_eq!(record.kind, "tA");
        assert_eq!(record.line, text.as_bytes());
    }

    #[test]
    fn newlines_between_tokens_become_spaces() {
        let record = parse("  {\r\n \"type\": \"x\",\n\t\"v\": 1\n}\n").unwrap();
        assert_eq!(record.line, b"{   \"type\": \"x\", \t\"v\": 1 }");
        let reparsed: serde_json::Value = serde_json::from_slice(&record.line).unwrap();
        assert_eq!(reparsed, serde_json::json!({"type": "x", "v": 1}));
    }

    #[test]
    fn what_is_not_a_record() {
        for text in [
            "",
            "{",
            "{}x",
            "[1]",
            "\"type\"",
            "{\"type\":1}",
            "{\"t\":\"x\"}",
        ] {
            assert!(parse(text).is_err(), "{text:?} accepted");
        }
        assert_eq!(parse("[\"ready\"]"), Err(ParseError::NoType));
        assert_eq!(
            parse("{\"type\":\"a\",\"type\":\"b\"}"),
            Err(ParseError::NoType)
        );
        assert_eq!(parse("{\"type\":\"a\"} {}"), Err(ParseError::NotJson));
        assert_eq!(parse_record(b"\xff{".to_vec()), Err(ParseError::NotJson));
    }

    #[test]
    fn rejects_bad_lengths_addresses_and_text() {
        let channel = channel_with(0x1000, 0, b"");
        assert!(matches!(
            ring(&channel, 0x1000),
            Err(RecordError::BadLength { .. })
        ));
        let channel = channel_with(0x1000, RECORD_MAX_LEN + 1, b"");
        assert!(matches!(
            ring(&channel, 0x1000),
            Err(RecordError::BadLength { .. })
        ));
        // A length that runs off the end of RAM.
        let channel = channel_with((2 << 20) - 8, 100, b"{}");
        assert!(matches!(
            ring(&channel, (2 << 20) - 8),
            Err(RecordError::BadAddress(_))
        ));
        assert!(matches!(
            ring(&channel, 0xffff_fff0),
            Err(RecordError::BadAddress(_))
        ));
        let channel = channel_with(0x1000, 3, b"\xff\xfe{");
        assert_eq!(ring(&channel, 0x1000), Err(RecordError::NotJson(0x1000)));
        let channel = channel_with(0x1000, 2, b"[]");
        assert_eq!(ring(&channel, 0x1000), Err(RecordError::NoType(0x1000)));
        assert_eq!(channel.ring(&[1, 2]), Err(RecordError::DoorbellWidth(2)));
    }
}
