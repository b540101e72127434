#![no_main]
// Operator-signed metadata the hub checks against its image repository and director
// (POST /api/v1/ota/targets, PUT /api/v1/ota/root); the first byte selects which.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_ota::fuzz::upload(data));
