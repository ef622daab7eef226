//! P-2: `prost::Message::decode` for every message type of package qpq.v1. The first input
//! byte picks the type (modulo the number of types), the rest is decoded. A value that decodes
//! is re-encoded and decoded again: both values must be equal and the second encoding
//! byte-identical to the first (encoding is canonical once unknown fields are dropped).
//!
//! The list below must name every `message` of `proto/qpq/v1/*.proto`; the test
//! `proto/tests/fuzz_coverage.rs` fails when one is missing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qpq_proto::v1;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(first) = M::decode(bytes) else {
        return;
    };
    let encoded = first.encode_to_vec();
    let second = M::decode(&encoded[..]).expect("a re-encoded message decodes");
    assert_eq!(first, second);
    assert_eq!(second.encode_to_vec(), encoded, "encoding is not canonical");
}

macro_rules! every_message {
    ($($name:ident),* $(,)?) => {
        /// Every message type, in .proto file order.
        const TYPES: &[(&str, fn(&[u8]))] = &[$((stringify!($name), round_trip::<v1::$name>)),*];
    };
}

every_message!(
    AppMessage,
    Text,
    Reaction,
    Receipt,
    TypingNotice,
    Edit,
    Delete,
    FileRef,
    AppData,
    Reply,
    OpaqueRegisterStartRequest,
    OpaqueRegisterStartResponse,
    OpaqueRegisterFinishRequest,
    OpaqueRegisterFinishResponse,
    OpaqueLoginStartRequest,
    OpaqueLoginStartResponse,
    OpaqueLoginFinishRequest,
    OpaqueLoginFinishResponse,
    LogoutRequest,
    LogoutResponse,
    DeleteAccountRequest,
    DeleteAccountResponse,
    UploadBlobRequest,
    UploadBlobResponse,
    DownloadBlobRequest,
    DownloadBlobResponse,
    CreateChannelRequest,
    CreateChannelResponse,
    RemoveMemberRequest,
    RemoveMemberResponse,
    UpdateGroupMetadataRequest,
    UpdateGroupMetadataResponse,
    ListGroupMembersRequest,
    GroupMember,
    ListGroupMembersResponse,
    RotateKeysRequest,
    RotateKeysResponse,
    Error,
    Empty,
    SessionTokenView,
    QueuedMessage,
    EnqueueRequest,
    EnqueueResponse,
    FetchRequest,
    FetchResponse,
    FetchWaitRequest,
    PeekRequest,
    PeekResponse,
    AckRequest,
    AckResponse,
    BatchEnqueueRequest,
    BatchEnqueueResult,
    BatchEnqueueResponse,
    RegisterDeviceRequest,
    RegisterDeviceResponse,
    ListDevicesRequest,
    DeviceInfo,
    ListDevicesResponse,
    RevokeDeviceRequest,
    RevokeDeviceResponse,
    RegisterPushTokenRequest,
    RegisterPushTokenResponse,
    RelayEnqueueRequest,
    RelayEnqueueResponse,
    RelayBatchEnqueueRequest,
    RelayBatchEnqueueResponse,
    ProxyFetchKeyPackageRequest,
    ProxyFetchHybridKeyRequest,
    ProxyResolveUserRequest,
    FederationHealthRequest,
    FederationHealthResponse,
    UploadKeyPackageRequest,
    UploadKeyPackageResponse,
    FetchKeyPackageRequest,
    FetchKeyPackageResponse,
    UploadHybridKeyRequest,
    UploadHybridKeyResponse,
    FetchHybridKeyRequest,
    FetchHybridKeyResponse,
    FetchHybridKeysRequest,
    HybridKeyEntry,
    FetchHybridKeysResponse,
    ReportMessageRequest,
    ReportMessageResponse,
    BlockUserRequest,
    BlockUserResponse,
    UnblockUserRequest,
    UnblockUserResponse,
    ListReportsRequest,
    Report,
    ListReportsResponse,
    ListBlockedRequest,
    ListBlockedResponse,
    PublishEndpointRequest,
    PublishEndpointResponse,
    ResolveEndpointRequest,
    ResolveEndpointResponse,
    HealthRequest,
    HealthResponse,
    NewMessage,
    Typing,
    Presence,
    Membership,
    StoreRecoveryBundleRequest,
    StoreRecoveryBundleResponse,
    FetchRecoveryBundleRequest,
    FetchRecoveryBundleResponse,
    DeleteRecoveryBundleRequest,
    DeleteRecoveryBundleResponse,
    ResolveUserRequest,
    ResolveUserResponse,
    ResolveIdentityRequest,
    ResolveIdentityResponse,
    RevokeKeyRequest,
    RevokeKeyResponse,
    CheckRevocationRequest,
    CheckRevocationResponse,
    AuditKeyTransparencyRequest,
    AuditKeyTransparencyResponse,
    Reauth,
    FetchGroupInfoRequest,
    FetchGroupInfoResponse,
    BlockedUser,
    FetchKeyPackagesRequest,
    KeyPackageEntry,
    FetchKeyPackagesResponse,
    ResolveUsersRequest,
    ResolvedUser,
    ResolveUsersResponse,
);

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let (_, decode) = TYPES[usize::from(selector) % TYPES.len()];
    decode(rest);
});
