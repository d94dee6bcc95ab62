//! The exit device at port 0xf4, where QEMU's `isa-debug-exit` also sits:
//! the guest writes a value and the VM ends. How the value becomes the
//! process exit code is `exit_status`'s business, not the device's.

/// The value of a write of `data` (1, 2 or 4 little-endian bytes).
pub fn exit_value(data: &[u8]) -> u32 {
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
        assert_eq!(exit_value(&[3]), 3);
        assert_eq!(exit_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(exit_value(&[1, 0, 0, 0]), 1);
        assert_eq!(exit_value(&[0, 1, 0, 0]), 0x100);
        assert_eq!(exit_value(&[]), 0);
    }
}
