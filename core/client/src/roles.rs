//! Group roles (ADR 0032): a group's admin accounts live in its MLS group context, in a
//! private-use extension, so every member sees the same list at every epoch and a Welcome
//! carries it to new members. The creator is the first admin; an admin's commit may promote
//! (change the list); removing another account needs an admin proposer; anyone may remove
//! their own account's leaves (leave). Every member checks each commit before merging it, so
//! a commit that breaks the rule is refused by all and the group does not fork.
//!
//! A group without the extension (a DM, or a group from before roles) has no admins and keeps
//! the old rule: any member may remove any other. DMs are 1:1 and refuse removals and invites
//! elsewhere.

use std::collections::BTreeSet;

use openmls::prelude::{
    Extension, ExtensionType, Extensions, GroupContext, RequiredCapabilitiesExtension,
    UnknownExtension,
};

use crate::error::MlsError;

/// Extension type of the admin list (in the 0xF000..=0xFFFF private-use range).
pub(crate) const ROLES_EXTENSION: u16 = 0xF0A0;

/// The admin accounts named by `ext`, or `None` when the group has no roles.
pub(crate) fn admins(ext: &Extensions<GroupContext>) -> Option<BTreeSet<[u8; 32]>> {
    let raw = &ext.unknown(ROLES_EXTENSION)?.0;
    Some(
        raw.chunks_exact(32)
            .filter_map(|c| <[u8; 32]>::try_from(c).ok())
            .collect(),
    )
}

/// Group context extensions naming `admins` (sorted, each once).
pub(crate) fn extensions(
    admins: &BTreeSet<[u8; 32]>,
) -> Result<Extensions<GroupContext>, MlsError> {
    let raw: Vec<u8> = admins.iter().flat_map(|a| a.iter().copied()).collect();
    // openmls accepts a group context extension only when the group requires its support.
    let required =
        RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(ROLES_EXTENSION)], &[], &[]);
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(ROLES_EXTENSION, UnknownExtension(raw)),
    ])
    .map_err(|e| MlsError::Openmls(format!("roles extension: {e}")))
}

/// One Remove in a commit, as the role check sees it: who proposed it and whom it removes,
/// by device and (when known) account.
#[derive(Debug, Clone)]
pub(crate) struct RemoveSeen {
    /// The proposer's device (for an inline proposal, the committer's).
    pub proposer_device: [u8; 32],
    /// The proposer's account, when the directory knows it.
    pub proposer: Option<[u8; 32]>,
    /// The removed leaf's device.
    pub removed_device: [u8; 32],
    /// The removed leaf's account, when the directory knows it.
    pub removed: Option<[u8; 32]>,
}

/// Why a commit breaks the roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A member that is not an admin removed another account.
    RemoveByNonAdmin,
    /// A member that is not an admin changed the admin list.
    PromoteByNonAdmin,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Violation::RemoveByNonAdmin => "only an admin removes other members",
            Violation::PromoteByNonAdmin => "only an admin makes other members admins",
        })
    }
}

/// Checks one commit against the roles of the epoch it commits from. `before` is the admin
/// list before the commit (`None`: a group without roles, where anything goes), `after` the
/// list the commit leaves, `committer` the committing account.
pub(crate) fn check_commit(
    before: Option<&BTreeSet<[u8; 32]>>,
    after: Option<&BTreeSet<[u8; 32]>>,
    committer: Option<[u8; 32]>,
    removes: &[RemoveSeen],
) -> Result<(), Violation> {
    let Some(admins) = before else {
        return Ok(());
    };
    let is_admin = |a: Option<[u8; 32]>| a.is_some_and(|a| admins.contains(&a));
    if after != Some(admins) && !is_admin(committer) {
        return Err(Violation::PromoteByNonAdmin);
    }
    for r in removes {
        let own = r.proposer_device == r.removed_device
            || matches!((r.proposer, r.removed), (Some(p), Some(x)) if p == x);
        if !own && !is_admin(r.proposer) {
            return Err(Violation::RemoveByNonAdmin);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rm(proposer: u8, removed: u8) -> RemoveSeen {
        RemoveSeen {
            proposer_device: [proposer + 100; 32],
            proposer: Some([proposer; 32]),
            removed_device: [removed + 100; 32],
            removed: Some([removed; 32]),
        }
    }

    #[test]
    fn admins_remove_others_anyone_leaves_only_admins_promote() {
        let admins: BTreeSet<[u8; 32]> = [[1; 32]].into();
        let some = Some(&admins);
        assert_eq!(check_commit(some, some, Some([1; 32]), &[rm(1, 2)]), Ok(()));
        assert_eq!(
            check_commit(some, some, Some([2; 32]), &[rm(2, 1)]),
            Err(Violation::RemoveByNonAdmin)
        );
        assert_eq!(check_commit(some, some, Some([3; 32]), &[rm(2, 2)]), Ok(()));
        let promoted: BTreeSet<[u8; 32]> = [[1; 32], [2; 32]].into();
        assert_eq!(
            check_commit(some, Some(&promoted), Some([2; 32]), &[]),
            Err(Violation::PromoteByNonAdmin)
        );
        assert_eq!(
            check_commit(some, Some(&promoted), Some([1; 32]), &[]),
            Ok(())
        );
        // Without roles, anything goes.
        assert_eq!(check_commit(None, None, Some([2; 32]), &[rm(2, 1)]), Ok(()));
        let ext = extensions(&promoted).expect("extension");
        assert_eq!(super::admins(&ext), Some(promoted));
    }
}
