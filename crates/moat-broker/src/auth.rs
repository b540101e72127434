//! Who a connection is, and what it may do.
//!
//! The network layer produces a [`Principal`] (from a verified client certificate, or
//! anonymous on a dangerous plaintext listener). At CONNECT the [`Authorizer`] decides whether
//! it may connect and binds its [`Permissions`] (publish, retain, subscribe, receive), which
//! the session keeps and the hub swaps when policies or the device's standing change
//! ([`Broker::reauthorize`](crate::Broker::reauthorize)). Every publish and subscribe is
//! checked against them; only this module can make the [`Authorized`] token the router
//! requires, so routing a message that skipped the check does not compile.
//!
//! The hub's authorizer is the policy engine (`moat-hub`, `moat-policy`).
//! [`NamespaceAuthorizer`], the foundation's fixed rule (`devices/{id}/#`), remains for
//! embedders and tests without policies.

use moat_types::{ClientId, DeviceId, Quota, QuotaLimit, TopicFilter, TopicName};
use std::fmt;
use std::sync::Arc;

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
    /// The identity connected more often in the last minute than its
    /// `connections_per_minute` quota allows.
    ConnectionRateExceeded,
}

/// What one connected identity may do, bound once at CONNECT and again whenever the policies
/// change ([`Broker::reauthorize`](crate::Broker::reauthorize)). Implementations must be cheap
/// and must not allocate: they run per packet.
pub trait Permissions: Send + Sync + fmt::Debug {
    /// May it publish to `topic`?
    fn may_publish(&self, topic: &TopicName) -> bool;
    /// May it publish to `topic` with the retain flag (set or clear a retained message)?
    fn may_retain(&self, topic: &TopicName) -> bool {
        self.may_publish(topic)
    }
    /// May it subscribe with `filter`? The filter must not reach beyond what it may
    /// receive: a wildcard that could match a forbidden topic is refused whole.
    fn may_subscribe(&self, filter: &TopicFilter) -> bool;
    /// Whether deliveries are checked one by one with [`may_receive`](Self::may_receive).
    /// When false, receiving follows from the subscription alone and the hot path skips the
    /// call.
    fn checks_receive(&self) -> bool {
        false
    }
    /// May a message on `topic` be delivered to it?
    fn may_receive(&self, _topic: &TopicName) -> bool {
        true
    }
    /// May every message a subscription with `filter` can match be delivered? When true
    /// for all of a session's subscriptions, its deliveries skip
    /// [`may_receive`](Self::may_receive) (the common case: receive rules that grant what
    /// subscribe grants).
    fn may_receive_all(&self, _filter: &TopicFilter) -> bool {
        !self.checks_receive()
    }
    /// Told when a publish (`retain` if it carried the retain flag) was refused, off the
    /// allowed path, so that the refusal can be explained and recorded.
    fn publish_denied(&self, _topic: &TopicName, _retain: bool) {}
    /// Told when a subscription was refused.
    fn subscribe_denied(&self, _filter: &TopicFilter) {}
    /// The identity's usage limits, read when the permissions are bound or swapped (never
    /// per packet). Enforcement is described in [`Quota`].
    fn quota(&self) -> Quota {
        Quota::UNLIMITED
    }
    /// Told when the connection hit `limit`: once per throttling episode for the rates, on
    /// each refusal for sizes and counts. Off the fast path; implementations that record it
    /// bound how often.
    fn quota_exceeded(&self, _limit: QuotaLimit) {}
}

/// Permissions that allow nothing: the state of a session whose identity may no longer
/// connect.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl Permissions for DenyAll {
    fn may_publish(&self, _: &TopicName) -> bool {
        false
    }
    fn may_subscribe(&self, _: &TopicFilter) -> bool {
        false
    }
    fn checks_receive(&self) -> bool {
        true
    }
    fn may_receive(&self, _: &TopicName) -> bool {
        false
    }
}

/// Decides who may connect and binds what they may do.
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// May `principal` connect with `client_id` (assigned by the hub when the client sent
    /// none)? If so, what may it do.
    fn authorize_connect(
        &self,
        principal: &Principal,
        client_id: &ClientId,
    ) -> Result<Arc<dyn Permissions>, ConnectDenied>;
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

/// Checks a publish (and, with `retain`, the right to retain), producing the token the
/// router requires, with a one-topic memory: `last_allowed` holds the last topic these
/// permissions allowed a plain (not retained) publish to. Devices publish to the same few
/// topics over and over, so the common case is one comparison. The caller clears the memory
/// whenever the permissions change (decisions are a pure function of permissions and topic).
pub(crate) fn check_publish_remembering<T>(
    permissions: &dyn Permissions,
    last_allowed: &mut Option<Box<[u8]>>,
    topic: &TopicName,
    retain: bool,
    value: T,
) -> Option<Authorized<T>> {
    if !retain && last_allowed.as_deref() == Some(topic.as_bytes()) {
        return Some(Authorized(value));
    }
    let allowed = permissions.may_publish(topic) && (!retain || permissions.may_retain(topic));
    if allowed && !retain {
        *last_allowed = Some(topic.as_bytes().into());
    }
    allowed.then_some(Authorized(value))
}

/// Checks a subscription, producing the token the router requires.
pub(crate) fn check_subscribe<T>(
    permissions: &dyn Permissions,
    filter: &TopicFilter,
    value: T,
) -> Option<Authorized<T>> {
    permissions
        .may_subscribe(filter)
        .then_some(Authorized(value))
}

/// Grants trusted internal publishers (the hub itself, restored wills) the token.
pub(crate) fn trusted<T>(value: T) -> Authorized<T> {
    Authorized(value)
}

/// The foundation's rule, deny by default: a device's client id must equal its device id,
/// and it may publish and subscribe only under `devices/{id}/#`. Anonymous principals (only
/// on a dangerous plaintext listener) are unrestricted. The hub replaces it with the policy
/// engine; it stays as the rule for embedders and tests that need no policies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NamespaceAuthorizer;

const NAMESPACE_ROOT: &[u8] = b"devices";

/// What [`NamespaceAuthorizer`] grants one principal.
#[derive(Debug, Clone)]
pub struct Namespace(Option<DeviceId>);

impl Namespace {
    /// Everything: the rule for anonymous clients of a dangerous plaintext listener.
    pub fn unrestricted() -> Self {
        Self(None)
    }

    /// Only `devices/{id}/#`.
    pub fn device(id: DeviceId) -> Self {
        Self(Some(id))
    }

    fn within<'a>(&self, mut levels: impl Iterator<Item = &'a [u8]>) -> bool {
        match &self.0 {
            // The first two levels are compared literally, so `+` or `#` there (which could
            // reach another device's namespace) never matches.
            Some(id) => {
                levels.next() == Some(NAMESPACE_ROOT)
                    && levels.next() == Some(id.as_str().as_bytes())
            }
            None => true,
        }
    }
}

impl Permissions for Namespace {
    fn may_publish(&self, topic: &TopicName) -> bool {
        self.within(topic.levels())
    }

    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.within(filter.levels())
    }
}

impl Authorizer for NamespaceAuthorizer {
    fn authorize_connect(
        &self,
        principal: &Principal,
        client_id: &ClientId,
    ) -> Result<Arc<dyn Permissions>, ConnectDenied> {
        match principal {
            Principal::Device(id) if client_id.belongs_to(id) => {
                Ok(Arc::new(Namespace(Some(id.clone()))))
            }
            Principal::Device(_) => Err(ConnectDenied::ClientIdMismatch),
            Principal::Anonymous => Ok(Arc::new(Namespace(None))),
            Principal::Unauthenticated => Err(ConnectDenied::NotAuthorized),
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
        let c = |s: &str| ClientId::parse(s).expect("client id");
        let p = a.authorize_connect(&dev("d1"), &c("d1")).expect("own id");
        let t = |s: &str| TopicName::parse(s).expect("topic");
        let f = |s: &str| TopicFilter::parse(s).expect("filter");
        assert!(p.may_publish(&t("devices/d1/temp")));
        assert!(p.may_publish(&t("devices/d1")));
        assert!(!p.may_publish(&t("devices/d2/temp")));
        assert!(!p.may_publish(&t("devices/d10/temp")));
        assert!(!p.may_publish(&t("other/d1")));
        assert!(p.may_subscribe(&f("devices/d1/#")));
        assert!(p.may_subscribe(&f("devices/d1/+/x")));
        assert!(!p.may_subscribe(&f("devices/+/temp")));
        assert!(!p.may_subscribe(&f("devices/#")));
        assert!(!p.may_subscribe(&f("#")));
        assert_eq!(
            a.authorize_connect(&dev("d1"), &c("d2")).err(),
            Some(ConnectDenied::ClientIdMismatch)
        );
        let anon = a
            .authorize_connect(&Principal::Anonymous, &c("x"))
            .expect("anonymous");
        assert!(anon.may_subscribe(&f("#")));
        assert_eq!(
            a.authorize_connect(&Principal::Unauthenticated, &c("x"))
                .err(),
            Some(ConnectDenied::NotAuthorized)
        );
    }
}
