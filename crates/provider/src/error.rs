//! Internal failures and the one place that turns them into the status codes VSS allows.

use vss::{Hresult, Method, SnapshotContext, SnapshotState, VssId};

use crate::array::ControlError;

/// Why a provider method failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Array(#[from] ControlError),
    #[error("the LUN {0} is not a shadowlun LUN")]
    NotOurLun(String),
    /// A LUN with shadowlun's identity that the array no longer has: a snapshot LUN deleted
    /// on the array (by an administrator or its retention) while a backup document still
    /// names it.
    #[error("the LUN {0} is a shadowlun LUN that was deleted on the array (a deleted snapshot)")]
    DeletedSnapshot(String),
    #[error("the LUN {0} is an original LUN, not a snapshot LUN")]
    NotASnapshot(String),
    #[error("context {0} is not supported")]
    UnsupportedContext(SnapshotContext),
    /// A plex copy was asked of LUNs on an array whose storage cannot make one.
    #[error("the array cannot make a plex (full, independent) copy of {0}")]
    PlexUnsupported(String),
    #[error("a snapshot set may hold at most {max} volumes")]
    TooManyVolumes { max: usize },
    #[error("snapshot set {0} is not the set in progress")]
    UnknownSet(VssId),
    #[error("{method} was called while set {set} is in state {state:?}")]
    OutOfOrder {
        method: Method,
        set: VssId,
        state: SnapshotState,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ProviderError {
    /// The status code `method` returns for this failure: always one of `method.allowed()`
    /// for the methods that can fail (all but GetProviderCapabilities, OnReuseLuns, OnUnload).
    pub fn hresult(&self, method: Method) -> Hresult {
        use Hresult as H;
        use Method as M;
        let code = match (self, method) {
            (
                ProviderError::Array(ControlError::NoSpace(_)),
                M::EndPrepareSnapshots | M::ResyncLuns,
            ) => H::VSS_E_INSUFFICIENT_STORAGE,
            (ProviderError::Array(ControlError::LimitReached(_)), M::BeginPrepareSnapshot) => {
                H::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED
            }
            (ProviderError::TooManyVolumes { .. }, M::BeginPrepareSnapshot) => {
                H::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED
            }
            (
                ProviderError::NotOurLun(_) | ProviderError::DeletedSnapshot(_),
                M::BeginPrepareSnapshot,
            ) => H::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
            (
                ProviderError::UnsupportedContext(_) | ProviderError::PlexUnsupported(_),
                M::BeginPrepareSnapshot,
            ) => H::VSS_E_UNSUPPORTED_CONTEXT,
            (
                ProviderError::UnknownSet(_)
                | ProviderError::DeletedSnapshot(_)
                | ProviderError::Array(ControlError::NotFound(_)),
                m,
            ) if m.allows(H::VSS_E_OBJECT_NOT_FOUND) => H::VSS_E_OBJECT_NOT_FOUND,
            (ProviderError::InvalidArgument(_), m) if m.allows(H::E_INVALIDARG) => H::E_INVALIDARG,
            _ => H::VSS_E_PROVIDER_VETO,
        };
        debug_assert!(method.allows(code), "{method} may not return {code}");
        code
    }

    /// What the administrator should do about it: written with the veto to the event log.
    pub fn remedy(&self) -> &'static str {
        match self {
            ProviderError::Array(ControlError::Unreachable(_) | ControlError::Timeout(_)) => {
                "Check that the shadowlun array is running and reachable from this host \
                 (shadowlun-provider.exe status), then retry the backup."
            }
            ProviderError::Array(ControlError::Unauthorized(_)) => {
                "The array refused this host's token. Re-run shadowlun-provider.exe install \
                 with a valid host token (shadowlun host add prints one)."
            }
            ProviderError::Array(ControlError::NoSpace(_)) => {
                "Free space in the array's pool (delete old snapshot sets with \
                 shadowlun snapshot delete, or grow the pool), then retry."
            }
            ProviderError::Array(ControlError::LimitReached(_))
            | ProviderError::TooManyVolumes { .. } => {
                "Snapshot fewer volumes per set, or delete old snapshot sets, then retry."
            }
            ProviderError::NotOurLun(_) | ProviderError::NotASnapshot(_) => {
                "Only LUNs served by a shadowlun array can be snapshotted by this provider; \
                 use another provider for this volume."
            }
            ProviderError::DeletedSnapshot(_) => {
                "The snapshot LUN named by the backup document was deleted on the array \
                 (shadowlun snapshot list shows what is left); this shadow copy cannot be \
                 imported or used any more: take a new backup."
            }
            ProviderError::UnsupportedContext(_) => {
                "Request a context VSS allows for a hardware snapshot (not client-accessible, \
                 not both differential and plex)."
            }
            ProviderError::PlexUnsupported(_) => {
                "This array's storage cannot make plex copies (shadowlun status names its \
                 backend); request a differential (or default) hardware snapshot."
            }
            ProviderError::Array(ControlError::NotFound(_) | ControlError::Conflict(_))
            | ProviderError::UnknownSet(_)
            | ProviderError::OutOfOrder { .. } => {
                "VSS and the provider disagree about the snapshot set; the set was discarded. \
                 Retry the backup; if it persists, check shadowlun set list on the array."
            }
            ProviderError::Array(ControlError::Rejected { .. })
            | ProviderError::InvalidArgument(_) => {
                "Retry the backup; if it persists, collect the array log and report the error."
            }
        }
    }
}

/// What kind of failure an administrator is looking at: each class has an event id of its
/// own in the Windows event log (`provider-com`'s message table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The array does not answer (connection refused, reset, or no answer in time).
    ArrayUnreachable,
    /// The array's certificate is not the one pinned by its fingerprint.
    CertificateMismatch,
    /// The array refused this host's token.
    TokenRefused,
    /// A LUN (or snapshot LUN) VSS named is not one the array serves to this host.
    LunNotFound,
    /// The array refused the snapshot set in its current state, or a limit was reached.
    SetVetoed,
    /// The array's pool has no space for the snapshots.
    InsufficientStorage,
    /// The commit did not finish within its time limit (VSS holds writes meanwhile).
    CommitTimeLimit,
    /// Anything else (a request VSS should not have made, an unexpected answer).
    Other,
}

impl ProviderError {
    /// The class of this failure when `method` returned it.
    pub fn class(&self, method: Method) -> FailureClass {
        use FailureClass as F;
        match self {
            ProviderError::Array(ControlError::Timeout(_)) if method == Method::CommitSnapshots => {
                F::CommitTimeLimit
            }
            // The pinning verifier's refusal reaches us as a transport error naming the
            // certificate (`https::ClientError::Transport`).
            ProviderError::Array(ControlError::Unreachable(m))
                if m.to_lowercase().contains("certificate") =>
            {
                F::CertificateMismatch
            }
            ProviderError::Array(ControlError::Unreachable(_) | ControlError::Timeout(_)) => {
                F::ArrayUnreachable
            }
            ProviderError::Array(ControlError::Unauthorized(_)) => F::TokenRefused,
            ProviderError::Array(ControlError::NotFound(_))
            | ProviderError::NotOurLun(_)
            | ProviderError::DeletedSnapshot(_)
            | ProviderError::NotASnapshot(_) => F::LunNotFound,
            ProviderError::Array(
                ControlError::Conflict(_)
                | ControlError::LimitReached(_)
                | ControlError::Rejected { .. },
            )
            | ProviderError::TooManyVolumes { .. }
            | ProviderError::UnknownSet(_)
            | ProviderError::OutOfOrder { .. } => F::SetVetoed,
            ProviderError::Array(ControlError::NoSpace(_)) => F::InsufficientStorage,
            ProviderError::UnsupportedContext(_)
            | ProviderError::PlexUnsupported(_)
            | ProviderError::InvalidArgument(_) => F::Other,
        }
    }
}

/// A failure VSS will see, with the message for the Application event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    pub method: Method,
    pub hresult: Hresult,
    /// The failure's class (its event id on Windows).
    pub class: FailureClass,
    /// The failure itself, without the remedy (an insert of the event's message).
    pub detail: String,
    /// What failed and what to do.
    pub message: String,
}

impl ProviderEvent {
    pub fn new(method: Method, err: &ProviderError) -> Self {
        let hresult = err.hresult(method);
        Self {
            method,
            hresult,
            class: err.class(method),
            detail: err.to_string(),
            message: format!("{method} failed with {hresult}: {err}. {}", err.remedy()),
        }
    }
}

/// Where vetoes and the provider's log lines go: the Windows COM server writes vetoes to the
/// Application event log. The provider calls neither while applications are frozen.
pub trait EventSink: Send + Sync {
    fn report(&self, event: &ProviderEvent);

    /// An informational line about what the provider did.
    fn log(&self, message: &str) {
        tracing::info!("{message}");
    }
}

/// An [`EventSink`] that logs through `tracing`.
#[derive(Debug, Default)]
pub struct TracingEvents;

impl EventSink for TracingEvents {
    fn report(&self, event: &ProviderEvent) {
        tracing::error!(method = %event.method, hresult = %event.hresult, "{}", event.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_errors() -> Vec<ProviderError> {
        let a = |e: ControlError| ProviderError::Array(e);
        vec![
            a(ControlError::Unreachable("x".into())),
            a(ControlError::Timeout("x".into())),
            a(ControlError::Unauthorized("x".into())),
            a(ControlError::NotFound("x".into())),
            a(ControlError::Conflict("x".into())),
            a(ControlError::NoSpace("x".into())),
            a(ControlError::LimitReached("x".into())),
            a(ControlError::Rejected {
                code: "c".into(),
                detail: "d".into(),
            }),
            ProviderError::NotOurLun("x".into()),
            ProviderError::DeletedSnapshot("x".into()),
            ProviderError::NotASnapshot("x".into()),
            ProviderError::UnsupportedContext(SnapshotContext(0x60000)),
            ProviderError::PlexUnsupported("x".into()),
            ProviderError::TooManyVolumes { max: 64 },
            ProviderError::UnknownSet(VssId::nil()),
            ProviderError::OutOfOrder {
                method: Method::CommitSnapshots,
                set: VssId::nil(),
                state: SnapshotState::Prepared,
            },
            ProviderError::InvalidArgument("x".into()),
        ]
    }

    #[test]
    fn every_error_maps_to_an_allowed_code_for_every_method() {
        // GetProviderCapabilities, OnReuseLuns and OnUnload never fail in this provider.
        for m in Method::ALL
            .into_iter()
            .filter(|m| m.allows(Hresult::VSS_E_PROVIDER_VETO))
        {
            for e in all_errors() {
                let h = e.hresult(m);
                assert!(m.allows(h), "{m} would return {h} for {e}");
                assert!(h.is_failure(), "{m}: {e} mapped to success");
            }
        }
    }

    #[test]
    fn failure_classes() {
        use FailureClass as F;
        let a = |e: ControlError| ProviderError::Array(e);
        let c = Method::CommitSnapshots;
        let cases = [
            (a(ControlError::Timeout("3s".into())), c, F::CommitTimeLimit),
            (
                a(ControlError::Timeout("30s".into())),
                Method::EndPrepareSnapshots,
                F::ArrayUnreachable,
            ),
            (
                a(ControlError::Unreachable("refused".into())),
                c,
                F::ArrayUnreachable,
            ),
            (
                a(ControlError::Unreachable(
                    "invalid peer certificate: ApplicationVerificationFailure".into(),
                )),
                c,
                F::CertificateMismatch,
            ),
            (
                a(ControlError::Unauthorized("x".into())),
                c,
                F::TokenRefused,
            ),
            (
                ProviderError::NotOurLun("x".into()),
                Method::BeginPrepareSnapshot,
                F::LunNotFound,
            ),
            (a(ControlError::Conflict("x".into())), c, F::SetVetoed),
            (
                a(ControlError::NoSpace("x".into())),
                Method::EndPrepareSnapshots,
                F::InsufficientStorage,
            ),
            (ProviderError::InvalidArgument("x".into()), c, F::Other),
        ];
        for (e, m, class) in cases {
            assert_eq!(e.class(m), class, "{e} in {m}");
            let ev = ProviderEvent::new(m, &e);
            assert_eq!(ev.class, class);
            assert_eq!(ev.detail, e.to_string());
        }
    }

    #[test]
    fn specific_mappings() {
        let ns = ProviderError::Array(ControlError::NoSpace("pool".into()));
        assert_eq!(
            ns.hresult(Method::EndPrepareSnapshots),
            Hresult::VSS_E_INSUFFICIENT_STORAGE
        );
        assert_eq!(
            ns.hresult(Method::BeginPrepareSnapshot),
            Hresult::VSS_E_PROVIDER_VETO
        );
        assert_eq!(
            ns.hresult(Method::ResyncLuns),
            Hresult::VSS_E_INSUFFICIENT_STORAGE
        );
        let unknown = ProviderError::UnknownSet(VssId::nil());
        assert_eq!(
            unknown.hresult(Method::CommitSnapshots),
            Hresult::VSS_E_OBJECT_NOT_FOUND
        );
        assert_eq!(
            unknown.hresult(Method::PreFinalCommitSnapshots),
            Hresult::VSS_E_PROVIDER_VETO
        );
        assert_eq!(
            ProviderError::NotOurLun("l".into()).hresult(Method::BeginPrepareSnapshot),
            Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER
        );
        let deleted = ProviderError::DeletedSnapshot("l".into());
        for m in [
            Method::LocateLuns,
            Method::ResyncLuns,
            Method::OnLunStateChange,
        ] {
            assert!(m.allows(deleted.hresult(m)), "{m}");
        }
        assert!(deleted.to_string().contains("deleted on the array"));
        assert!(!deleted.remedy().contains("another provider"));
        let ev = ProviderEvent::new(Method::EndPrepareSnapshots, &ns);
        assert!(
            ev.message
                .contains("VSS_E_INSUFFICIENT_STORAGE (0x8004231F)"),
            "{}",
            ev.message
        );
        assert!(ev.message.contains("Free space"), "{}", ev.message);
    }
}
