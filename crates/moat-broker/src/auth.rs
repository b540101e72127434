//! Who a connection is, and what it may do.
//!
//! The network layer produces a [`Principal`] (from a verified client certificate, or
//! anonymous on a dangerous plaintext listener). Every publish and subscribe goes through an
//! [`Authorizer`]; only this module can make the [`Authorized`] token the router requires,
//! so routing a message that skipped the check does not compile.
//!
//! Today's authorizer is [`NamespaceAuthorizer`]: a device may publish and subscribe only
//! under `devices/{its id}/#`. The policy engine replaces it through the same trait.

use moat_types::{ClientId, DeviceId, TopicFilter, TopicName};
use std::fmt;

/// The authenticated party behind a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A device whose certificate chain was verified against the hub's CA.
    Device(DeviceId),
    /// No credentials; only possible on a listener configured with
    /// `--danger-allow-anonymous`.
    Anonymous,
    /// No credentials on a listener that does not allow anonymous clients: every CONNECT is
    /// refused.
    Unauthenticated,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(id) => write!(f, "device:{id}"),
            Self::Anonymous => f.write_str("anonymous"),
            Self::Unauthenticated => f.write_str("unauthenticated"),
        }
    }
}

/// Why a CONNECT was refused by the authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectDenied {
    /// The client id does not match the certificate's device id.
    ClientIdMismatch,
    /// The principal may not connect at all.
    NotAuthorized,
}

/// Decides what a principal may do. Implementations must be cheap: they run per packet.
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// May `principal` connect with `client_id`? `None` client ids are assigned by the hub.
    fn authorize_connect(
        &self,
        principal: &Principal,
        client_id: &ClientId,
    ) -> Result<(), ConnectDenied>;
    /// May `principal` publish to `topic`?
    fn may_publish(&self, principal: &Principal, topic: &TopicName) -> bool;
    /// May `principal` subscribe with `filter`? The filter must not reach beyond what it may
    /// receive: a wildcard that could match a forbidden topic is refused whole.
    fn may_subscribe(&self, principal: &Principal, filter: &TopicFilter) -> bool;
}

/// Proof that the value inside passed the [`Authorizer`]. Only this module constructs it.
#[derive(Debug)]
pub struct Authorized<T>(T);

impl<T> Authorized<T> {
    /// The authorized value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// Borrow the authorized value.
    pub fn get(&self) -> &T {
        &self.0
    }
}

/// Checks a publish, producing the token the router requires.
pub(crate) fn check_publish<T>(
    authorizer: &dyn Authorizer,
    principal: &Principal,
    topic: &TopicName,
    value: T,
) -> Option<Authorized<T>> {
    authorizer
        .may_publish(principal, topic)
        .then_some(Authorized(value))
}

/// Checks a subscription, producing the token the router requires.
pub(crate) fn check_subscribe<T>(
    authorizer: &dyn Authorizer,
    principal: &Principal,
    filter: &TopicFilter,
    value: T,
) -> Option<Authorized<T>> {
    authorizer
        .may_subscribe(principal, filter)
        .then_some(Authorized(value))
}

/// Grants trusted internal publishers (the hub itself, restored wills) the token.
pub(crate) fn trusted<T>(value: T) -> Authorized<T> {
    Authorized(value)
}

/// The foundation's rule, deny by default: a device's client id must equal its device id,
/// and it may publish and subscribe only under `devices/{id}/#`. Anonymous principals (only
/// on a dangerous plaintext listener) are unrestricted until the policy engine exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct NamespaceAuthorizer;

const NAMESPACE_ROOT: &[u8] = b"devices";

impl NamespaceAuthorizer {
    fn in_namespace<'a>(id: &DeviceId, mut levels: impl Iterator<Item = &'a [u8]>) -> bool {
        levels.next() == Some(NAMESPACE_ROOT) && levels.next() == Some(id.as_str().as_bytes())
    }
}

impl Authorizer for NamespaceAuthorizer {
    fn authorize_connect(
        &self,
        principal: &Principal,
        client_id: &ClientId,
    ) -> Result<(), ConnectDenied> {
        match principal {
            Principal::Device(id) if id.as_str() == client_id.as_str() => Ok(()),
            Principal::Device(_) => Err(ConnectDenied::ClientIdMismatch),
            Principal::Anonymous => Ok(()),
            Principal::Unauthenticated => Err(ConnectDenied::NotAuthorized),
        }
    }

    fn may_publish(&self, principal: &Principal, topic: &TopicName) -> bool {
        match principal {
            Principal::Device(id) => Self::in_namespace(id, topic.levels()),
            Principal::Anonymous => true,
            Principal::Unauthenticated => false,
        }
    }

    fn may_subscribe(&self, principal: &Principal, filter: &TopicFilter) -> bool {
        // The first two levels are compared literally, so `+` or `#` there (which could
        // reach another device's namespace) never matches.
        match principal {
            Principal::Device(id) => Self::in_namespace(id, filter.levels()),
            Principal::Anonymous => true,
            Principal::Unauthenticated => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Principal {
        Principal::Device(DeviceId::parse(id).expect("valid id"))
    }

    #[test]
    fn namespace_rule() {
        let a = NamespaceAuthorizer;
        let p = dev("d1");
        let t = |s: &str| TopicName::parse(s).expect("topic");
        let f = |s: &str| TopicFilter::parse(s).expect("filter");
        assert!(a.may_publish(&p, &t("devices/d1/temp")));
        assert!(a.may_publish(&p, &t("devices/d1")));
        assert!(!a.may_publish(&p, &t("devices/d2/temp")));
        assert!(!a.may_publish(&p, &t("devices/d10/temp")));
        assert!(!a.may_publish(&p, &t("other/d1")));
        assert!(a.may_subscribe(&p, &f("devices/d1/#")));
        assert!(a.may_subscribe(&p, &f("devices/d1/+/x")));
        assert!(!a.may_subscribe(&p, &f("devices/+/temp")));
        assert!(!a.may_subscribe(&p, &f("devices/#")));
        assert!(!a.may_subscribe(&p, &f("#")));
        let c = |s: &str| ClientId::parse(s).expect("client id");
        assert!(a.authorize_connect(&p, &c("d1")).is_ok());
        assert_eq!(
            a.authorize_connect(&p, &c("d2")),
            Err(ConnectDenied::ClientIdMismatch)
        );
        assert!(a.may_subscribe(&Principal::Anonymous, &f("#")));
    }
}
