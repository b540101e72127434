//! Randomness from the system CSPRNG (via aws-lc-rs, the one crypto library in the build).

use crate::PkiError;

/// Bytes in a certificate serial number: 16 bytes with the top bit cleared give 127 bits of
/// entropy (CA/Browser Forum baseline: at least 64) and a positive INTEGER of at most 20
/// bytes (RFC 5280 4.1.2.2).
const SERIAL_LEN: usize = 16;

pub(crate) fn fill(buf: &mut [u8]) -> Result<(), PkiError> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| PkiError::Generation("the system random number generator failed".into()))
}

/// A fresh random serial number (positive, never zero).
pub(crate) fn serial_number() -> Result<rcgen::SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_LEN];
    fill(&mut bytes)?;
    bytes[0] &= 0x7f; // positive INTEGER
    // Keep the encoding at full length so the serial never collapses towards zero.
    bytes[0] |= 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// `len` random bytes as lowercase hex.
pub(crate) fn hex(len: usize) -> Result<String, PkiError> {
    let mut bytes = vec![0u8; len];
    fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
