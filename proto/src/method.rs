//! Method ids (the first two bytes of a request frame). Ids never move; see DESIGN.md §3.

macro_rules! methods {
    ($($(#[$doc:meta])* $name:ident = $id:literal, $label:literal;)*) => {
        $( $(#[$doc])* pub const $name: u16 = $id; )*

        /// Every assigned method id with its name, in id order.
        pub const ALL: &[(u16, &str)] = &[ $( ($id, $label), )* ];
    };
}

methods! {
    /// OPAQUE registration, first message.
    OPAQUE_REGISTER_START = 100, "OpaqueRegisterStart";
    /// OPAQUE registration, upload; creates the account.
    OPAQUE_REGISTER_FINISH = 101, "OpaqueRegisterFinish";
    /// OPAQUE login, KE1 to KE2.
    OPAQUE_LOGIN_START = 102, "OpaqueLoginStart";
    /// OPAQUE login, KE3; returns a session token.
    OPAQUE_LOGIN_FINISH = 103, "OpaqueLoginFinish";
    /// Ends the session.
    LOGOUT = 104, "Logout";
    /// Queue a message for a channel.
    ENQUEUE = 200, "Enqueue";
    /// Read queued messages.
    FETCH = 201, "Fetch";
    /// Read queued messages, waiting for one when none is queued.
    FETCH_WAIT = 202, "FetchWait";
    /// Count queued messages.
    PEEK = 203, "Peek";
    /// Remove delivered messages.
    ACK = 204, "Ack";
    /// Several enqueues.
    BATCH_ENQUEUE = 205, "BatchEnqueue";
    /// Store KeyPackages.
    UPLOAD_KEY_PACKAGE = 300, "UploadKeyPackage";
    /// Pop one KeyPackage.
    FETCH_KEY_PACKAGE = 301, "FetchKeyPackage";
    /// Store the device's hybrid public key.
    UPLOAD_HYBRID_KEY = 302, "UploadHybridKey";
    /// Read one device's hybrid public key.
    FETCH_HYBRID_KEY = 303, "FetchHybridKey";
    /// Read several devices' hybrid public keys.
    FETCH_HYBRID_KEYS = 304, "FetchHybridKeys";
    /// Pop one KeyPackage of each of several devices, in one storage transaction (ADR 0110).
    FETCH_KEY_PACKAGES = 305, "FetchKeyPackages";
    /// Create a DM or group channel.
    CREATE_CHANNEL = 400, "CreateChannel";
    /// Remove a channel member.
    REMOVE_MEMBER = 410, "RemoveMember";
    /// Replace the channel's opaque metadata.
    UPDATE_GROUP_METADATA = 411, "UpdateGroupMetadata";
    /// List channel members and their devices.
    LIST_GROUP_MEMBERS = 412, "ListGroupMembers";
    /// Reserved.
    ROTATE_KEYS = 413, "RotateKeys";
    /// The channel's latest GroupInfo, for rejoining by external commit.
    FETCH_GROUP_INFO = 414, "FetchGroupInfo";
    /// Reserved.
    REPORT_MESSAGE = 420, "ReportMessage";
    /// Block an account (ADR 0060).
    BLOCK_USER = 421, "BlockUser";
    /// End a block.
    UNBLOCK_USER = 422, "UnblockUser";
    /// Reserved.
    LIST_REPORTS = 423, "ListReports";
    /// The accounts the caller blocks.
    LIST_BLOCKED = 424, "ListBlocked";
    /// Username to identity key and devices.
    RESOLVE_USER = 500, "ResolveUser";
    /// Identity key to username and devices.
    RESOLVE_IDENTITY = 501, "ResolveIdentity";
    /// Several usernames to identity keys and devices (ADR 0110).
    RESOLVE_USERS = 502, "ResolveUsers";
    /// Reserved.
    REVOKE_KEY = 510, "RevokeKey";
    /// Reserved.
    CHECK_REVOCATION = 511, "CheckRevocation";
    /// Reserved.
    AUDIT_KEY_TRANSPARENCY = 520, "AuditKeyTransparency";
    /// Upload a blob chunk.
    UPLOAD_BLOB = 600, "UploadBlob";
    /// Download a blob range.
    DOWNLOAD_BLOB = 601, "DownloadBlob";
    /// Add a device to the account.
    REGISTER_DEVICE = 700, "RegisterDevice";
    /// List the account's devices.
    LIST_DEVICES = 701, "ListDevices";
    /// Remove a device and everything of it.
    REVOKE_DEVICE = 702, "RevokeDevice";
    /// Reserved.
    REGISTER_PUSH_TOKEN = 710, "RegisterPushToken";
    /// Reserved.
    STORE_RECOVERY_BUNDLE = 750, "StoreRecoveryBundle";
    /// Reserved.
    FETCH_RECOVERY_BUNDLE = 751, "FetchRecoveryBundle";
    /// Reserved.
    DELETE_RECOVERY_BUNDLE = 752, "DeleteRecoveryBundle";
    /// Reserved.
    PUBLISH_ENDPOINT = 800, "PublishEndpoint";
    /// Reserved.
    RESOLVE_ENDPOINT = 801, "ResolveEndpoint";
    /// Server status, version and uptime; no token needed.
    HEALTH = 802, "Health";
    /// Reserved.
    RELAY_ENQUEUE = 900, "RelayEnqueue";
    /// Reserved.
    RELAY_BATCH_ENQUEUE = 901, "RelayBatchEnqueue";
    /// Reserved.
    PROXY_FETCH_KEY_PACKAGE = 902, "ProxyFetchKeyPackage";
    /// Reserved.
    PROXY_FETCH_HYBRID_KEY = 903, "ProxyFetchHybridKey";
    /// Reserved.
    PROXY_RESOLVE_USER = 904, "ProxyResolveUser";
    /// Reserved.
    FEDERATION_HEALTH = 905, "FederationHealth";
    /// Delete the account and everything of it.
    DELETE_ACCOUNT = 950, "DeleteAccount";
}

/// Name of a method id, or `None` when the id is unassigned.
pub fn name(id: u16) -> Option<&'static str> {
    ALL.iter().find(|(m, _)| *m == id).map(|(_, n)| *n)
}

/// True for the methods that need no session token: Health and the four OPAQUE steps.
pub fn is_public(id: u16) -> bool {
    matches!(
        id,
        HEALTH
            | OPAQUE_REGISTER_START
            | OPAQUE_REGISTER_FINISH
            | OPAQUE_LOGIN_START
            | OPAQUE_LOGIN_FINISH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sorted() {
        for w in ALL.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} before {:?}", w[0], w[1]);
        }
        assert_eq!(name(ENQUEUE), Some("Enqueue"));
        assert_eq!(name(999), None);
        assert!(is_public(HEALTH) && !is_public(ENQUEUE) && !is_public(LOGOUT));
    }
}
