#![no_main]
// Bytes from an unauthenticated EST client (a base64 body, or the DER inside it), and the
// same bytes as a client certificate the hub reads after TLS verification.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(der) = moat_pki::decode_est_base64(data) {
        // Only the canonical spelling decodes (whitespace aside).
        let significant: Vec<u8> = data.iter().copied().filter(|b| !b" \t\r\n".contains(b)).collect();
        assert_eq!(moat_pki::encode_est_base64(&der).replace("\r\n", "").as_bytes(), significant);
        check_request(&der);
    }
    check_request(data);

    let facts = moat_pki::certificate_facts(data);
    if let Ok(id) = moat_pki::device_id_from_certificate(data) {
        assert_eq!(facts.ok().and_then(|f| f.device_id), Some(id));
    }
});

/// A request that parses keeps its promises: its key is the request's own
/// SubjectPublicKeyInfo, and every string meant for the audit log is printable.
fn check_request(der: &[u8]) {
    let Ok(request) = moat_pki::parse_certificate_request(der) else {
        return;
    };
    assert!(der.windows(request.public_key_info_der().len()).any(|w| w == request.public_key_info_der()));
    let asked = request.requested_extensions();
    let strings = asked
        .subject_alt_names
        .iter()
        .chain(&asked.extended_key_usages)
        .chain(&asked.other_extensions)
        .map(String::as_str)
        .chain(request.subject_common_name());
    for s in strings {
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
}
