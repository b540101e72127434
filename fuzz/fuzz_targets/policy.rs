#![no_main]
// Any text either fails to parse or yields a policy whose decisions are consistent.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_policy::fuzz::parse_and_decide(data));
