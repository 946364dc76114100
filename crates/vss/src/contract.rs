//! The provider methods VSS calls and the status codes each may return
//! (`docs/vss-contract.md` §3.2).
//!
//! VSS translates any other code into `VSS_E_UNEXPECTED_PROVIDER_ERROR`, except for
//! `AbortSnapshots` and `OnUnload`, whose results it does not translate (§3.1).

use crate::Hresult;

/// Every method of the four provider interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Method {
    AreLunsSupported,
    BeginPrepareSnapshot,
    FillInLunInfo,
    GetTargetLuns,
    LocateLuns,
    OnLunEmpty,
    GetProviderCapabilities,
    OnLunStateChange,
    ResyncLuns,
    OnReuseLuns,
    EndPrepareSnapshots,
    PreCommitSnapshots,
    CommitSnapshots,
    PostCommitSnapshots,
    PreFinalCommitSnapshots,
    PostFinalCommitSnapshots,
    AbortSnapshots,
    OnLoad,
    OnUnload,
}

use Hresult as H;

const BASIC: &[Hresult] = &[
    H::S_OK,
    H::E_OUTOFMEMORY,
    H::E_INVALIDARG,
    H::E_ACCESSDENIED,
    H::VSS_E_PROVIDER_VETO,
];
const BEGIN_PREPARE: &[Hresult] = &[
    H::S_OK,
    H::E_OUTOFMEMORY,
    H::E_INVALIDARG,
    H::E_ACCESSDENIED,
    H::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
    H::VSS_E_NESTED_VOLUME_LIMIT,
    H::VSS_E_PROVIDER_VETO,
    H::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
    H::VSS_E_UNSUPPORTED_CONTEXT,
];
const END_PREPARE: &[Hresult] = &[
    H::S_OK,
    H::E_OUTOFMEMORY,
    H::E_INVALIDARG,
    H::E_ACCESSDENIED,
    H::VSS_E_INSUFFICIENT_STORAGE,
    H::VSS_E_OBJECT_NOT_FOUND,
    H::VSS_E_PROVIDER_VETO,
];
const COMMIT_PHASE: &[Hresult] = &[
    H::S_OK,
    H::E_OUTOFMEMORY,
    H::E_INVALIDARG,
    H::E_ACCESSDENIED,
    H::VSS_E_OBJECT_NOT_FOUND,
    H::VSS_E_PROVIDER_VETO,
];
const RESYNC: &[Hresult] = &[
    H::S_OK,
    H::E_OUTOFMEMORY,
    H::E_ACCESSDENIED,
    H::VSS_E_PROVIDER_VETO,
    H::VSS_E_INSUFFICIENT_STORAGE,
];
const CAPABILITIES: &[Hresult] = &[H::S_OK, H::E_NOTIMPL, H::E_ACCESSDENIED];
const REUSE: &[Hresult] = &[H::S_OK, H::E_NOTIMPL, H::E_ACCESSDENIED];
const UNLOAD: &[Hresult] = &[H::S_OK, H::S_FALSE];

impl Method {
    pub const ALL: [Method; 19] = [
        Method::AreLunsSupported,
        Method::BeginPrepareSnapshot,
        Method::FillInLunInfo,
        Method::GetTargetLuns,
        Method::LocateLuns,
        Method::OnLunEmpty,
        Method::GetProviderCapabilities,
        Method::OnLunStateChange,
        Method::ResyncLuns,
        Method::OnReuseLuns,
        Method::EndPrepareSnapshots,
        Method::PreCommitSnapshots,
        Method::CommitSnapshots,
        Method::PostCommitSnapshots,
        Method::PreFinalCommitSnapshots,
        Method::PostFinalCommitSnapshots,
        Method::AbortSnapshots,
        Method::OnLoad,
        Method::OnUnload,
    ];

    /// The COM method name.
    pub fn name(self) -> &'static str {
        match self {
            Method::AreLunsSupported => "AreLunsSupported",
            Method::BeginPrepareSnapshot => "BeginPrepareSnapshot",
            Method::FillInLunInfo => "FillInLunInfo",
            Method::GetTargetLuns => "GetTargetLuns",
            Method::LocateLuns => "LocateLuns",
            Method::OnLunEmpty => "OnLunEmpty",
            Method::GetProviderCapabilities => "GetProviderCapabilities",
            Method::OnLunStateChange => "OnLunStateChange",
            Method::ResyncLuns => "ResyncLuns",
            Method::OnReuseLuns => "OnReuseLuns",
            Method::EndPrepareSnapshots => "EndPrepareSnapshots",
            Method::PreCommitSnapshots => "PreCommitSnapshots",
            Method::CommitSnapshots => "CommitSnapshots",
            Method::PostCommitSnapshots => "PostCommitSnapshots",
            Method::PreFinalCommitSnapshots => "PreFinalCommitSnapshots",
            Method::PostFinalCommitSnapshots => "PostFinalCommitSnapshots",
            Method::AbortSnapshots => "AbortSnapshots",
            Method::OnLoad => "OnLoad",
            Method::OnUnload => "OnUnload",
        }
    }

    /// The codes this method may return (E_ACCESSDENIED is allowed everywhere for callers
    /// other than VSS).
    pub fn allowed(self) -> &'static [Hresult] {
        match self {
            Method::BeginPrepareSnapshot => BEGIN_PREPARE,
            Method::EndPrepareSnapshots => END_PREPARE,
            Method::PreCommitSnapshots
            | Method::CommitSnapshots
            | Method::PostCommitSnapshots
            | Method::AbortSnapshots => COMMIT_PHASE,
            Method::ResyncLuns => RESYNC,
            Method::GetProviderCapabilities => CAPABILITIES,
            Method::OnReuseLuns => REUSE,
            Method::OnUnload => UNLOAD,
            _ => BASIC,
        }
    }

    /// Whether VSS replaces a code outside [`Method::allowed`] with
    /// `VSS_E_UNEXPECTED_PROVIDER_ERROR` (all but AbortSnapshots and OnUnload).
    pub fn is_translated(self) -> bool {
        !matches!(self, Method::AbortSnapshots | Method::OnUnload)
    }

    pub fn allows(self, code: Hresult) -> bool {
        self.allowed().contains(&code)
    }

    /// What the requester sees when the provider returned `code` (VSS's translation rule).
    pub fn as_seen_by_vss(self, code: Hresult) -> Hresult {
        if self.is_translated() && !self.allows(code) {
            Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR
        } else {
            code
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_rule() {
        assert_eq!(
            Method::CommitSnapshots.as_seen_by_vss(Hresult::E_FAIL),
            Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR
        );
        assert_eq!(
            Method::CommitSnapshots.as_seen_by_vss(Hresult::VSS_E_PROVIDER_VETO),
            Hresult::VSS_E_PROVIDER_VETO
        );
        assert_eq!(
            Method::AbortSnapshots.as_seen_by_vss(Hresult::E_FAIL),
            Hresult::E_FAIL
        );
        assert_eq!(
            Method::OnUnload.as_seen_by_vss(Hresult::S_FALSE),
            Hresult::S_FALSE
        );
        assert_eq!(
            Method::PreFinalCommitSnapshots.as_seen_by_vss(Hresult::VSS_E_OBJECT_NOT_FOUND),
            Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR
        );
        assert!(
            Method::BeginPrepareSnapshot.allows(Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER)
        );
        assert!(!Method::BeginPrepareSnapshot.allows(Hresult::VSS_E_INSUFFICIENT_STORAGE));
        assert!(Method::EndPrepareSnapshots.allows(Hresult::VSS_E_INSUFFICIENT_STORAGE));
        assert!(Method::ResyncLuns.allows(Hresult::VSS_E_INSUFFICIENT_STORAGE));
    }

    #[test]
    fn every_method_allows_s_ok_and_no_translated_method_allows_s_false() {
        for m in Method::ALL {
            assert!(m.allows(Hresult::S_OK), "{m}");
            if m != Method::OnUnload {
                assert!(!m.allows(Hresult::S_FALSE), "{m}");
            }
        }
    }
}
