/// Bounds on what a peer can make the decoder accept or allocate.
///
/// Every field is attacker-controlled input's ceiling; the defaults suit a device fleet and
/// can be raised in the hub configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole packet (fixed header included) accepted, in bytes. Checked from the
    /// fixed header before the rest is buffered (MQTT-3.2.2.3.6). Default 1 MiB; the
    /// protocol maximum is 268,435,460.
    pub max_packet_size: u32,
    /// Most user properties in one packet. Default 32.
    pub max_user_properties: usize,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE. Default 64.
    pub max_filters_per_packet: usize,
    /// Most subscription identifiers in one PUBLISH (decoded on the client side only).
    /// Default 32.
    pub max_subscription_identifiers: usize,
}

impl Limits {
    /// The protocol's own maximum packet size: a 4-byte remaining length plus the
    /// 5-byte fixed header at most.
    pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 268_435_455 + 5;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_user_properties: 32,
            max_filters_per_packet: 64,
            max_subscription_identifiers: 32,
        }
    }
}
