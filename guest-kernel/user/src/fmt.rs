//! Formatting without an allocator: a fixed buffer that implements
//! `core::fmt::Write`, for console lines and JSON records.

/// A 512-byte text buffer; output past its end is dropped.
pub struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    /// An empty buffer.
    pub const fn new() -> Self {
        Buf {
            bytes: [0; 512],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Default for Buf {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
