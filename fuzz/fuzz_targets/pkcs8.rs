#![no_main]
// A CA key file as the operator's disk holds it: PEM, encrypted (PBES2) or not, and the DER
// inside. Inputs asking for more than 1000 PBKDF2 iterations are parsed, never derived.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_pki::fuzz::key_file(data));
