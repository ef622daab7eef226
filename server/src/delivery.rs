//! The delivery rules, above storage (DESIGN §8, issue 15 item 1): who receives an Enqueue,
//! which devices get its Welcome, which membership changes a commit makes and whether a commit
//! may take the channel's next epoch.
//!
//! Everything here is pure: a backend reads the [`EnqueueFacts`] inside its enqueue
//! transaction (with the channel row locked, or under its single writer), calls [`plan`], and
//! persists the [`EnqueuePlan`] it gets back (epoch compare-and-set, membership rows, payload
//! stored once, one queue entry per recipient). Both backends therefore apply the same rules,
//! and the conformance suite tests them on both. What this module will not do: touch a
//! database, assign sequence numbers, or enforce queue caps beyond the pure [`admit`] rule.

use std::collections::HashMap;

use crate::storage::{AccountId, Channel, ChannelKind, DeviceId, EnqueueOp, Key32, StorageError};

/// Membership of an account in the channel, as stored before the Enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// Leaving (RemoveMember): still gets commits, nothing else.
    pub leaving: bool,
    /// An admin of the channel.
    pub admin: bool,
}

/// One device of a channel member (or of an account a commit adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberDevice {
    /// Row id.
    pub device: DeviceId,
    /// Device key.
    pub key: Key32,
    /// Owner.
    pub account: AccountId,
}

/// An account named by the Enqueue (add, remove or promote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedAccount {
    /// Row id.
    pub id: AccountId,
    /// Whether it blocks the sender (ADR 0060).
    pub blocks_sender: bool,
    /// Its devices, oldest first.
    pub devices: Vec<MemberDevice>,
}

/// What a backend reads, inside the enqueue transaction, before planning.
#[derive(Debug, Clone)]
pub struct EnqueueFacts {
    /// The channel row (locked for the transaction where the backend has concurrent writers).
    pub channel: Channel,
    /// The earlier acceptance of this (sender device, message id): (server id, epoch).
    pub duplicate: Option<(u64, u64)>,
    /// Epoch of the channel's latest GroupInfo, if any.
    pub group_info_epoch: Option<u64>,
    /// Every member row of the channel: account → membership.
    pub members: HashMap<AccountId, Membership>,
    /// Devices of every member (leaving ones included), ordered by device id.
    pub member_devices: Vec<MemberDevice>,
    /// Accounts named in add/remove/promote/… by identity key; a key missing here is unknown.
    pub named: HashMap<Key32, NamedAccount>,
    /// Accounts that block the sender (only needed for application messages).
    pub blockers_of_sender: Vec<AccountId>,
    /// Devices already in the channel's MLS group (only needed when a Welcome is carried).
    pub in_group: Vec<DeviceId>,
}

/// What to persist for an accepted, new Enqueue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueuePlan {
    /// For commits: move the channel from `epoch_from` to this epoch (compare-and-set).
    pub new_epoch: Option<u64>,
    /// The channel epoch the commit must find (the row's epoch when planned).
    pub epoch_from: u64,
    /// The channel's next commit epoch after this Enqueue (returned to the sender).
    pub epoch: u64,
    /// Store the op's GroupInfo as the channel's latest, for `epoch`.
    pub store_group_info: bool,
    /// Member rows to delete (with their devices' group rows).
    pub remove_accounts: Vec<AccountId>,
    /// Accounts to insert as members, or to stop leaving.
    pub add_accounts: Vec<AccountId>,
    /// Members to make admins.
    pub promote_accounts: Vec<AccountId>,
    /// Devices that get the message, in device-id order.
    pub recipients: Vec<DeviceId>,
    /// Devices that get the Welcome (and join the group).
    pub welcome_to: Vec<DeviceId>,
    /// Devices to record as in the group: the Welcome's recipients, and a committer.
    pub join_devices: Vec<DeviceId>,
    /// Recipients skipped because their account blocks the sender.
    pub blocked: Vec<DeviceId>,
    /// Commits and Welcomes are never skipped for queue caps.
    pub exempt: bool,
    /// Device keys of every pre-change member device (to name undelivered devices).
    pub device_keys: Vec<(DeviceId, Key32)>,
}

/// The decision on an Enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A retry of an accepted message id: answer as the first time, store nothing.
    Duplicate {
        /// Server id of the first acceptance.
        server_id: u64,
        /// Epoch answered the first time.
        epoch: u64,
    },
    /// Persist this plan.
    Deliver(Box<EnqueuePlan>),
}

fn account<'a>(facts: &'a EnqueueFacts, key: &Key32) -> Result<&'a NamedAccount, StorageError> {
    facts.named.get(key).ok_or(StorageError::NotFound("user"))
}

/// Decides an Enqueue from the facts read in its transaction. Errors are the ones the
/// service reports (Forbidden, Conflict, Invalid, NotFound), in the order the rules apply.
pub fn plan(op: &EnqueueOp, facts: &EnqueueFacts) -> Result<Decision, StorageError> {
    let channel = &facts.channel;
    let active = |members: &HashMap<AccountId, Membership>, a: AccountId| {
        members.get(&a).is_some_and(|m| !m.leaving)
    };
    if !active(&facts.members, op.sender_account) {
        return Err(StorageError::Forbidden(
            "not a member of the channel".into(),
        ));
    }
    // Idempotency: a retry of an accepted message id answers as the first time did.
    if let Some((server_id, epoch)) = facts.duplicate {
        return Ok(Decision::Duplicate { server_id, epoch });
    }
    let is_commit = op.commit_epoch.is_some();
    let mut p = EnqueuePlan {
        epoch_from: channel.epoch,
        epoch: channel.epoch,
        exempt: is_commit,
        ..EnqueuePlan::default()
    };
    if let Some(e) = op.commit_epoch {
        // ADR 0054: an external commit may also re-join at the epoch of the latest GroupInfo
        // when the commits accepted after it carried none, superseding them.
        let rejoin = op.external && e < channel.epoch && facts.group_info_epoch == Some(e);
        if e != channel.epoch && !rejoin {
            return Err(StorageError::Conflict(format!(
                "commit from epoch {e} rejected: the channel is at epoch {}",
                channel.epoch
            )));
        }
        p.epoch = e + 1;
        p.new_epoch = Some(e + 1);
        p.store_group_info = op.group_info.is_some();
    }
    // A DM is its two accounts for good: a commit may re-add neither a third account nor one
    // that left (issue 17 item 15).
    if channel.kind == ChannelKind::Dm {
        for key in &op.add_members {
            let a = account(facts, key)?;
            if !active(&facts.members, a.id) {
                return Err(StorageError::Forbidden(
                    "a DM cannot gain members: start a group instead".into(),
                ));
            }
        }
    }
    // Recipients: every device of the members before this change (so removed members learn
    // of their removal; commits also reach members that are leaving), except the sender and
    // the Welcome's recipients.
    let before: Vec<MemberDevice> = facts
        .member_devices
        .iter()
        .filter(|d| is_commit || active(&facts.members, d.account))
        .copied()
        .collect();
    p.device_keys = facts
        .member_devices
        .iter()
        .map(|d| (d.device, d.key))
        .collect();
    let sender_admin = facts
        .members
        .get(&op.sender_account)
        .is_some_and(|m| m.admin);
    if !op.promote_members.is_empty() && !sender_admin {
        return Err(StorageError::Forbidden(
            "only an admin makes other members admins".into(),
        ));
    }
    for key in &op.remove_members {
        let a = account(facts, key)?;
        if a.id != op.sender_account && active(&facts.members, a.id) && !sender_admin {
            return Err(StorageError::Forbidden(
                "only an admin removes other members".into(),
            ));
        }
    }
    // Membership after the change, applied in the order the op names it.
    let mut members = facts.members.clone();
    let mut in_group = facts.in_group.clone();
    let mut extra_devices: Vec<MemberDevice> = Vec::new();
    for key in &op.remove_members {
        let a = account(facts, key)?;
        members.remove(&a.id);
        let gone: Vec<DeviceId> = facts
            .member_devices
            .iter()
            .chain(&a.devices)
            .filter(|d| d.account == a.id)
            .map(|d| d.device)
            .collect();
        in_group.retain(|d| !gone.contains(d));
        p.remove_accounts.push(a.id);
    }
    let mut added = Vec::new();
    for key in &op.add_members {
        let a = account(facts, key)?;
        // Item 18 (ADR 0060): nobody adds an account that blocks them.
        if a.blocks_sender {
            return Err(StorageError::Forbidden(
                "this user does not accept invitations from you".into(),
            ));
        }
        // Counts as added only when it was not a member (or was leaving).
        match members.get_mut(&a.id) {
            Some(m) if !m.leaving => {}
            Some(m) => {
                m.leaving = false;
                added.push(a.id);
                p.add_accounts.push(a.id);
            }
            None => {
                members.insert(
                    a.id,
                    Membership {
                        leaving: false,
                        admin: false,
                    },
                );
                added.push(a.id);
                p.add_accounts.push(a.id);
                extra_devices.extend(a.devices.iter().copied());
            }
        }
    }
    for key in &op.promote_members {
        let a = account(facts, key)?;
        match members.get_mut(&a.id) {
            Some(m) => {
                m.admin = true;
                p.promote_accounts.push(a.id);
            }
            None => {
                return Err(StorageError::Invalid(
                    "a promoted account is not a member of the channel".into(),
                ))
            }
        }
    }
    if !op.welcome.is_empty() {
        let mut after: Vec<MemberDevice> = facts
            .member_devices
            .iter()
            .chain(&extra_devices)
            .filter(|d| active(&members, d.account))
            .copied()
            .collect();
        after.sort_by_key(|d| d.device);
        after.dedup_by_key(|d| d.device);
        if op.welcome_devices.is_empty() {
            p.welcome_to = after
                .iter()
                .filter(|d| added.contains(&d.account))
                .map(|d| d.device)
                .collect();
        } else {
            for key in &op.welcome_devices {
                let d = after.iter().find(|d| d.key == *key).ok_or_else(|| {
                    StorageError::Invalid("a Welcome device is not a device of a member".into())
                })?;
                p.welcome_to.push(d.device);
            }
        }
        // A Welcome goes only to devices this commit adds: a device already in the group
        // gets the commit, never a Welcome instead of it (issue 17 item 16).
        if p.welcome_to.iter().any(|d| in_group.contains(d)) {
            return Err(StorageError::Invalid(
                "a Welcome may only go to devices this commit adds; a device already in the group gets the commit"
                    .into(),
            ));
        }
        if p.welcome_to.is_empty() {
            return Err(StorageError::Invalid(
                "a Welcome needs at least one recipient device".into(),
            ));
        }
    }
    p.join_devices = p.welcome_to.clone();
    if is_commit {
        // A committer is in the group.
        p.join_devices.push(op.sender_device);
    }
    p.recipients = before
        .iter()
        .map(|d| d.device)
        .filter(|d| *d != op.sender_device && !p.welcome_to.contains(d))
        .collect();
    // Item 18 (ADR 0060): a blocked account's messages skip the blocker's devices, reported
    // as undelivered. Commits still reach every member (a member that missed one would be
    // broken); the blocker leaves a group to stop seeing them.
    if !is_commit && !facts.blockers_of_sender.is_empty() {
        let mut blocked = Vec::new();
        p.recipients.retain(|d| {
            let skip = before
                .iter()
                .any(|b| b.device == *d && facts.blockers_of_sender.contains(&b.account));
            if skip {
                blocked.push(*d);
            }
            !skip
        });
        p.blocked = blocked;
    }
    Ok(Decision::Deliver(Box::new(p)))
}

/// A recipient queue's level, as read under the queue's counter lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueLevel {
    /// Entries queued.
    pub len: u64,
    /// Payload bytes queued.
    pub bytes: u64,
}

/// The per-recipient caps of an Enqueue.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Per-device queue cap.
    pub depth: u64,
    /// Per-device cap on queued payload bytes.
    pub bytes: u64,
    /// Entries the sending account may hold in one queue.
    pub share_depth: u64,
    /// Bytes the sending account may hold in one queue.
    pub share_bytes: u64,
    /// Commits and Welcomes are never skipped (a member that misses a commit is forked).
    pub exempt: bool,
}

impl Caps {
    /// The caps of an op.
    pub fn of(op: &EnqueueOp, exempt: bool) -> Caps {
        Caps {
            depth: op.max_queue_depth,
            bytes: op.max_queue_bytes,
            share_depth: op.max_share_depth,
            share_bytes: op.max_share_bytes,
            exempt,
        }
    }

    /// Whether the sender's share must be counted before admitting `bytes` to a queue at
    /// `level` (it can only matter once the queue holds at least a share).
    pub fn needs_share(&self, level: QueueLevel, bytes: u64) -> bool {
        !self.exempt
            && (level.len >= self.share_depth
                || level.bytes.saturating_add(bytes) > self.share_bytes)
    }
}

/// Whether a message of `bytes` may join a queue at `level`, of which the sender holds
/// `share` (when counted, see [`Caps::needs_share`]).
pub fn admit(caps: &Caps, level: QueueLevel, share: Option<QueueLevel>, bytes: u64) -> bool {
    if caps.exempt {
        return true;
    }
    if level.len >= caps.depth || level.bytes.saturating_add(bytes) > caps.bytes {
        return false;
    }
    match share {
        Some(s) => s.len < caps.share_depth && s.bytes.saturating_add(bytes) <= caps.share_bytes,
        None => true,
    }
}

/// The error for an application message no recipient could take (the whole Enqueue is then
/// rolled back, so a retry later is not a duplicate).
pub fn queue_full(op: &EnqueueOp, device: DeviceId) -> StorageError {
    StorageError::QueueFull {
        device,
        message: format!(
            "the recipients' queues are full ({} messages or {} bytes each), or hold this sender's share",
            op.max_queue_depth, op.max_queue_bytes
        ),
    }
}

/// The message id of the Welcome that travels with a commit (derived from the commit's).
pub fn welcome_id(message_id: &[u8; 16]) -> [u8; 16] {
    let mut wid = *message_id;
    wid[15] ^= 0x80;
    wid
}

/// `qpq.v1.MessageKind` of a Welcome.
pub const WELCOME_KIND: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn op(sender: AccountId, device: DeviceId) -> EnqueueOp {
        EnqueueOp {
            sender_account: sender,
            sender_device: device,
            sender_device_key: [device as u8; 32],
            channel_id: [1; 16],
            message_id: [2; 16],
            payload: Bytes::from_static(b"x"),
            kind: 1,
            commit_epoch: None,
            add_members: vec![],
            remove_members: vec![],
            welcome: Bytes::new(),
            welcome_devices: vec![],
            promote_members: vec![],
            group_info: None,
            external: false,
            now_ms: 0,
            max_queue_depth: 10,
            max_queue_bytes: 100,
            max_share_depth: 5,
            max_share_bytes: 50,
        }
    }

    fn dev(device: DeviceId, account: AccountId) -> MemberDevice {
        MemberDevice {
            device,
            key: [device as u8; 32],
            account,
        }
    }

    fn facts() -> EnqueueFacts {
        let m = |admin| Membership {
            leaving: false,
            admin,
        };
        EnqueueFacts {
            channel: Channel {
                id: [1; 16],
                kind: ChannelKind::Group,
                epoch: 3,
                metadata: vec![],
            },
            duplicate: None,
            group_info_epoch: None,
            members: HashMap::from([(1, m(true)), (2, m(false))]),
            member_devices: vec![dev(10, 1), dev(11, 1), dev(20, 2)],
            named: HashMap::new(),
            blockers_of_sender: vec![],
            in_group: vec![10, 11, 20],
        }
    }

    fn deliver(d: Decision) -> EnqueuePlan {
        match d {
            Decision::Deliver(p) => *p,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    #[test]
    fn application_message_reaches_every_other_device() {
        let p = deliver(plan(&op(1, 10), &facts()).expect("plan"));
        assert_eq!(p.recipients, vec![11, 20]);
        assert_eq!(p.new_epoch, None);
        assert!(!p.exempt);
    }

    #[test]
    fn leaving_member_gets_commits_only() {
        let mut f = facts();
        f.members.get_mut(&2).expect("member").leaving = true;
        let p = deliver(plan(&op(1, 10), &f).expect("plan"));
        assert_eq!(p.recipients, vec![11]);
        let mut c = op(1, 10);
        c.commit_epoch = Some(3);
        let p = deliver(plan(&c, &f).expect("plan"));
        assert_eq!(p.recipients, vec![11, 20]);
        assert_eq!(p.new_epoch, Some(4));
        assert_eq!(p.join_devices, vec![10]);
    }

    #[test]
    fn stale_commit_conflicts_and_duplicate_wins_over_it() {
        let mut c = op(1, 10);
        c.commit_epoch = Some(2);
        assert!(matches!(plan(&c, &facts()), Err(StorageError::Conflict(_))));
        let mut f = facts();
        f.duplicate = Some((7, 3));
        assert_eq!(
            plan(&c, &f).expect("dup"),
            Decision::Duplicate {
                server_id: 7,
                epoch: 3
            }
        );
    }

    #[test]
    fn welcome_goes_to_added_devices_only() {
        let mut f = facts();
        f.named.insert(
            [3; 32],
            NamedAccount {
                id: 3,
                blocks_sender: false,
                devices: vec![dev(30, 3), dev(31, 3)],
            },
        );
        let mut c = op(1, 10);
        c.commit_epoch = Some(3);
        c.add_members = vec![[3; 32]];
        c.welcome = Bytes::from_static(b"w");
        let p = deliver(plan(&c, &f).expect("plan"));
        assert_eq!(p.welcome_to, vec![30, 31]);
        assert_eq!(p.recipients, vec![11, 20]);
        assert_eq!(p.add_accounts, vec![3]);
        // Naming a device already in the group is refused.
        c.welcome_devices = vec![[20; 32]];
        assert!(matches!(plan(&c, &f), Err(StorageError::Invalid(_))));
    }

    #[test]
    fn blocked_sender_skips_blocker_and_non_admin_cannot_remove() {
        let mut f = facts();
        f.blockers_of_sender = vec![2];
        let p = deliver(plan(&op(1, 10), &f).expect("plan"));
        assert_eq!(p.recipients, vec![11]);
        assert_eq!(p.blocked, vec![20]);
        f.named.insert(
            [1; 32],
            NamedAccount {
                id: 1,
                blocks_sender: false,
                devices: vec![],
            },
        );
        let mut c = op(2, 20);
        c.commit_epoch = Some(3);
        c.remove_members = vec![[1; 32]];
        assert!(matches!(plan(&c, &f), Err(StorageError::Forbidden(_))));
    }

    #[test]
    fn admit_applies_caps_and_shares() {
        let o = op(1, 10);
        let caps = Caps::of(&o, false);
        let lvl = |len, bytes| QueueLevel { len, bytes };
        assert!(admit(&caps, lvl(0, 0), None, 10));
        assert!(!admit(&caps, lvl(10, 0), None, 1));
        assert!(!admit(&caps, lvl(0, 95), None, 10));
        assert!(caps.needs_share(lvl(5, 0), 1));
        assert!(!admit(&caps, lvl(5, 0), Some(lvl(5, 0)), 1));
        assert!(admit(&caps, lvl(5, 0), Some(lvl(1, 0)), 1));
        assert!(admit(&Caps::of(&o, true), lvl(99, 999), None, 10));
    }
}
