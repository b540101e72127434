#![no_main]
// An operator's campaign spec, then device status reports and operations driving the campaign.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_ota::fuzz::campaign(data));
