#![no_main]
// An EST response body as the agent receives it from the hub (base64 certs-only CMS), and the
// DER message inside it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_agent::fuzz::est_response(data));
