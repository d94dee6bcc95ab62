//! Fuzzing the two parsers a guest feeds directly, with proptest: the record
//! channel (mutations of real records captured from a self-test run,
//! `resources/corpus/records.jsonl`) and the port-I/O dispatcher (random
//! sequences of `in`/`out`/string accesses against the real devices, checked
//! against a model of the UART). No KVM is involved: these are the device
//! models' own inputs. CI runs the default case counts (a few seconds);
//! `PROPTEST_CASES=N` runs longer.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, OnceLock};

use proptest::prelude::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use writewatch::config::Backing;
use writewatch::devices::records::{RecordChannel, parse_record};
use writewatch::devices::serial::Console;
use writewatch::devices::{GuestEvent, PortDevices};
use writewatch::memory::create_guest_memory;
use writewatch::output::Sink;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let text = include_str!("../resources/corpus/records.jsonl");
        text.lines().map(|l| l.as_bytes().to_vec()).collect()
    })
}

/// A JSON object's entries in order, duplicates kept: the oracle for what a
/// record is (one object, exactly one `"type"`, and it is a string).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// The record kind the oracle expects `bytes` to have, or `None` if they
/// are not a record.
fn oracle_kind(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let Entries(entries) = serde_json::from_str(text).ok()?;
    let mut types = entries.iter().filter(|(k, _)| k == "type");
    let (_, kind) = types.next()?;
    if types.next().is_some() {
        return None;
    }
    kind.as_str().map(str::to_string)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { len: usize },
    Splice { other: usize, at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            any::<usize>(),
            prop_oneof![
                Just(b'"'),
                Just(b'\\'),
                Just(b'{'),
                Just(b'}'),
                Just(b','),
                Just(b'\n'),
                Just(b'\r'),
                Just(b' '),
                any::<u8>()
            ]
        )
            .prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), any::<usize>()).prop_map(|(other, at)| Mutation::Splice { other, at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Flip { at, bit } => {
                if !bytes.is_empty() {
                    bytes[at % n] ^= 1 << bit;
                }
            }
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Delete { at } => {
                if !bytes.is_empty() {
                    bytes.remove(at % n);
                }
            }
            Mutation::Truncate { len } => bytes.truncate(len % n),
            Mutation::Splice { other, at } => {
                let other = &corpus()[other % corpus().len()];
                let cut = at % n;
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[cut.min(other.len())..]);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(4000)))]

    /// Whatever bytes arrive, the parser agrees with the oracle about what
    /// is a record, and an accepted record is the guest's own text on one
    /// line, meaning exactly what the guest sent.
    #[test]
    fn the_record_parser_agrees_with_the_oracle_on_mutated_real_records(
        pick in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 0..6),
    ) {
        let original = &corpus()[pick % corpus().len()];
        let bytes = apply(original.clone(), &mutations);
        let expected = oracle_kind(&bytes);
        match parse_record(bytes.clone()) {
            Ok(record) => {
                prop_assert_eq!(Some(&record.kind), expected.as_ref(), "accepted {:?}", String::from_utf8_lossy(&bytes));
                prop_assert!(!record.line.contains(&b'\n') && !record.line.contains(&b'\r'));
                let sent: Value = serde_json::from_slice(&bytes).unwrap();
                let kept: Value = serde_json::from_slice(&record.line).unwrap();
                prop_assert_eq!(sent, kept);
                let spaced: Vec<u8> = bytes.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }).collect();
                let text = String::from_utf8(spaced).unwrap();
                prop_assert_eq!(text.trim_matches([' ', '\t']).as_bytes(), &record.line[..]);
            }
            Err(_) => prop_assert_eq!(expected, None, "rejected {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
}

/// Console output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const RAM: u64 = 1 << 20;
const RECORD_AT: u64 = 0x1000;

struct Machine {
    devices: PortDevices,
    stdout: Arc<Sink>,
    console: Captured,
}

fn machine() -> Machine {
    let mem = create_guest_memory(RAM, Backing::Anon, 46).unwrap();
    let json = br#"{"type":"fuzz"}"#;
    mem.write_obj(json.len() as u32, GuestAddress(RECORD_AT))
        .unwrap();
    mem.write_slice(json, GuestAddress(RECORD_AT + 4)).unwrap();
    let console = Captured::default();
    let out = console.clone();
    let stdout = Arc::new(Sink::spawn("fuzz", move || {
        Ok(Box::new(out) as Box<dyn Write + Send>)
    }));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let devices = PortDevices::new(
        Console::new(irq, stdout.clone(), Arc::new(OnceLock::new())),
        RecordChannel::new(mem),
    );
    Machine {
        devices,
        stdout,
        console,
    }
}

#[derive(Clone, Debug)]
struct Access {
    port: u16,
    size: usize,
    count: usize,
    write: bool,
    data: Vec<u8>,
}

fn access() -> impl Strategy<Value = Access> {
    let port = prop_oneof![
        4 => 0x3f5u16..0x402,
        1 => Just(0xf4u16),
        2 => Just(0xf8u16),
        1 => 0xf0u16..0xfc,
        1 => any::<u16>(),
    ];
    let size = prop_oneof![Just(1usize), Just(2), Just(4)];
    (
        port,
        size,
        1usize..40,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 160),
    )
        .prop_map(|(port, size, count, write, mut data)| {
            data.truncate(size * count);
            // Doorbell rings mostly point at the planted record.
            if port == 0xf8 && size == 4 && data[0] & 1 == 0 {
                data[..4].copy_from_slice(&(RECORD_AT as u32).to_le_bytes());
            }
            Access {
                port,
                size,
                count,
                write,
                data,
            }
        })
}

/// What the UART must print: THR writes while DLAB and loopback are off.
#[derive(Default)]
struct UartModel {
    lcr: u8,
    mcr: u8,
    printed: Vec<u8>,
}

impl UartModel {
    fn write(&mut self, port: u16, element: &[u8]) {
        for (lane, &byte) in element.iter().enumerate() {
            match u32::from(port) + lane as u32 {
                0x3f8 if self.lcr & 0x80 == 0 && self.mcr & 0x10 == 0 => self.printed.push(byte),
                0x3fb => self.lcr = byte,
                0x3fc => self.mcr = byte,
                _ => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(400)))]

    /// Random port accesses, single and string, of every width: nothing
    /// panics; every element of an `in` is filled (two machines given the
    /// same history but different stale buffer contents read the same);
    /// the console prints exactly the THR writes the model predicts; the
    /// exit port ends an access at its first element and the doorbell
    /// rings once per element.
    #[test]
    fn port_accesses_follow_the_device_model(accesses in prop::collection::vec(access(), 1..60)) {
        let (a, b) = (machine(), machine());
        let mut model = UartModel::default();
        for access in &accesses {
            if access.write {
                let mut events = (Vec::new(), Vec::new());
                a.devices.output(access.port, access.size, &access.data, |e| {
                    let ends = matches!(e, GuestEvent::Exit(_));
                    events.0.push(e);
                    if ends { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                });
                b.devices.output(access.port, access.size, &access.data, |e| {
                    events.1.push(e);
                    ControlFlow::Continue(())
                });
                for element in access.data.chunks(access.size) {
                    if access.port == 0xf4 {
                        break;
                    }
                    model.write(access.port, element);
                }
                match access.port {
                    0xf4 => {
                        prop_assert_eq!(events.0.len(), 1);
                        let first = writewatch::devices::exit::exit_value(&access.data[..access.size]);
                        prop_assert!(matches!(events.0[0], GuestEvent::Exit(v) if v == first));
                    }
                    0xf8 => {
                        prop_assert_eq!(events.0.len(), access.count);
                        for (event, element) in events.0.iter().zip(access.data.chunks(access.size)) {
                            let planted = element == (RECORD_AT as u32).to_le_bytes();
                            prop_assert_eq!(matches!(event, GuestEvent::Record(_)), planted, "{:?}", event);
                        }
                    }
                    _ => prop_assert!(events.0.is_empty()),
                }
            } else {
                let mut from_a = vec![0x00; access.data.len()];
                let mut from_b = vec![0xa5; access.data.len()];
                a.devices.input(access.port, access.size, &mut from_a);
                b.devices.input(access.port, access.size, &mut from_b);
                prop_assert_eq!(&from_a, &from_b, "stale bytes left in an `in` at {:#x}", access.port);
            }
        }
        a.stdout.finish(None);
        prop_assert_eq!(&*a.console.0.lock().unwrap(), &model.printed);
    }
}
