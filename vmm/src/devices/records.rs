//! The result channel: the guest rings a doorbell (port 0xf8) with the
//! guest-physical address of `{u32 len, len bytes of JSON}` and the VMM
//! copies the record out before the `out` completes. Records are how the
//! guest reports readiness, self-test results and (later) write sets without
//! paying one VM exit per byte as the console does.
//!
//! Everything the guest hands over is untrusted: addresses, lengths and text
//! are checked, and a bad record becomes an error value, never a panic.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::RECORD_MAX_LEN;
use crate::memory::GuestMemoryMmap;

/// One record: a JSON object whose `"type"` is a string.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub kind: String,
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// The record as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::Value::Object(self.body.clone()).to_string()
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.body.get(key)
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
    #[error("record at {0:#x} is not a JSON object with a string \"type\"")]
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
        parse_record(&bytes).map_err(|e| match e {
            ParseError::NotJson => RecordError::NotJson(addr),
            ParseError::NoType => RecordError::NoType(addr),
        })
    }
}

enum ParseError {
    NotJson,
    NoType,
}

fn parse_record(bytes: &[u8]) -> Result<Record, ParseError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| ParseError::NotJson)?;
    let serde_json::Value::Object(body) = value else {
        return Err(ParseError::NoType);
    };
    let kind = body
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(ParseError::NoType)?
        .to_string();
    Ok(Record { kind, body })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn reads_a_record() {
        let body = br#"{"type":"ready","t":1}"#;
        let channel = channel_with(0x1000, body.len() as u32, body);
        let record = ring(&channel, 0x1000).unwrap();
        assert_eq!(record.kind, "ready");
        assert_eq!(record.get("t"), Some(&serde_json::json!(1)));
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
