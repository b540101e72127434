#![no_main]
// An MQTT payload a device publishes on devices/{id}/ota/status or devices/{id}/ota/inventory.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_ota::fuzz::report(data));
