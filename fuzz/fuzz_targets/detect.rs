#![no_main]
// An arbitrary event stream keeps the detection engine within its limits, and every alert
// explains itself; the first byte chooses between the event stream and configuration text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| match data.split_first() {
    Some((0, rest)) => moat_detect::fuzz::config(rest),
    Some((_, rest)) => moat_detect::fuzz::events(rest),
    None => {}
});
