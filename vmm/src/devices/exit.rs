//! The exit device at port 0xf4, where QEMU's `isa-debug-exit` also sits:
//! the guest writes a value and the VM ends with that exit code.

/// The exit code for a write of `data` (1, 2 or 4 little-endian bytes).
pub fn exit_code(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let len = data.len().min(4);
    bytes[..len].copy_from_slice(&data[..len]);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(exit_code(&[3]), 3);
        assert_eq!(exit_code(&[0x34, 0x12]), 0x1234);
        assert_eq!(exit_code(&[1, 0, 0, 0]), 1);
        assert_eq!(exit_code(&[]), 0);
    }
}
